"""How ``--help`` reads: like click's and typer's own examples.

The typer we depend on prints required arguments as ``{data}`` in the usage line and a type tag
on every option, down to ``--help <bool>``; it also reads ``[...]`` in help text as rich markup,
so ``MODEL[@WEIGHTS]`` printed as ``MODEL``. These classes keep typer's panels and change three
things: arguments read ``DATA`` / ``[ENTRY]`` / ``IMAGES...`` as in click; flags carry no type
tag and valued options carry click's (``INTEGER``, ``TEXT``, ``PATH``) unless they name their
own metavar; help text is printed as written.
"""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

# Python types (typer's bare type names) → the metavars click's documentation uses
_METAVARS = {"int": "INTEGER", "float": "FLOAT", "Path": "PATH"}


def _tidy(command: Any) -> None:
    """Escape help text (it is prose, not markup) and give valued options click's metavars."""
    if command.help:
        command.help = escape(command.help)
    for param in command.params:
        if param.help:
            param.help = escape(param.help)
        if param.param_type_name != "option" or param.metavar is not None:
            continue
        if param.is_flag:
            param.metavar = ""  # the flag's name says it all
        else:
            bare = param.bare_type().removeprefix("list[").removesuffix("]")
            param.metavar = _METAVARS.get(bare, "TEXT")


class _HouseStyle:
    def get_help_option(self, ctx: typer.Context) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            option.metavar = ""
        return option

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []  # type: ignore[attr-defined]
        for param in self.get_params(ctx):  # type: ignore[attr-defined]
            if param.param_type_name != "argument":
                continue
            name = (param.metavar or param.name).upper()
            name = name if param.required else f"[{name}]"
            pieces.append(name + ("..." if param.nargs != 1 else ""))
        return pieces


class Command(_HouseStyle, TyperCommand):
    """A leaf command in featpipe's help style."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _tidy(self)


class Group(_HouseStyle, TyperGroup):
    """A command group in featpipe's help style."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _tidy(self)

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        return [*super().collect_usage_pieces(ctx), self.subcommand_metavar]


def house_style(app: typer.Typer) -> None:
    """Give every command registered on ``app`` and its sub-apps featpipe's help style (a
    command that asked for a class of its own keeps it)."""
    for info in app.registered_commands:
        if issubclass(Command, info.cls or TyperCommand):
            info.cls = Command
    for group in app.registered_groups:
        if issubclass(Group, group.cls or TyperGroup):
            group.cls = Group
        house_style(group.typer_instance)

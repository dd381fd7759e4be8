"""Options shared by every command that may run a backbone (extract, fit, compare, …)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import typer

from featpipe.extraction.options import ExtractOptions
from featpipe.options import Declared, declared
from featpipe.runs.record import DEFAULT_RUNS_DIR

# Python parameters whose flag is not ``--`` + the name with dashes.
_FLAGS = {
    "from_run": "--from",
    "data": "DATA",
    "entry": "ENTRY",
    "backbone": "--backbone",
    "fmt": "--format",
}


def flag(param: str) -> str:
    """The command-line spelling of a library parameter, for errors raised from Python."""
    return _FLAGS.get(param, "--" + param.replace("_", "-"))


Backbone = typer.Option(
    "tf_efficientnet_lite0",
    "--backbone",
    "-b",
    help="timm model name, or tv/<name> for torchvision (see: featpipe models).",
)
Name = typer.Option(None, help="Dataset name in the cache (default: folder name).")
RunsDir = typer.Option(DEFAULT_RUNS_DIR, "--runs-dir", help="Where runs are written and read.")


def _typer_option(option: Declared, panel: str | None) -> Any:
    """The typer option of a declared library option: its flag (typer's own ``--x/--no-x``
    for a boolean with no explicit flag), help and command-line default."""
    short = [option.spec.short] if option.spec.short else []
    names = [option.flag, *short] if option.spec.flag or short else []
    return typer.Option(option.cli_default, *names, help=option.spec.help, rich_help_panel=panel)


def _with_parameters(
    command: Callable[..., Any],
    param: str,
    added: list[inspect.Parameter],
    build: Callable[[dict[str, Any]], Any],
) -> Callable[..., Any]:
    """``command`` with ``added`` keyword-only parameters in its signature, whose values
    ``build`` turns into the one object the command receives as ``param``.

    typer reads a command's parameters from its signature, so the wrapper's signature is the
    command's own (without ``param``) followed by the added ones.
    """
    signature = inspect.signature(command, eval_str=True)
    own = [p for name, p in signature.parameters.items() if name != param]
    names = [p.name for p in added]

    @functools.wraps(command)
    def wrapper(**values: Any) -> Any:
        given = {name: values.pop(name) for name in names}
        return command(**values, **{param: build(given)})

    parameters = own + added
    wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    del wrapper.__wrapped__  # typer must read the wrapper's signature, not the command's
    return wrapper


def with_options(
    cls: type, param: str, panel: str | None = None, exclude: tuple[str, ...] = ()
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command every option that ``cls`` declares (:mod:`featpipe.options`), received as
    one ``cls`` value in its ``param`` parameter: the flags, help and defaults are the library's
    own declaration, written once. Options in ``exclude`` (and those declared ``cli=False``)
    stay out of the command line and keep their defaults."""
    options = [o for o in declared(cls) if o.spec.cli and o.name not in exclude]

    def build(given: dict[str, Any]) -> Any:
        return cls(**{o.name: o.from_cli(given[o.name]) for o in options})

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        added = [
            inspect.Parameter(
                o.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=_typer_option(o, panel),
                annotation=o.cli_annotation,
            )
            for o in options
        ]
        return _with_parameters(command, param, added, build)

    return decorate


# Every command that may extract takes the same flags (all that change the cache key among
# them), under one heading of its --help, as one ExtractOptions value in ``extraction``.
with_extract_options = with_options(ExtractOptions, "extraction", panel="Extraction options")


def one(cls: type, name: str) -> Any:
    """The typer option of one option ``cls`` declares, for a command that takes only it (cache
    commands take ``--cache-dir``, predict takes ``--device``): the same flag and help."""
    [found] = [o for o in declared(cls) if o.name == name]
    return _typer_option(found, None)


CacheDir = one(ExtractOptions, "cache_dir")
Weights = one(ExtractOptions, "weights")
ImageSize = one(ExtractOptions, "image_size")
AllowOutside = one(ExtractOptions, "allow_outside")
Device = one(ExtractOptions, "device")

"""Options declared once: each stage's options are one frozen dataclass, and every field says its
help, its flag and its constraint where it is declared.

The library validates a value of such a dataclass with :func:`check` (from its
``__post_init__``), so Python callers and the command line get the same one-line error naming
the option. The CLI builds its typer options from the same declaration
(:func:`cli.options.with_options`), so a new option is written once, and a test holds the
command's flags and defaults to the dataclass. Constraints are declarative, in the style of
scikit-learn's ``_parameter_constraints``: :class:`OneOf` for a vocabulary, :class:`Interval`
for a numeric range; a field whose value is ``None`` (an optional left unset) is not checked.

Only constraints on one value live here; a rule across fields (``layer_decay`` or ``lr_mult``,
not both) stays in the dataclass's ``__post_init__``, after :func:`check`.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from featpipe.errors import ArgumentError


@dataclass(frozen=True)
class OneOf:
    """The value is one of ``choices`` (its message lists them, in order)."""

    choices: tuple[str, ...]

    def ok(self, value: Any) -> bool:
        return value in self.choices

    def message(self, value: Any) -> str:
        return f"{value}: choose one of {', '.join(self.choices)}"

    def describe(self) -> str:
        return " | ".join(self.choices)


@dataclass(frozen=True)
class Interval:
    """The value is a number between ``low`` and ``high`` (either may be open-ended: None).

    ``closed`` says which ends belong to it (``both``, ``left``, ``right``, ``neither``);
    ``what`` is how the message names a valid value when a plainer phrase than the interval
    helps (``"2 or more (BatchNorm trains on batches)"``).
    """

    low: float | None = None
    high: float | None = None
    closed: str = "both"
    what: str = ""

    def __post_init__(self) -> None:
        if self.closed not in ("both", "left", "right", "neither"):
            raise ValueError(f"closed={self.closed!r}: use both, left, right or neither")

    def ok(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            return False
        left = self.closed in ("both", "left")
        right = self.closed in ("both", "right")
        if self.low is not None and not (value >= self.low if left else value > self.low):
            return False
        return self.high is None or (value <= self.high if right else value < self.high)

    def message(self, value: Any) -> str:
        return f"{value}: use {self.describe()}"

    def describe(self) -> str:
        if self.what:
            return self.what
        left = "[" if self.closed in ("both", "left") else "("
        right = "]" if self.closed in ("both", "right") else ")"
        if self.high is None:
            assert self.low is not None, "an Interval bounds at least one end"
            return f"{_num(self.low)} or more" if left == "[" else f"more than {_num(self.low)}"
        if self.low is None:
            return f"{_num(self.high)} or less" if right == "]" else f"less than {_num(self.high)}"
        return f"a value in {left}{_num(self.low)}, {_num(self.high)}{right}"


Constraint = OneOf | Interval


class _Unset:
    """The command line's default is the field's own (a sentinel: None is a real default)."""


UNSET = _Unset()


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


@dataclass(frozen=True)
class Spec:
    """What one option declares besides its default.

    ``flag`` and ``short`` are its command-line spellings (default ``--`` + the name with
    dashes); ``cli=False`` keeps an option out of the command line (Python only). When the
    command line carries the value in another shape (``auto`` for None, a comma-joined list for
    a tuple), ``cli_type`` is that shape's annotation, ``cli_default`` its default and ``parse``
    turns it into the field's value (called with the value and the option's name, which its
    error names).
    """

    help: str
    constraint: Constraint | None = None
    flag: str | None = None
    short: str | None = None
    cli: bool = True
    cli_type: Any = None
    cli_default: Any = UNSET
    parse: Callable[[Any, str], Any] | None = None

    def flag_for(self, name: str) -> str:
        return self.flag or "--" + name.replace("_", "-")


def option(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    constraint: Constraint | None = None,
    flag: str | None = None,
    short: str | None = None,
    cli: bool = True,
    cli_type: Any = None,
    cli_default: Any = UNSET,
    parse: Callable[[Any, str], Any] | None = None,
) -> Any:
    """A dataclass field that declares an option (see :class:`Spec`)."""
    spec = Spec(help, constraint, flag, short, cli, cli_type, cli_default, parse)
    return dataclasses.field(default=default, metadata={"option": spec})


@dataclass(frozen=True)
class Declared:
    """One declared option of a dataclass: its name, default, annotation and :class:`Spec`."""

    name: str
    default: Any
    annotation: Any
    spec: Spec

    @property
    def flag(self) -> str:
        return self.spec.flag_for(self.name)

    @property
    def cli_annotation(self) -> Any:
        return self.spec.cli_type if self.spec.cli_type is not None else self.annotation

    @property
    def cli_default(self) -> Any:
        return self.default if self.spec.cli_default is UNSET else self.spec.cli_default

    def from_cli(self, value: Any) -> Any:
        """The field's value from what the command line gave."""
        return self.spec.parse(value, self.name) if self.spec.parse else value


def declared(cls: type) -> list[Declared]:
    """The options ``cls`` declares with :func:`option`, in field order."""
    hints = typing.get_type_hints(cls)
    return [
        Declared(f.name, f.default, hints[f.name], f.metadata["option"])
        for f in dataclasses.fields(cls)
        if "option" in f.metadata
    ]


def given(obj: Any) -> dict[str, Any]:
    """The options of ``obj`` whose values differ from their declared defaults: what a user
    typed, which wins over an experiment file's and is what a run records as asked for."""
    return {
        f.name: getattr(obj, f.name)
        for f in dataclasses.fields(obj)
        if "option" in f.metadata and getattr(obj, f.name) != f.default
    }


def check(obj: Any) -> None:
    """Raise :class:`~featpipe.errors.ArgumentError` naming the first option of ``obj`` whose
    value breaks its constraint (options set to None are optional and left out)."""
    for f in dataclasses.fields(obj):
        spec = f.metadata.get("option")
        value = getattr(obj, f.name)
        if spec is None or spec.constraint is None or value is None:
            continue
        if not spec.constraint.ok(value):
            raise ArgumentError(f.name, spec.constraint.message(value))


def auto_int(value: str, param: str) -> int | None:
    """A command-line ``auto`` (None: let featpipe choose) or whole number; errors name
    ``param``."""
    if value == "auto":
        return None
    try:
        return int(value)
    except ValueError:
        raise ArgumentError(param, f"{value}: use a whole number or auto") from None


def floats(text: str | None, param: str) -> tuple[float, ...] | None:
    """A command-line list of numbers, comma-joined (``0.1,0.33,1``); None when not given."""
    if not text:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ArgumentError(param, f"{text}: write numbers separated by commas") from None

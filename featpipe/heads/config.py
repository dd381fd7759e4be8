"""The head configuration: one flat set of typed options, parsed once, recorded one way.

A head is described by a flat set of options (``head=mlp lr=1e-3 wd=1e-4 …``), like
scikit-learn's ``get_params``. Wherever options come from (``--set``, ``--sweep``, a grid file
in TOML, YAML or JSON, a Python dict, an old run on disk) they go through the same
:func:`parse_value`, so ``--set lr=1e-3``, ``--sweep lr=1e-3`` and ``lr = 1e-3`` in a grid file
give the same config, and a bad value gives the same one-line error naming the option.

Wherever a run records a config (the request in ``run.json``, ``metrics.json``'s chosen head,
``rows.csv``, ``curves.json``, ``head/head.json``) it is written as :meth:`HeadConfig.to_dict`:
the options that head uses, typed. :meth:`HeadConfig.from_dict` reads that shape back, and the
older shapes too (every option, or ``--set``'s raw strings).
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from featpipe.errors import ArgumentError
from featpipe.heads.schedules import SCHEDULES

TORCH_HEADS = ("linear", "mlp")
SKLEARN_HEADS = ("logreg", "linearsvc", "ridge", "knn")
HEADS = TORCH_HEADS + SKLEARN_HEADS
OPTIMIZERS = ("sgd", "adam", "adamw")
CHOICES: dict[str, tuple[str, ...]] = {
    "head": HEADS,
    "optimizer": OPTIMIZERS,
    "schedule": SCHEDULES,
    "class_weight": ("none", "balanced"),
}

# The options each head uses, after "head" and before the preprocessing options and the seed.
_TORCH_OPTIONS = [
    "lr",
    "wd",
    "optimizer",
    "schedule",
    "epochs",
    "batch_size",
    "label_smoothing",
    "class_weight",
    "patience",
]
_OWN_OPTIONS: dict[str, list[str]] = {
    "linear": _TORCH_OPTIONS,
    "mlp": [*_TORCH_OPTIONS, "hidden", "depth", "dropout", "bn"],
    "logreg": ["C", "class_weight"],
    "linearsvc": ["C", "class_weight"],
    "ridge": ["alpha", "class_weight"],
    "knn": ["k", "temperature"],
}
_COMMON_OPTIONS = ["standardize", "l2norm", "pca", "seed"]

# Each head's own value for the options a config leaves unset (None). The linear head's recipe
# (lr 0.1 on L2-normalised features, wd 0) is CLIP_benchmark's probe setting and featpipe's
# default sweep. The MLP keeps lr 3e-3: at lr 0.1 it scored 2-4 points lower on 100 and 300 rows
# and within a point on 1,000 (cross_val_score, 4 synthetic datasets each, 2 and 5 classes). The
# scikit-learn heads keep scikit-learn's convention of standardised inputs, so
# ``Head(head="logreg")`` is ``LogisticRegression()`` after a ``StandardScaler`` (C and alpha
# are scale-dependent); they use no lr.
_TORCH_UNSET = {"standardize": False, "l2norm": True}
_SKLEARN_UNSET = {"lr": 0.1, "standardize": True, "l2norm": False}
UNSET_DEFAULTS: dict[str, dict[str, Any]] = {
    "linear": _TORCH_UNSET | {"lr": 0.1},
    "mlp": _TORCH_UNSET | {"lr": 3e-3},
} | {head: _SKLEARN_UNSET for head in SKLEARN_HEADS}

# Numeric options outside these ranges cannot train: (test, what the value must be).
_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "lr": (lambda v: v > 0, "a positive number"),
    "wd": (lambda v: v >= 0, "zero or a positive number"),
    "epochs": (lambda v: v >= 0, "0 (enough for the data: see heads.schedules) or 1 or more"),
    "batch_size": (lambda v: v >= 1, "1 or more"),
    "hidden": (lambda v: v >= 0, "0 (twice the feature dimension) or a width"),
    "depth": (lambda v: v >= 1, "1 or more hidden layers"),
    "dropout": (lambda v: 0 <= v < 1, "a share in [0, 1)"),
    "label_smoothing": (lambda v: 0 <= v < 1, "a share in [0, 1)"),
    "patience": (lambda v: v >= 0, "0 (off) or a number of epochs"),
    "C": (lambda v: v > 0, "a positive number"),
    "alpha": (lambda v: v >= 0, "zero or a positive number"),
    "k": (lambda v: v >= 1, "1 or more neighbours"),
    "temperature": (lambda v: v >= 0, "0 (uniform vote) or a positive temperature"),
    "pca": (lambda v: v >= 0, "0 (off) or a number of components"),
    "seed": (lambda v: v >= 0, "zero or a positive whole number"),
}


@dataclass(frozen=True, eq=False)
class HeadConfig:
    """Every option of every head, typed and validated on construction.

    Options a head does not use are ignored by it (:meth:`params` lists those it uses), and
    two configs are equal when they describe the same model: equal in every option their head
    uses. So a config read back from a run (which records only those) equals the one fitted.
    Values may be given as strings (``HeadConfig(lr="1e-3")``); they are parsed into the
    option's type.
    """

    head: str = "linear"
    # torch heads: the default sweep's recipe, trained for enough optimiser steps on any size
    lr: float | None = None  # None: the head's own (UNSET_DEFAULTS)
    wd: float = 0.0
    optimizer: str = "adamw"
    schedule: str = "cosine"
    epochs: int = 0  # 0: heads.schedules.epochs_for (at least MIN_STEPS steps, 20 epochs)
    batch_size: int = 128
    hidden: int = 0  # MLP width; 0 means 2·D, the course material's recipe
    depth: int = 1  # MLP hidden layers
    dropout: float = 0.5
    bn: bool = True
    label_smoothing: float = 0.0
    class_weight: str = "none"
    patience: int = 0  # early stopping on the val metric, best epoch kept; 0 = off (last kept)
    # scikit-learn heads
    C: float = 1.0
    alpha: float = 1.0
    k: int = 10
    # k-NN vote: each neighbour weighs exp(sim / temperature) (DINOv2: 0.07); 0 = uniform vote
    temperature: float = 0.0
    # feature preprocessing, fitted on train only; None: the head's own (UNSET_DEFAULTS)
    standardize: bool | None = None
    l2norm: bool | None = None
    pca: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, parse_value(f.name, getattr(self, f.name)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HeadConfig) and self.params() == other.params()

    def __hash__(self) -> int:
        return hash(tuple(self.params().items()))

    @property
    def is_torch(self) -> bool:
        return self.head in TORCH_HEADS

    def value(self, name: str) -> Any:
        """Option ``name`` as this head applies it: unset ones from :data:`UNSET_DEFAULTS`."""
        value = getattr(self, name)
        return UNSET_DEFAULTS[self.head][name] if value is None else value

    def preprocessing(self) -> tuple[bool, bool, int]:
        """``(standardize, l2norm, pca)`` as this head applies them."""
        return self.value("standardize"), self.value("l2norm"), self.pca

    def _values(self) -> dict[str, Any]:
        """Every option as the head applies it."""
        return {f.name: self.value(f.name) for f in fields(self)}

    def params(self) -> dict[str, Any]:
        """The options this head actually uses, in a fixed order (what a table shows)."""
        values = self._values()
        return {name: values[name] for name in ["head", *_OWN_OPTIONS[self.head], *_COMMON_OPTIONS]}

    def to_dict(self) -> dict[str, Any]:
        """The one recorded shape: the options this head uses, typed (JSON- and CSV-ready).

        Options the head ignores are left out, so a k-NN row carries no learning rate; reading
        it back with :meth:`from_dict` gives the same model.
        """
        return self.params()

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, param: str | None = None, ignore_unknown: bool = False
    ) -> HeadConfig:
        """A config from options: typed values or strings, missing options at their defaults.

        Reads :meth:`to_dict`'s shape and the older recorded ones (every option, as
        ``head/head.json`` held it; ``--set``'s raw strings, as ``run.json`` held them).
        ``ignore_unknown`` skips keys that are not options (a ``rows.csv`` row has score
        columns too). ``param`` names where the options came from, for the error message.
        """
        known = {}
        for name, value in data.items():
            if name in FIELD_TYPES:
                known[name] = parse_value(name, value, param)
            elif not ignore_unknown:
                raise ArgumentError(param or name, _unknown(name))
        return cls(**known)

    def label(self, vary: Iterable[str] = ()) -> str:
        """``mlp(hidden=64, dropout=0.3)``: the used options that differ from their defaults,
        plus those in ``vary`` (the ones a leaderboard compares), whatever their value."""
        vary = set(vary)
        defaults = HeadConfig(head=self.head).params()
        shown = [
            f"{name}={_text(value)}"
            for name, value in self.params().items()
            if name != "head" and (name in vary or value != defaults[name])
        ]
        return f"{self.head}(" + ", ".join(shown) + ")"


FIELD_TYPES: dict[str, str] = {f.name: str(f.type) for f in fields(HeadConfig)}
DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(HeadConfig)}


def _text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _unknown(name: str) -> str:
    close = difflib.get_close_matches(name, FIELD_TYPES, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"{name}: unknown head option{hint}; valid options are {', '.join(FIELD_TYPES)}"


def _convert_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _convert(name: str, value: Any) -> Any:
    """``value`` as option ``name``'s type; a ``ValueError`` says why it cannot be."""
    kind = FIELD_TYPES[name]
    if kind.endswith(" | None") and (value is None or str(value).strip().lower() == "none"):
        return None  # unset: the head's own (UNSET_DEFAULTS)
    if kind.startswith("bool"):
        return _convert_bool(value)
    if kind == "str":
        if not isinstance(value, str):
            raise ValueError(f"expected one of {', '.join(CHOICES[name])}")
        parsed: Any = value.strip()
        if parsed not in CHOICES[name]:
            raise ValueError(f"choose one of {', '.join(CHOICES[name])}")
        return parsed
    if isinstance(value, bool):  # TOML/JSON true is not a number
        raise ValueError(f"expected a {'whole ' if kind == 'int' else ''}number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a {'whole ' if kind == 'int' else ''}number") from None
    if not math.isfinite(number):
        raise ValueError("expected a finite number")
    if kind == "int":
        if number != int(number):
            raise ValueError("expected a whole number")
        parsed = int(number)
    else:
        parsed = number
    test, must = _RANGES.get(name, (lambda v: True, ""))
    if not test(parsed):
        raise ValueError(f"must be {must}")
    return parsed


def parse_value(name: str, value: Any, param: str | None = None) -> Any:
    """Option ``name``'s ``value`` (typed, or a string) as its type, validated.

    A bad value raises :class:`ArgumentError` naming the option: from Python ``lr 'abc':
    expected a number``; with ``param`` (where the value came from, e.g. ``set``) the CLI
    prints ``--set lr=abc: expected a number``.
    """
    if name not in FIELD_TYPES:
        raise ArgumentError(param or name, _unknown(name))
    try:
        return _convert(name, value)
    except ValueError as exc:
        example = f"e.g. {name}={_text(HeadConfig()._values()[name])}"
        if param:
            raise ArgumentError(param, f"{name}={value}: {exc}, {example}") from None
        raise ArgumentError(name, f"{value!r}: {exc}, {example}") from None


def parse_assignments(items: Iterable[str], param: str = "set") -> dict[str, Any]:
    """``["hidden=64", "dropout=0.3"]`` → typed fixed options (one value each)."""
    fixed: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or "," in value:
            raise ArgumentError(param, f"{item}: write option=value (one value; grids use --sweep)")
        fixed[name.strip()] = parse_value(name.strip(), value.strip(), param)
    return fixed


def parse_grid(raw: Mapping[str, Any], param: str = "grid") -> dict[str, list[Any]]:
    """``{option: value or [values]}`` → ``{option: [typed values]}``; every value checked."""
    grid: dict[str, list[Any]] = {}
    for name, values in raw.items():
        listed = values if isinstance(values, list) else [values]
        if not listed:
            raise ArgumentError(param, f"{name}: no values given")
        grid[name] = [parse_value(name, v, param) for v in listed]
    return grid


def parse_grid_args(items: Iterable[str], param: str = "sweep") -> dict[str, list[Any]]:
    """``["lr=1e-3,1e-2", "head=linear,mlp"]`` → ``{"lr": [0.001, 0.01], "head": [...]}``."""
    raw: dict[str, list[str]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep:
            raise ArgumentError(param, f"{item}: write option=value[,value…], e.g. lr=1e-3,1e-2")
        raw[name.strip()] = [v.strip() for v in values.split(",") if v.strip()]
    return parse_grid(raw, param)


def read_grid_file(path: Path, param: str = "grid") -> dict[str, list[Any]]:
    """A grid from TOML, YAML or JSON: ``{option: value or [values]}`` (or under ``[sweep]``)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ArgumentError(param, f"{path}: {exc.strerror}") from None
    try:
        if path.suffix == ".toml":
            raw = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text)
        else:
            raw = json.loads(text)
    except Exception as exc:  # each format's own parse error; the message says where
        raise ArgumentError(
            param, f"{path}: not valid {path.suffix[1:] or 'JSON'} ({exc})"
        ) from None
    if not isinstance(raw, dict):
        raise ArgumentError(param, f"{path}: expected a table of option = [values]")
    raw = raw.get("sweep", raw)
    try:
        return parse_grid(raw, param)
    except ArgumentError as exc:
        raise ArgumentError(param, f"{path}: {exc.message}") from None


def expand(grid: Mapping[str, list[Any]], base: HeadConfig | None = None) -> list[HeadConfig]:
    """Every combination of the grid, applied on top of ``base``.

    Combinations that differ only in options the head ignores (``lr`` for a k-NN head) are the
    same model, and are kept once.
    """
    base = base or HeadConfig()
    names = list(grid)
    configs: dict[HeadConfig, None] = {}  # equal configs are one model: kept once, in order
    for values in itertools.product(*(grid[n] for n in names)):
        configs.setdefault(replace(base, **dict(zip(names, values, strict=True))))
    return list(configs)


def varying(configs: Iterable[HeadConfig]) -> list[str]:
    """The options whose values differ across ``configs`` (what a leaderboard should show):
    ``head`` when there are several, and any option that differs between configs of one head.
    A difference that only follows from the heads' own defaults (a linear head L2-normalises,
    logreg standardises) is in the head's name already."""
    configs = list(configs)
    names = ["head"] if len({c.head for c in configs}) > 1 else []
    values: dict[tuple[str, str], set] = {}
    for config in configs:
        for key, value in config._values().items():
            values.setdefault((config.head, key), set()).add(value)
    for (_, key), seen in values.items():
        if len(seen) > 1 and key not in names:
            names.append(key)
    return names

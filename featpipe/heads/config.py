"""Head configurations and sweep grids: one flat set of options, typed and validated.

A head is described by a flat dict of options (``head=mlp lr=1e-3 wd=1e-4 …``), like
scikit-learn's ``get_params``. A grid is a dict of option → list of values; every combination is
one config. Values typed on the command line are parsed into the option's type, and a wrong
type or an unknown option names itself and lists what is valid.
"""

from __future__ import annotations

import itertools
import json
import tomllib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from featpipe.errors import FeatpipeError

TORCH_HEADS = ("linear", "mlp")
SKLEARN_HEADS = ("logreg", "linearsvc", "ridge", "knn")
HEADS = TORCH_HEADS + SKLEARN_HEADS
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "step", "none")
CHOICES: dict[str, tuple[str, ...]] = {
    "head": HEADS,
    "optimizer": OPTIMIZERS,
    "schedule": SCHEDULES,
    "class_weight": ("none", "balanced"),
}


@dataclass(frozen=True)
class HeadConfig:
    """Every option of every head. Options a head does not use are ignored by it."""

    head: str = "linear"
    # torch heads
    lr: float = 3e-3
    wd: float = 1e-4
    optimizer: str = "adamw"
    schedule: str = "cosine"
    epochs: int = 40
    batch_size: int = 128
    hidden: int = 0  # MLP width; 0 means 2·D, the course material's recipe
    depth: int = 1  # MLP hidden layers
    dropout: float = 0.5
    bn: bool = True
    label_smoothing: float = 0.0
    class_weight: str = "none"
    patience: int = 0  # early stopping on the validation metric; 0 = off (best epoch kept)
    # scikit-learn heads
    C: float = 1.0
    alpha: float = 1.0
    k: int = 10
    # feature preprocessing, fitted on train only
    standardize: bool = True
    l2norm: bool = False
    pca: int = 0
    seed: int = 0

    @property
    def is_torch(self) -> bool:
        return self.head in TORCH_HEADS

    def params(self) -> dict[str, Any]:
        """The options this head actually uses (what a results table should show)."""
        common = ["head", "standardize", "l2norm", "pca", "seed"]
        own = {
            "linear": [
                "lr",
                "wd",
                "optimizer",
                "schedule",
                "epochs",
                "batch_size",
                "label_smoothing",
                "class_weight",
                "patience",
            ],
            "logreg": ["C", "class_weight"],
            "linearsvc": ["C", "class_weight"],
            "ridge": ["alpha", "class_weight"],
            "knn": ["k"],
        }
        own["mlp"] = [*own["linear"], "hidden", "depth", "dropout", "bn"]
        values = asdict(self)
        return {name: values[name] for name in common[:1] + own[self.head] + common[1:]}

    def label(self, keys: list[str] | None = None) -> str:
        """``head(option=value, …)``: every used option, or only ``keys`` (those that vary)."""
        skip = {"head", "seed"}
        shown = [
            f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in self.params().items()
            if k not in skip and (keys is None or k in keys)
        ]
        return f"{self.head}(" + ", ".join(shown) + ")"


def varying(configs: list[HeadConfig]) -> list[str]:
    """The options whose values differ across ``configs`` (what a leaderboard should show)."""
    values: dict[str, set] = {}
    for config in configs:
        for key, value in asdict(config).items():
            values.setdefault(key, set()).add(value)
    return [key for key, seen in values.items() if len(seen) > 1]


FIELD_TYPES = {f.name: f.type for f in fields(HeadConfig)}


def _parse_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise FeatpipeError(f"sweep value {name}={value}: expected true or false")


def parse_value(name: str, value: Any) -> Any:
    """Convert one option value to its type, or raise naming the option and the expected type."""
    if name not in FIELD_TYPES:
        raise FeatpipeError(
            f"unknown head option '{name}': valid options are {', '.join(FIELD_TYPES)}"
        )
    kind = FIELD_TYPES[name]
    if kind == "bool":
        return _parse_bool(name, value)
    try:
        if kind == "int":
            number = float(value)
            if number != int(number):
                raise ValueError
            parsed: Any = int(number)
        else:
            parsed = float(value) if kind == "float" else str(value).strip()
    except (TypeError, ValueError):
        raise FeatpipeError(
            f"sweep value {name}={value!r} is not a valid {kind}: e.g. {name}="
            f"{getattr(HeadConfig(), name)}"
        ) from None
    if name in CHOICES and parsed not in CHOICES[name]:
        raise FeatpipeError(f"unknown {name} '{parsed}': choose one of {', '.join(CHOICES[name])}")
    if kind in ("int", "float") and parsed < 0:
        raise FeatpipeError(f"sweep value {name}={value} must not be negative")
    return parsed


def parse_grid_args(items: list[str]) -> dict[str, list[Any]]:
    """``["lr=1e-3,1e-2", "head=linear,mlp"]`` → ``{"lr": [0.001, 0.01], "head": [...]}``."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        if "=" not in item:
            raise FeatpipeError(f"--sweep {item}: write option=value[,value…], e.g. lr=1e-3,1e-2")
        name, _, values = item.partition("=")
        name = name.strip()
        grid[name] = [parse_value(name, v) for v in values.split(",") if v.strip()]
        if not grid[name]:
            raise FeatpipeError(f"--sweep {item}: no values given for {name}")
    return grid


def read_grid_file(path: Path) -> dict[str, list[Any]]:
    """A grid from TOML, YAML or JSON: ``{option: value or [values]}``."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise FeatpipeError(f"grid file {path}: {exc.strerror}") from None
    if path.suffix == ".toml":
        raw = tomllib.loads(text)
    elif path.suffix in (".yaml", ".yml"):
        import yaml

        raw = yaml.safe_load(text)
    else:
        raw = json.loads(text)
    if not isinstance(raw, dict):
        raise FeatpipeError(f"grid file {path}: expected a table of option = [values]")
    raw = raw.get("sweep", raw)
    return {
        name: [parse_value(name, v) for v in (values if isinstance(values, list) else [values])]
        for name, values in raw.items()
    }


def expand(grid: dict[str, list[Any]], base: HeadConfig | None = None) -> list[HeadConfig]:
    """Every combination of the grid, applied on top of ``base``.

    Combinations that differ only in options the head ignores (``lr`` for a k-NN head) are the
    same model, and are kept once.
    """
    base = base or HeadConfig()
    names = list(grid)
    configs: dict[tuple, HeadConfig] = {}
    for values in itertools.product(*(grid[n] for n in names)):
        config = replace(base, **dict(zip(names, values, strict=True)))
        configs.setdefault(tuple(config.params().items()), config)
    return list(configs.values())

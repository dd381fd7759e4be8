"""Backbone × dataset comparisons: extract what is missing, sweep heads, one leaderboard.

An experiment file (TOML or YAML) describes the same comparison, so it can be rerun exactly::

    data = ["data/elpv", "data/fashion-1k"]
    backbones = ["tf_efficientnet_lite0", "tf_efficientnet_lite0@none", "tv/mobilenet_v2"]
    seeds = 1
    holdout = 0.15          # optional: val share of train where a dataset has no val split
    shots = [1, 5, "all"]   # optional: a few-shot curve per pair
    [sweep]
    head = ["linear", "logreg"]
    lr = [1e-3, 1e-2]
    [head]                  # optional: fixed head options
    wd = 1e-4
    [extract]               # optional: featpipe extract options
    precision = "fp32"
    weights = "offline"
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featpipe.backbones.spec import BackboneSpec
from featpipe.data.datasets import scan
from featpipe.errors import ArgumentError, FeatpipeError
from featpipe.extraction.options import ExtractOptions, as_extract_options
from featpipe.fitting.options import SweepOptions
from featpipe.heads.config import parse_value
from featpipe.options import declared
from featpipe.runs.record import DEFAULT_RUNS_DIR

# An experiment file's top-level keys of a sweep option are the sweep option (seeds, cv, …).
SWEEP_KEYS = {o.name for o in declared(SweepOptions) if o.spec.cli}
EXPERIMENT_KEYS = {"data", "backbones", "sweep", "head", "extract", "runs_dir"} | SWEEP_KEYS


@dataclass
class Experiment:
    """A comparison: datasets × backbones, each fitted with the same heads and options."""

    data: list[str]
    backbones: list[str]
    sweep: dict[str, list[Any]] = field(default_factory=dict)
    head: dict[str, Any] = field(default_factory=dict)
    options: SweepOptions = field(default_factory=SweepOptions)
    extract: ExtractOptions = field(default_factory=ExtractOptions)
    runs_dir: str = str(DEFAULT_RUNS_DIR)


def read_experiment(path: Path) -> Experiment:
    """Load and validate an experiment file (TOML, or YAML with PyYAML installed)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise FeatpipeError(f"experiment file {path}: {exc.strerror}") from None
    if path.suffix in (".yaml", ".yml"):
        import yaml

        raw = yaml.safe_load(text) or {}
    else:
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise FeatpipeError(f"experiment file {path}: {exc}") from None
    unknown = set(raw) - EXPERIMENT_KEYS
    if unknown:
        raise FeatpipeError(
            f"experiment file {path}: unknown key(s) {sorted(unknown)}; "
            f"valid keys are {sorted(EXPERIMENT_KEYS)}"
        )
    for key in ("data", "backbones"):
        if not raw.get(key):
            raise FeatpipeError(f"experiment file {path}: '{key}' must list at least one entry")
    sweep = {
        k: [parse_value(k, v) for v in (vs if isinstance(vs, list) else [vs])]
        for k, vs in raw.get("sweep", {}).items()
    }
    head = {k: parse_value(k, v) for k, v in raw.get("head", {}).items()}
    try:
        options = SweepOptions(**{k: v for k, v in raw.items() if k in SWEEP_KEYS})
        extract = as_extract_options(raw.get("extract"))
    except (ArgumentError, TypeError) as exc:  # TypeError: a value of the wrong type
        raise FeatpipeError(f"experiment file {path}: {exc}") from None
    return Experiment(
        data=[str(d) for d in raw["data"]],
        backbones=list(raw["backbones"]),
        sweep=sweep,
        head=head,
        options=options,
        extract=extract,
        runs_dir=str(raw.get("runs_dir", DEFAULT_RUNS_DIR)),
    )


@dataclass
class Row:
    dataset: str
    backbone: str
    chosen: str
    metric: str
    val: float
    test: float
    macro_f1: float
    extract_seconds: float
    fit_seconds: float
    run: str
    gap: float | None = None


def _random_twin(spec: str) -> str:
    return "+".join(f"{s.model}@none" for s in BackboneSpec.parse(spec))


def compare(
    experiment: Experiment,
    progress: Callable[[str], Callable | None] | None = None,
    status: Callable[[Any], None] | None = None,
) -> list[Row]:
    """Run every dataset × backbone pair; rows in the order given, gaps filled in.

    ``progress`` and ``status`` are :func:`featpipe.fit`'s (per-batch progress, and the steps
    before batches run)."""
    from featpipe.fitting.stage import fit  # torch: the CLI imports this module at start

    rows: list[Row] = []
    for data in experiment.data:
        # One scan per dataset serves every backbone: the freshness check is paid once a call.
        dataset = scan(data, allow_outside=experiment.extract.allow_outside)
        for backbone in experiment.backbones:
            run, result = fit(
                dataset,
                backbone,
                experiment.options,
                grid=experiment.sweep or None,
                head=experiment.head or None,
                runs_dir=experiment.runs_dir,
                extract_options=experiment.extract,
                device=experiment.extract.device,
                progress=progress,
                status=status,
            )
            best, metric = result.best, result.metric
            test = best.test[0] if best.test else {}
            row = Row(
                dataset=run.config["dataset"],
                backbone=run.config["backbone"],
                chosen=best.config.label(),
                metric=metric,
                val=best.mean(metric),
                test=best.mean(metric, "test"),
                macro_f1=float(test.get("macro_f1", float("nan"))),
                extract_seconds=run.metrics.extract_seconds,
                fit_seconds=result.seconds,
                run=str(run.path),
            )
            rows.append(row)
    by_key = {(r.dataset, r.backbone): r for r in rows}
    for row in rows:
        twin = by_key.get((row.dataset, _random_twin(row.backbone)))
        if twin is not None and twin is not row:
            row.gap = row.test - twin.test
    return rows

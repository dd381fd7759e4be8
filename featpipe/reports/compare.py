"""Backbone × dataset comparisons: extract what is missing, sweep heads, one leaderboard.

Rows of one dataset are compared on the same test images (every fit run keeps its per-image
predictions): :func:`standings` names the rows tied with the best and how much worse the others
are (McNemar's exact test for accuracy, Holm across the table), and split by split when the
runs were repeated (``repeats``); the pretrained − random gap gets its paired interval.

An experiment file (TOML or YAML) describes the same comparison, so it can be rerun exactly::

    data = ["data/elpv", "data/fashion-1k"]
    backbones = ["tf_efficientnet_lite0", "tf_efficientnet_lite0@none", "tv/mobilenet_v2"]
    seeds = 1
    holdout = 0.15          # optional: val share of train where a dataset has no val split
    shots = [1, 5, "all"]   # optional: a few-shot curve per pair
    repeats = 10            # optional: the same selection and test on 10 re-drawn splits
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from featpipe.backbones.spec import BackboneSpec
from featpipe.data.datasets import scan
from featpipe.errors import ArgumentError, FeatpipeError
from featpipe.extraction.layers import extract_shared
from featpipe.extraction.options import ExtractOptions, as_extract_options
from featpipe.fitting.options import SweepOptions
from featpipe.heads.config import parse_value
from featpipe.options import declared
from featpipe.runs.metrics import REDRAWN_ALL, Repeats, correct_matrix
from featpipe.runs.predictions import FILE as PREDICTIONS_FILE
from featpipe.runs.predictions import RunPredictions, SplitOutputs, paired
from featpipe.runs.record import DEFAULT_RUNS_DIR
from featpipe.stats import (
    Interval,
    Predictions,
    Ranking,
    compare_shared_test_to_best,
    compare_splits_to_best,
    compare_to_best,
    paired_bootstrap,
)

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
    """One dataset × backbone pair: its chosen head, scores and run. ``val_interval`` and
    ``test_interval``: the selection metric with its n and 95% interval (None for a run
    that recorded none); ``gap``: pretrained − random on test, its paired interval in
    ``gap_interval``."""

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
    val_interval: Interval | None = None
    test_interval: Interval | None = None
    macro_f1_interval: Interval | None = None
    gap_interval: Interval | None = None
    warnings: list[str] = field(default_factory=list)
    repeats: Repeats | None = None


@dataclass(frozen=True)
class Standing:
    """A dataset's rows compared with its best: on the same test images (``ranking``:
    McNemar exact for accuracy, the paired bootstrap otherwise, Holm across the table), and
    split by split when every row was repeated over the same splits (``splits``). ``note``
    says why a comparison could not be made."""

    dataset: str
    ranking: Ranking | None
    splits: Ranking | None = None
    note: str = ""


def _random_twin(spec: str) -> str:
    """The random-init control of a feature set: every part's weights ``none``, its layer kept."""
    return "+".join(replace(s, weights="none").label for s in BackboneSpec.parse(spec))


def compare(
    experiment: Experiment,
    progress: Callable[[str], Callable | None] | None = None,
    status: Callable[[Any], None] | None = None,
) -> list[Row]:
    """Run every dataset × backbone pair; rows in the order given, gaps filled in.

    ``progress`` and ``status`` are :func:`featpipe.fit`'s (per-batch progress, and the steps
    before batches run)."""
    from featpipe.fitting.features import parse_feature_spec  # torch: likewise
    from featpipe.fitting.stage import fit  # torch: the CLI imports this module at start

    specs = [s for b in experiment.backbones for s in parse_feature_spec(b, experiment.extract)]
    rows: list[Row] = []
    for data in experiment.data:
        # One scan per dataset serves every backbone: the freshness check is paid once a call.
        dataset = scan(data, allow_outside=experiment.extract.allow_outside)
        # Layers of one backbone (m:-4, m:-1) come from one forward pass; each fit is a hit.
        extract_shared(
            dataset, specs, experiment.extract.without_spec(), progress=progress, status=status
        )
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
            scored = run.metrics.intervals
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
                val_interval=scored.get("val", {}).get(metric),
                test_interval=scored.get("test", {}).get(metric),
                macro_f1_interval=scored.get("test", {}).get("macro_f1"),
                warnings=list(run.metrics.warnings),
                repeats=run.metrics.repeats,
            )
            rows.append(row)
    by_key = {(r.dataset, r.backbone): r for r in rows}
    for row in rows:
        if _random_twin(row.backbone) == row.backbone:
            continue  # a random-init control has no gap to itself
        twin = by_key.get((row.dataset, _random_twin(row.backbone)))
        if twin is not None and twin is not row:
            row.gap = row.test - twin.test
            pair = _paired_test(_recorded([row, twin]))
            if pair is not None:
                ours, theirs = pair
                gap = paired_bootstrap(ours, theirs, row.metric)
                row.gap_interval = gap.interval
    return rows


def _recorded(rows: list[Row]) -> list[RunPredictions] | None:
    """Each row's recorded predictions (read once for both of a standing's comparisons), or
    None unless every run recorded them on its test split."""
    recorded = []
    for row in rows:
        path = Path(row.run) / PREDICTIONS_FILE
        outputs = RunPredictions.load(path) if path.exists() else None
        if outputs is None or "test" not in outputs.splits:
            return None
        recorded.append(outputs)
    return recorded


def _paired_test(recorded: list[RunPredictions] | None) -> list[Predictions] | None:
    """The rows' test predictions, or None unless every run recorded them on the same test
    images in the same order (the pairing of a paired test)."""
    if recorded is None:
        return None
    first = recorded[0].splits["test"]
    if not all(paired(first, r.splits["test"]) for r in recorded[1:]):
        return None
    return [r.on("test") for r in recorded]  # type: ignore[misc]


def row_names(rows: list[Row]) -> list[str]:
    """Row names for a verdict: the backbone, numbered where one appears twice."""
    seen: dict[str, int] = {}
    names = []
    for row in rows:
        seen[row.backbone] = seen.get(row.backbone, 0) + 1
        names.append(row.backbone + (f" ({seen[row.backbone]})" if seen[row.backbone] > 1 else ""))
    return names


def standings(rows: list[Row]) -> list[Standing]:
    """Every dataset with two rows or more: its rows compared with the best (see
    :class:`Standing`)."""
    out = []
    for dataset in dict.fromkeys(r.dataset for r in rows):
        group = [r for r in rows if r.dataset == dataset]
        if len(group) < 2:
            continue
        names = row_names(group)
        recorded = _recorded(group)
        predictions = _paired_test(recorded)
        ranking, note = None, ""
        if predictions is None:
            note = "not every run recorded its predictions on the same test images"
        else:
            ranking = compare_to_best(dict(zip(names, predictions, strict=True)), group[0].metric)
        out.append(Standing(dataset, ranking, _split_ranking(group, names, recorded), note))
    return out


def _split_ranking(
    group: list[Row], names: list[str], recorded: list[RunPredictions] | None
) -> Ranking | None:
    """The rows paired split by split, when all were repeated over the same splits
    (``recorded``: the runs' predictions, for splits that share one test split)."""
    repeats = [r.repeats for r in group]
    if any(r is None for r in repeats):
        return None
    first = repeats[0]
    assert first is not None
    metric = group[0].metric
    same = all(
        r is not None and r.n_test == first.n_test and r.redrawn == first.redrawn for r in repeats
    )
    if not same or any(metric not in r.scores for r in repeats if r is not None):
        return None
    if first.redrawn != REDRAWN_ALL:
        # one fixed test split: its images' luck is shared by every split, so the comparison
        # resamples them as well (the two-way bootstrap); only accuracy has per-image values
        matrices = _shared_correct(group, recorded) if metric == "accuracy" else None
        if matrices is None:
            return None
        return compare_shared_test_to_best(dict(zip(names, matrices, strict=True)), metric)
    correct = {
        "n_test": int(sum(first.n_test) / len(first.n_test)),
        "n_train": int(sum(first.n_train) / len(first.n_train)),
    }
    scores = {name: r.scores[metric] for name, r in zip(names, repeats, strict=True) if r}
    return compare_splits_to_best(scores, metric, **correct)


def _shared_correct(
    rows: list[Row], recorded: list[RunPredictions] | None
) -> list[np.ndarray] | None:
    """Each row's per-split, per-image correctness on the shared test images, in the first
    row's image order; None unless every run recorded it on the same images."""
    if recorded is None:
        return None
    first = recorded[0].splits["test"].relpath
    aligned = []
    for row, outputs in zip(rows, recorded, strict=True):
        test = outputs.splits["test"]
        if row.repeats is None or row.repeats.correct is None:
            return None
        matrix = correct_matrix(row.repeats.correct)
        if matrix.shape[1] != len(test.relpath):
            return None
        # the run's images in the first run's order: the matrix's columns follow its rows
        moved = SplitOutputs(test.relpath, test.y, matrix.T).aligned(first)
        if moved is None:
            return None
        aligned.append(moved.outputs.T)
    return aligned

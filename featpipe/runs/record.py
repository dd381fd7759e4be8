"""Runs: every fit leaves a directory that says what was done and what came out.

``runs/<dataset>/<backbone>/<time>-<id>/``
    ``run.json``      what was asked: dataset, feature spec and the cache keys it read, the grid,
                      seeds, shots, featpipe's version and the run format;
    ``metrics.json``  selection, the chosen config, validation and test scores, confusion
                      matrix, few-shot curve, extraction and fit times;
    ``rows.csv``      the tidy rows (one per dataset × backbone × head × hyperparameters × seed);
    ``curves.json``   per-epoch train/validation curves of every torch head;
    ``head/``         the chosen head: ``head.safetensors`` + ``head.json`` (no pickle).

All runs under a directory form one results table (:func:`results_table`).
"""

from __future__ import annotations

import csv
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featpipe.errors import FeatpipeError

if TYPE_CHECKING:  # torch-free at import: the CLI reads runs without loading torch
    from featpipe.fitting.sweep import SweepResult
    from featpipe.heads.fitted import FittedHead

RUN_FORMAT = 1
DEFAULT_RUNS_DIR = Path(os.environ.get("FEATPIPE_RUNS", "runs"))


@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any]

    def head(self) -> FittedHead:
        from featpipe.heads.fitted import FittedHead

        return FittedHead.load(self.path / "head")

    def curves(self) -> list[dict[str, Any]]:
        path = self.path / "curves.json"
        return json.loads(path.read_text()) if path.exists() else []


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.+@" else "_" for c in text)


def save_run(
    runs_dir: Path,
    result: SweepResult,
    *,
    dataset: str,
    dataset_root: str,
    spec: str,
    entries: list[dict[str, Any]],
    request: dict[str, Any],
    extract_seconds: float,
) -> Run:
    """Write a run directory (atomically: built under a temporary name, then renamed)."""
    from featpipe import __version__

    stamp = time.strftime("%Y%m%d-%H%M%S")
    final = runs_dir / _slug(dataset) / _slug(spec) / f"{stamp}-{uuid.uuid4().hex[:6]}"
    tmp = final.with_name(final.name + ".tmp")
    tmp.mkdir(parents=True)
    config = {
        "format": RUN_FORMAT,
        "featpipe": __version__,
        "created": time.time(),
        "dataset": dataset,
        "dataset_root": dataset_root,
        "backbone": spec,
        "entries": entries,
        "request": request,
    }
    metric = result.metric
    best = result.best
    metrics = {
        "task": result.task,
        "class_names": result.class_names,
        "selection": result.selection,
        "metric": metric,
        "chosen": best.config.params(),
        "chosen_label": best.config.label(),
        "val": {"mean": best.mean(metric), "std": best.std(metric), "all": best.val},
        "test": {
            "mean": best.mean(metric, "test"),
            "std": best.std(metric, "test"),
            "all": best.test,
        },
        "confusion": result.confusion,
        "few_shot": result.few_shot,
        "extract_seconds": extract_seconds,
        "fit_seconds": result.seconds,
        "n_configs": len(result.candidates),
    }
    rows = [
        {"dataset": dataset, "backbone": spec, **row, "run": final.name} for row in result.rows()
    ]
    curves = [
        {
            "config": c.config.params(),
            "label": c.config.label(),
            "seed": c.config.seed + i,
            "history": h,
        }
        for c in result.candidates
        for i, h in enumerate(c.histories)
        if h
    ]
    (tmp / "run.json").write_text(json.dumps(config, indent=1, default=str))
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1))
    (tmp / "curves.json").write_text(json.dumps(curves))
    _write_rows(tmp / "rows.csv", rows)
    result.best_head.save(tmp / "head")
    tmp.rename(final)
    return Run(final, config, metrics)


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def load_run(path: str | Path) -> Run:
    path = Path(path)
    try:
        config = json.loads((path / "run.json").read_text())
        metrics = json.loads((path / "metrics.json").read_text())
    except (OSError, ValueError) as exc:
        raise FeatpipeError(f"{path} is not a featpipe run directory ({exc})") from None
    if config.get("format", 0) > RUN_FORMAT:
        raise FeatpipeError(
            f"run {path} was written by a newer featpipe (run format {config['format']}, this "
            f"version reads {RUN_FORMAT}): upgrade featpipe to use it"
        )
    return Run(path, config, metrics)


def list_runs(runs_dir: Path) -> list[Run]:
    return [
        load_run(p.parent)
        for p in sorted(runs_dir.glob("*/*/*/run.json"))
        if not p.parent.name.endswith(".tmp")
    ]


def _typed(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            continue
    return {"True": True, "False": False, "": None}.get(value, value)


def results_table(runs_dir: Path, where: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """All rows of all runs, optionally filtered by ``column=value`` pairs."""
    rows: list[dict[str, Any]] = []
    for run in list_runs(runs_dir):
        with (run.path / "rows.csv").open(newline="") as handle:
            rows += [{k: _typed(v) for k, v in r.items()} for r in csv.DictReader(handle)]
    for column, value in (where or {}).items():
        rows = [r for r in rows if str(r.get(column)) == value]
    return rows


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    _write_rows(path, rows)

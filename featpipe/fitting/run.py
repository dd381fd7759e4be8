"""What a sweep found, and the fit run that records it.

:func:`~featpipe.fitting.sweep.sweep` returns a :class:`SweepResult` (one :class:`Candidate` per
config, across its seeds); :func:`save_run` writes it as a fit run through the one run writer
(:func:`featpipe.runs.record.write_run`): the chosen head (and selection's train-only head after
a refit), what the run measured as :class:`~featpipe.runs.metrics.RunMetrics`, the tidy rows
(one per config × seed) and every torch head's curves. The record of a sweep lives beside the
sweep's result, so the runs package never reaches up into fitting for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from featpipe.heads import metrics
from featpipe.heads.config import HeadConfig
from featpipe.heads.fitted import FittedHead
from featpipe.runs.metrics import Calibration, FewShotPoint, Predictions, RunMetrics, Scores
from featpipe.runs.record import Run, write_run


@dataclass
class Candidate:
    """One config across seeds: its validation scores and (for the winner) test scores."""

    config: HeadConfig
    val: list[dict[str, float]] = field(default_factory=list)
    test: list[dict[str, float]] = field(default_factory=list)
    fit_seconds: list[float] = field(default_factory=list)
    histories: list[dict[str, list[float]]] = field(default_factory=list)
    heads: list[FittedHead] = field(default_factory=list)

    def mean(self, metric: str, split: str = "val") -> float:
        scores = self.val if split == "val" else self.test
        return float(np.mean([s[metric] for s in scores])) if scores else float("nan")

    def std(self, metric: str, split: str = "val") -> float:
        scores = self.val if split == "val" else self.test
        return float(np.std([s[metric] for s in scores])) if scores else float("nan")


@dataclass
class SweepResult:
    """What a sweep found: every candidate, the chosen one and its head (one per seed), the
    chosen head's test confusion (or regression predictions), the few-shot curve, and what the
    chosen head was trained on."""

    task: str
    class_names: list[str]
    selection: str  # "val" or "cv5"
    candidates: list[Candidate]
    best: Candidate
    best_head: FittedHead
    confusion: list[list[int]] | None
    few_shot: list[FewShotPoint]
    seconds: float
    few_shot_note: str = ""  # shot counts left out of the curve, and why
    # images per split the scores rest on (the report says how many a verdict rests on)
    split_sizes: dict[str, int] = field(default_factory=dict)
    # regression: the chosen head's test predictions, for predicted-vs-true plots
    test_predictions: Predictions | None = None
    # what the chosen head was trained on: "train" or "train+val" (refitted), and why a refit
    # asked for was not made
    trained_on: str = "train"
    refit_note: str = ""
    # after a refit on train + val: the heads selection fitted on train alone, and their test
    # scores (what the refit changed)
    selection_heads: list[FittedHead] = field(default_factory=list)
    test_before_refit: list[dict[str, float]] = field(default_factory=list)
    # classification: the test calibration before and after temperature scaling
    calibration: Calibration | None = None

    @property
    def metric(self) -> str:
        return metrics.primary(self.task)

    def rows(self) -> list[dict[str, Any]]:
        """Tidy rows: one per config × seed; test columns only for the chosen config."""
        out = []
        for cand in self.candidates:
            chosen = cand is self.best
            for i, scores in enumerate(cand.val):
                seed = cand.config.seed + i
                row: dict[str, Any] = replace(cand.config, seed=seed).to_dict()
                row.update({f"val_{k}": v for k, v in scores.items()})
                if chosen and i < len(cand.test):
                    row.update({f"test_{k}": v for k, v in cand.test[i].items()})
                row["fit_seconds"] = cand.fit_seconds[i] if i < len(cand.fit_seconds) else None
                row["chosen"] = chosen
                out.append(row)
        return out

    def curves(self) -> list[dict[str, Any]]:
        """The per-epoch curves of every torch head, config by config and seed by seed."""
        return [
            {
                "config": c.config.params(),
                "label": c.config.label(),
                "seed": c.config.seed + i,
                "history": h,
            }
            for c in self.candidates
            for i, h in enumerate(c.histories)
            if h
        ]

    def run_metrics(self, extract_seconds: float) -> RunMetrics:
        """What the fit run records of the sweep (its ``metrics.json``)."""
        metric, best, before = self.metric, self.best, self.test_before_refit
        return RunMetrics(
            task=self.task,
            class_names=self.class_names,
            selection=self.selection,
            metric=metric,
            chosen=best.config.params(),
            chosen_label=best.config.label(),
            val=Scores(best.mean(metric), best.std(metric), best.val),
            test=Scores(best.mean(metric, "test"), best.std(metric, "test"), best.test),
            confusion=self.confusion,
            few_shot=self.few_shot,
            split_sizes=self.split_sizes,
            trained_on=self.trained_on,
            refit_note=self.refit_note,
            test_before_refit=(
                Scores(sum(t[metric] for t in before) / len(before), None, before)
                if before
                else None
            ),
            test_predictions=self.test_predictions,
            extract_seconds=extract_seconds,
            fit_seconds=self.seconds,
            n_configs=len(self.candidates),
            calibration=self.calibration,
        )


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
    """Write a fit run: the sweep's chosen head, scores, rows and curves (see
    :func:`~featpipe.runs.record.write_run`); after a refit, selection's train-only head is
    kept as ``selection-head/``."""
    return write_run(
        runs_dir,
        kind="fit",
        dataset=dataset,
        dataset_root=dataset_root,
        backbone=spec,
        request=request,
        metrics=result.run_metrics(extract_seconds),
        rows=result.rows(),
        curves=result.curves(),
        entries=entries,
        head=result.best_head,
        files=(
            {"selection-head": result.selection_heads[0].save} if result.selection_heads else None
        ),
    )

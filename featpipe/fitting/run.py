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
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from featpipe.fitting.verdict import Verdict, assess, intervals
from featpipe.heads import metrics
from featpipe.heads.config import HeadConfig, varying
from featpipe.heads.fitted import FittedHead
from featpipe.runs.metrics import (
    Calibration,
    FewShotPoint,
    Predictions,
    Repeats,
    RunMetrics,
    Scores,
)
from featpipe.runs.predictions import FILE as PREDICTIONS_FILE
from featpipe.runs.predictions import RunPredictions
from featpipe.runs.record import Run, write_run
from featpipe.stats import Interval
from featpipe.stats.predictions import Predictions as ImagePredictions


@dataclass(eq=False)  # identity: candidates hold heads and output arrays, compared by who they are
class Candidate:
    """One config across seeds: its validation scores and (for the winner) test scores."""

    config: HeadConfig
    val: list[dict[str, float]] = field(default_factory=list)
    test: list[dict[str, float]] = field(default_factory=list)
    fit_seconds: list[float] = field(default_factory=list)
    histories: list[dict[str, list[float]]] = field(default_factory=list)
    heads: list[FittedHead] = field(default_factory=list)
    # the first seed's raw outputs on the images selection scored it on (the val rows, or the
    # train rows out of fold), for intervals and paired comparisons between configs
    val_outputs: np.ndarray | None = None
    # with several seeds, every seed's prediction on those images (class or value:
    # metrics.predicted), in seed order: the configs are compared by their mean. Predictions,
    # not outputs, so that a large grid of many classes keeps one array of outputs per config
    seed_predictions: list[np.ndarray] = field(default_factory=list)

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
    # per image: the chosen config on the selection images, the tested head on test
    predictions: RunPredictions | None = None
    # the same sweep over re-drawn splits (--repeats), when asked for
    repeats: Repeats | None = None

    @property
    def metric(self) -> str:
        return metrics.primary(self.task)

    @cached_property
    def verdict(self) -> Verdict:
        """Intervals, the configs compared on the selection images, and the warnings
        (:func:`featpipe.fitting.verdict.assess`), computed once."""
        p = self.predictions
        if p is None:
            return Verdict()
        splits = {s: pred for s in ("val", "test") if (pred := p.on(s)) is not None}
        selection = p.splits.get("val")
        ranked = sorted(self.candidates, key=lambda c: -c.mean(self.metric))
        keys = varying([c.config for c in self.candidates])
        configs = {
            c.config.label(keys): (
                [replace(selection, outputs=c.val_outputs).predictions(p.task, p.n_classes)]
                if len(c.seed_predictions) < 2
                else [
                    ImagePredictions.from_predicted(p.task, p.n_classes, selection.y, pred)
                    for pred in c.seed_predictions
                ]
            )
            for c in ranked
            if c.val_outputs is not None and selection is not None
        }
        return assess(splits, configs, self.metric)

    @cached_property
    def _config_intervals(self) -> list[dict[str, dict[str, Interval]]]:
        """Per candidate, per split, its intervals: the chosen config's every metric on val and
        test (first seed); every other config's selection metric on val from its own outputs
        (the others would cost a bootstrap per config). Computed once."""
        p = self.predictions
        selection = p.splits.get("val") if p is not None else None
        out: list[dict[str, dict[str, Interval]]] = []
        for cand in self.candidates:
            if cand is self.best:
                out.append(self.verdict.intervals)
            elif p is not None and selection is not None and cand.val_outputs is not None:
                own = replace(selection, outputs=cand.val_outputs).predictions(p.task, p.n_classes)
                out.append({"val": intervals(own, only=self.metric)})
            else:
                out.append({})
        return out

    def _intervals(self, split: str, cand: Candidate) -> dict[str, Interval]:
        return self._config_intervals[self.candidates.index(cand)].get(split, {})

    def interval(self, split: str, cand: Candidate) -> Interval | None:
        """``cand``'s selection-metric interval on ``split`` (None: not scored there)."""
        return self._intervals(split, cand).get(self.metric)

    def rows(self) -> list[dict[str, Any]]:
        """Tidy rows: one per config × seed; test columns only for the chosen config. The
        first seed's rows carry each score's n and 95% interval (``val_n``,
        ``val_accuracy_low``, ``val_accuracy_high``: the selection metric for every config,
        every metric for the chosen one, on val and test)."""
        out = []
        for cand in self.candidates:
            chosen = cand is self.best
            bounds = {s: self._intervals(s, cand) for s in ("val", "test")}
            for i, scores in enumerate(cand.val):
                seed = cand.config.seed + i
                row: dict[str, Any] = replace(cand.config, seed=seed).to_dict()
                row.update({f"val_{k}": v for k, v in scores.items()})
                if chosen and i < len(cand.test):
                    row.update({f"test_{k}": v for k, v in cand.test[i].items()})
                if i == 0:
                    row.update(interval_columns(bounds))
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
            intervals=self.verdict.intervals,
            verdict=str(self.verdict.ranking) if self.verdict.ranking else "",
            tied_with_best=self.verdict.ranking.tied if self.verdict.ranking else [],
            warnings=self.verdict.warnings,
            repeats=self.repeats,
        )


def interval_columns(bounds: dict[str, dict[str, Interval]]) -> dict[str, Any]:
    """``{split}_n`` and ``{split}_{metric}_low``/``_high`` for a tidy row."""
    row: dict[str, Any] = {}
    for split, scored in bounds.items():
        for metric, interval in scored.items():
            row[f"{split}_n"] = interval.n
            row[f"{split}_{metric}_low"] = interval.low
            row[f"{split}_{metric}_high"] = interval.high
    return row


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
            ({"selection-head": result.selection_heads[0].save} if result.selection_heads else {})
            | ({PREDICTIONS_FILE: result.predictions.save} if result.predictions else {})
        ),
    )

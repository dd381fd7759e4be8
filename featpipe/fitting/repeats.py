"""Repeated splits at cached cost (``--repeats R``): the same selection and test on R splits.

One split moves every backbone together: on ELPV-300 the same 44 hard test images cost three
backbones 20-23 points from val to test. Only repeated splits tell that apart from a backbone's
own quality, and because the features are cached, a repeat costs a sweep of heads, not an
extraction. Split 0 is the data's own split (the run's head and predictions are its); split r
≥ 1 is drawn again with salt ``r``, by the rule that drew the data's own split
(:func:`featpipe.data.splits.stratified_split`, hashing each image's path: the same draw for
every backbone of a dataset, whatever its row order), with the same shares:

* data without fixed splits (``split_source`` stratified): train, val and test are re-drawn;
* a fixed test split (folders, a CSV column): test stays, the val carve-out of train + val is
  re-drawn; with no val split (cross-validation), the folds are.

When the test images themselves are re-drawn, each split's score carries its own test set's
noise and the spread across splits adds which images were drawn: the summary is
:func:`featpipe.stats.across_splits`, with Nadeau & Bengio's correction (n_test / n_train),
since the splits share most of their images. With a fixed test split every split is scored on
the same test images, whose luck the spread across splits cannot see: accuracy's summary is then
:func:`featpipe.stats.shared_test_summary`, the two-way bootstrap over splits and test images,
from each split's per-image correctness (recorded in :class:`Repeats` for paired comparisons
across backbones); the other metrics keep the t over splits, whose method says that it covers
the carve-outs only.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np

from featpipe.cache.entry import FeatureSet
from featpipe.data.splits import hold_out, regression_strata, stratified_split
from featpipe.errors import ArgumentError
from featpipe.fitting.run import SweepResult
from featpipe.fitting.sweep import sweep
from featpipe.heads.config import HeadConfig, varying
from featpipe.runs.metrics import (
    REDRAWN_ALL,
    REDRAWN_FOLDS,
    REDRAWN_VAL,
    Repeats,
    correct_matrix,
)
from featpipe.stats import Interval, across_splits, shared_test_summary


def redrawn(features: FeatureSet) -> str:
    """What a repeat draws again for these features (see the module docstring)."""
    if features.meta.get("split_source", "stratified") == "stratified":
        return REDRAWN_ALL
    return REDRAWN_VAL if (features.split == "val").any() else REDRAWN_FOLDS


def _strata(features: FeatureSet, rows: np.ndarray) -> list[Any]:
    if features.task == "classification":
        return features.labels[rows].tolist()
    return regression_strata(features.y[rows].tolist())


def redraw(features: FeatureSet, draw: int) -> FeatureSet:
    """The features with split ``draw`` (≥ 1) assigned, the same shares as the data's own."""
    what = redrawn(features)
    if what == REDRAWN_FOLDS:
        return features  # the folds are re-drawn by the sweep's cv_seed
    salt = f"repeat-{draw}"
    split = features.split.copy()
    if what == REDRAWN_ALL:
        rows = np.flatnonzero(np.isin(split, ("train", "val", "test")))
        shares = {s: float(np.mean(split[rows] == s)) for s in ("val", "test")}
        paths = features.relpath[rows].tolist()
        split[rows] = stratified_split(paths, _strata(features, rows), shares, salt)
    else:
        rows = np.flatnonzero(np.isin(split, ("train", "val")))
        share = float(np.mean(split[rows] == "val"))
        paths = features.relpath[rows].tolist()
        held = np.array(hold_out(paths, _strata(features, rows), share, salt), dtype=bool)
        split[rows] = np.where(held, "val", "train")
    return replace(features, split=split)


def repeat(
    first: SweepResult,
    features: FeatureSet,
    configs: list[HeadConfig],
    repeats: int,
    **options: Any,
) -> Repeats:
    """``first`` (split 0's sweep) and ``repeats − 1`` more on re-drawn splits, summarised.

    ``options`` are :func:`~featpipe.fitting.sweep.sweep`'s (seeds, cv, refit, n_jobs; no
    few-shot curve, no views: those are of split 0)."""
    if not (features.split == "test").any():
        raise ArgumentError("repeats", "need a test split to score every repeat on")
    start = time.perf_counter()
    results = [first]
    for draw in range(1, repeats):
        results.append(sweep(redraw(features, draw), configs, cv_seed=draw, **options))
    what = redrawn(features)
    keys = varying(configs)
    metric_names = [m for m in first.best.test[0] if all(r.best.test for r in results)]
    scores = {m: [r.best.mean(m, "test") for r in results] for m in metric_names}
    n_test = [r.split_sizes["test"] for r in results]
    n_train = [r.split_sizes["train"] + r.split_sizes["val"] for r in results]
    correction = {}
    if what == REDRAWN_ALL:  # the splits share most of their images
        correction = {"n_test": int(np.mean(n_test)), "n_train": int(np.mean(n_train))}
    correct = None if what == REDRAWN_ALL else _correct(results)
    summary: dict[str, Interval] = {}
    std: dict[str, float] = {}
    for m, values in scores.items():
        if len(values) >= 2 and np.all(np.isfinite(values)):
            s = across_splits(values, **correction)
            if correct is not None and m == "accuracy":
                s = shared_test_summary(correct_matrix(correct))
            elif what != REDRAWN_ALL:
                method = f"{s.interval.method}; the same test images in every split: {CARVE_OUTS}"
                s = replace(s, interval=replace(s.interval, method=method))
            summary[m], std[m] = s.interval, s.std
    return Repeats(
        what,
        [r.best.config.label(keys) for r in results],
        scores,
        n_test,
        n_train,
        summary,
        std,
        first.seconds + time.perf_counter() - start,
        correct,
    )


CARVE_OUTS = "covers the val carve-outs only, not the test images' own noise"


def _correct(results: list[SweepResult]) -> list[str] | None:
    """Each split's per-image correctness on the shared test images (split 0's order), as
    :attr:`Repeats.correct` stores it; None for regression or where predictions are missing."""
    rows = []
    for result in results:
        p = result.predictions.on("test") if result.predictions is not None else None
        if p is None or p.task != "classification":
            return None
        rows.append(np.where(p.y == p.pred, b"1", b"0").tobytes().decode("ascii"))
    return rows

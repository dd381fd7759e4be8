"""One-line warnings that say how far to trust a score: below chance, or a validation score the
test split does not bear out.

Each helper returns the line to print, or None when there is nothing to say.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from featpipe.errors import ArgumentError
from featpipe.stats.interval import Interval, z_value
from featpipe.stats.predictions import METRICS, Metric


def _metric(name: str) -> Metric:
    if name not in METRICS:
        raise ArgumentError("metric", f"{name}: choose one of {', '.join(METRICS)}")
    return METRICS[name]


def chance_level(metric: str, y_true: Any, n_classes: int | None = None) -> float:
    """The score a predictor blind to the images can expect on a test set with these true
    labels (or values); for classification, pass class counts as ``np.repeat(range(K),
    counts)``.

    * accuracy: the majority class's share (always predicting it), 1/K on a balanced test;
    * balanced accuracy: 1/K over the classes present (a blind predictor recalls each class
      as often as it predicts it);
    * macro-F1: 1/``n_classes`` (predicting each class at its frequency, the best a blind
      predictor can expect: class k's F1 is then its share);
    * AUROC: 0.5; R²: 0 (predicting the test mean); MAE: the mean distance to the median;
      MSE: the variance (predicting the median, the mean).
    """
    m = _metric(metric)
    if m.task == "per_query":
        raise ArgumentError("metric", f"{metric}: a mean of per-query scores has no chance level")
    y = np.asarray(y_true, dtype=np.float64)
    if y.ndim != 1 or len(y) == 0 or not np.all(np.isfinite(y)):
        raise ArgumentError("y_true", "give one finite true label or value per test image")
    if m.task == "regression":
        return {
            "r2": 0.0,
            "mae": float(np.abs(y - np.median(y)).mean()),
            "mse": float(y.var()),
        }[m.name]
    if np.any(y < 0) or np.any(y != np.round(y)):
        raise ArgumentError("y_true", "must hold class indices (whole numbers ≥ 0)")
    counts = np.bincount(y.astype(np.int64))
    k = len(counts) if n_classes is None else int(n_classes)
    if k < len(counts):
        raise ArgumentError("n_classes", f"{n_classes}: the labels use {len(counts)} classes")
    return {
        "accuracy": float(counts.max() / len(y)),
        "balanced_accuracy": 1 / int(np.count_nonzero(counts)),
        "macro_f1": 1 / k,
        "auroc": 0.5,
    }[m.name]


def below_chance(score: Interval, chance: float, metric: str) -> str | None:
    """A line when the whole interval is worse than chance (a score below chance by noise
    alone stays silent): usually the class names and the labels disagree, or the test split is
    not what the model was trained for."""
    m = _metric(metric)
    worse = score.high < chance if m.higher_is_better else score.low > chance
    if not worse:
        return None
    side = "below" if m.higher_is_better else "above"
    return (
        f"{metric} {score} is {side} chance ({chance:.3g}) beyond its interval: a predictor "
        "blind to the images does better; check that the labels match the class names and "
        "that the test split is the task the model was trained for"
    )


def gap_warning(val: Interval, test: Interval, metric: str, confidence: float = 0.95) -> str | None:
    """A line when the chosen config's validation and test scores differ by more than their
    intervals allow, None otherwise.

    The two splits are independent samples, so the gap's standard error is the root sum of
    squares of theirs, each read off the side of its interval that faces the other (Wilson and
    BCa intervals are asymmetric); the gap is too large beyond ``confidence``'s z times that.
    A validation score far above test means selection fitted the validation split's noise (or
    the splits differ); far below, that the splits differ.
    """
    m = _metric(metric)
    gap = val.estimate - test.estimate
    if gap >= 0:  # val's lower side and test's upper side face each other
        sides = (val.estimate - val.low, test.high - test.estimate)
    else:
        sides = (val.high - val.estimate, test.estimate - test.low)
    se = math.hypot(sides[0] / z_value(val.confidence), sides[1] / z_value(test.confidence))
    allowed = z_value(confidence) * se
    if abs(gap) <= allowed:
        return None
    scale, unit = (100, " points") if m.proportion else (1, "")
    size = f"{abs(gap) * scale:.3g}{unit}, more than the intervals allow ({allowed * scale:.2g})"
    looks_better = gap > 0 if m.higher_is_better else gap < 0
    if looks_better:
        why = "selection may have fitted the validation split's noise, or the splits differ"
    else:
        why = "validation and test differ (in size, source or difficulty)"
    return f"{metric}: validation {val} and test {test} differ by {size}; {why}"

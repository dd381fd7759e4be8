"""Results over R re-drawn train/test splits: their mean, spread and interval, and paired
comparisons split by split.

Each split's score already carries that split's test-set noise, and the spread across splits
adds the noise of which images were drawn for training. The interval is Student's t over the
R split scores: mean ± t(R−1) · s · √(1/R). It covers the score *expected of a split of this
dataset*. Re-drawn splits share most of their images, though, so the R scores are not
independent draws of the score on new data, and as R grows this interval shrinks towards
zero around one dataset's value; comparisons made that way call a true tie a difference far
more often than their nominal 5% (Dietterich 1998). Given the split sizes, the corrected
resampled t of Nadeau & Bengio (2003) widens it to s · √(1/R + n_test/n_train), which does not
shrink below the overlap's share; pass ``n_test`` and ``n_train`` whenever the splits are
random re-draws of one pool.

Comparisons pair by split: both models are scored on the same R splits, and the t interval is
over the R per-split differences (the paired t-test), with the same optional correction.
Resampling images within splits as well would add nothing: each split's difference already
includes its own test-set noise, and the splits, not the images, are the replicates here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from featpipe.errors import ArgumentError
from featpipe.stats.interval import Interval, check_confidence
from featpipe.stats.paired import Difference
from featpipe.stats.special import stdtr, stdtrit


@dataclass(frozen=True)
class SplitSummary:
    """A score over R splits: the mean, the standard deviation across splits (ddof 1) and the
    interval of the mean (``interval.n``: the number of splits)."""

    mean: float
    std: float
    interval: Interval
    scores: tuple[float, ...]

    def __str__(self) -> str:
        return (
            f"{self.interval.format()} over {len(self.scores)} splits "
            f"(std across splits {self.std:.3g})"
        )


def _t(
    values: Sequence[float],
    n_test: int | None,
    n_train: int | None,
    confidence: float,
    param: str,
) -> tuple[float, float, float, Interval]:
    """mean, std, standard error and t interval of the mean of per-split values."""
    check_confidence(confidence)
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or len(v) < 2 or not np.all(np.isfinite(v)):
        raise ArgumentError(param, "give at least two finite per-split scores")
    if (n_test is None) != (n_train is None):
        raise ArgumentError("n_test", "give n_test and n_train together (or neither)")
    r = len(v)
    mean, std = float(v.mean()), float(v.std(ddof=1))
    if n_test is None or n_train is None:
        share, method = 1 / r, f"t over {r} splits"
    else:
        if n_test < 1 or n_train < 1:
            raise ArgumentError("n_test", "and n_train must be positive image counts")
        share = 1 / r + n_test / n_train
        method = f"corrected resampled t over {r} splits (Nadeau & Bengio 2003)"
    se = std * math.sqrt(share)
    half = float(stdtrit(r - 1, 0.5 + confidence / 2)) * se
    return mean, std, se, Interval(mean, mean - half, mean + half, r, method, confidence, "splits")


def across_splits(
    scores: Sequence[float],
    *,
    n_test: int | None = None,
    n_train: int | None = None,
    confidence: float = 0.95,
) -> SplitSummary:
    """Summarise one model's per-split scores (see the module's docstring for the interval)."""
    mean, std, _, interval = _t(scores, n_test, n_train, confidence, "scores")
    return SplitSummary(mean, std, interval, tuple(float(s) for s in scores))


def paired_splits(
    a: Sequence[float],
    b: Sequence[float],
    *,
    n_test: int | None = None,
    n_train: int | None = None,
    confidence: float = 0.95,
) -> Difference:
    """The paired t interval and two-sided p of ``a − b`` over the same splits (``a[i]`` and
    ``b[i]`` scored on split i)."""
    if len(a) != len(b):
        raise ArgumentError("b", f"has {len(b)} splits, a has {len(a)}: pair them split by split")
    diffs = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    mean, _, se, interval = _t(diffs, n_test, n_train, confidence, "a")
    if se == 0:
        p = 1.0 if mean == 0 else 0.0
    else:
        p = float(2 * stdtr(len(diffs) - 1, -abs(mean) / se))
    test = "paired t" if n_test is None else "corrected resampled paired t"
    return Difference(interval, p, test)

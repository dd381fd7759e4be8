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

That holds only when every split draws its own test images. With a fixed test split (folders,
a CSV column) only the val carve-out is re-drawn: every split is scored on the *same* test
images, so their luck is shared by all R scores and the spread across splits does not hold it
at all. A t interval over such splits covers which carve-out was drawn, not which test images
were, and paired per split it calls a 1-point difference on 600 shared test images
"p < 0.001" where McNemar's test on one split says tied. For those splits
:func:`shared_test_summary` and :func:`paired_shared_test` take each split's per-image
values (1 for a correct image, 0 for a wrong one) on the shared test images and resample both
ways at once: splits and images, independently (the two-way, or "pigeonhole", bootstrap of a
crossed design; Owen 2007; McCullagh 2000), percentile intervals. The images' share of the
noise is then in the interval, and the carve-outs' as well; treating the carve-outs as
independent draws understates their share slightly (they overlap), which is small next to the
test images' whenever the test split is fixed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from featpipe.errors import ArgumentError
from featpipe.stats.bootstrap import N_RESAMPLES, check_resampling
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


# resamples per block of the two-way bootstrap: bounds its memory to ~CHUNK × images floats
_CHUNK = 250


def _per_image(values: Any, param: str) -> np.ndarray:
    """An R × n float matrix of per-image values in [0, 1], R ≥ 2 splits, n ≥ 1 images."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2 or v.shape[0] < 2 or v.shape[1] < 1:
        raise ArgumentError(
            param, "give one row per split (at least two) and one column per shared test image"
        )
    if not np.all((v >= 0) & (v <= 1)):  # also refuses NaN
        raise ArgumentError(param, "must hold per-image values between 0 and 1 (1: correct)")
    return v


def _two_way(values: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """The grand mean of ``values`` (R × n) under ``n_resamples`` two-way resamples: R splits
    and n images drawn with replacement, independently. Weights, not copies: a resample's mean
    is ``w_splits · values · w_images / (R n)`` with multinomial counts as weights."""
    check_resampling(n_resamples, seed)
    rng = np.random.default_rng(seed)
    r, n = values.shape
    out = np.empty(n_resamples)
    for start in range(0, n_resamples, _CHUNK):
        b = min(_CHUNK, n_resamples - start)
        splits = rng.multinomial(r, np.full(r, 1 / r), size=b).astype(np.float64)
        drawn = rng.integers(0, n, size=(b, n)) + np.arange(b)[:, None] * n
        images = np.bincount(drawn.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)
        out[start : start + b] = ((splits @ values) * images).sum(axis=1) / (r * n)
    return out


def _percentile(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    low, high = np.quantile(replicates, [0.5 - confidence / 2, 0.5 + confidence / 2])
    return float(low), float(high)


def _method(r: int, n: int, n_resamples: int, seed: int) -> str:
    return (
        f"two-way bootstrap over {r} splits × {n} shared test images, percentile, "
        f"{n_resamples} resamples, seed {seed}"
    )


def shared_test_summary(
    values: Any,
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    confidence: float = 0.95,
) -> SplitSummary:
    """One model over R splits scored on the same test images: ``values[r][i]`` is image i's
    value in split r (accuracy: 1 correct, 0 wrong). The mean, the standard deviation of the
    per-split scores, and the two-way bootstrap interval (see the module's docstring)."""
    check_confidence(confidence)
    v = _per_image(values, "values")
    scores = v.mean(axis=1)
    low, high = _percentile(_two_way(v, n_resamples, seed), confidence)
    mean = float(v.mean())
    method = _method(v.shape[0], v.shape[1], n_resamples, seed)
    interval = Interval(mean, low, high, v.shape[0], method, confidence, "splits")
    return SplitSummary(mean, float(scores.std(ddof=1)), interval, tuple(map(float, scores)))


def paired_shared_test(
    a: Any,
    b: Any,
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    confidence: float = 0.95,
) -> Difference:
    """``a − b`` over the same R splits and the same test images (``a[r][i]``, ``b[r][i]``:
    image i in split r): the two-way bootstrap's percentile interval of the mean difference and
    its two-sided p (twice the smaller share of resampled differences on either side of 0,
    never below 1/resamples). Identical values give [0, 0] and p = 1."""
    check_confidence(confidence)
    va, vb = _per_image(a, "a"), _per_image(b, "b")
    if va.shape != vb.shape:
        raise ArgumentError(
            "b",
            f"is {vb.shape[0]} splits × {vb.shape[1]} images, a is {va.shape[0]} × "
            f"{va.shape[1]}: pair them split by split and image by image",
        )
    d = va - vb
    mean = float(d.mean())
    replicates = _two_way(d, n_resamples, seed)
    low, high = _percentile(replicates, confidence)
    if not np.any(d):
        p = 1.0
    else:
        below, above = float(np.mean(replicates <= 0)), float(np.mean(replicates >= 0))
        p = min(1.0, max(2 * min(below, above), 1 / n_resamples))
    method = _method(d.shape[0], d.shape[1], n_resamples, seed)
    interval = Interval(mean, low, high, d.shape[0], method, confidence, "splits")
    return Difference(interval, p, "two-way bootstrap")

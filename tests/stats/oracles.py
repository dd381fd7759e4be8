"""Helpers the stats tests share: simulated classifiers, an independent macro-F1, and the
comparison with scipy's BCa bootstrap within Monte-Carlo error."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

# resamples on each side of a comparison with scipy: tails close enough to tell BCa from percentile
N_RESAMPLES = 40_000


def classifier(rng: np.random.Generator, n: int, shares: list[float], right: float) -> np.ndarray:
    """True labels drawn with ``shares``, and predictions right with probability ``right``
    (otherwise a uniformly random class, which may be right too)."""
    y = rng.choice(len(shares), size=n, p=shares)
    return np.stack([y, np.where(rng.random(n) < right, y, rng.integers(0, len(shares), n))])


def macro_f1(y: np.ndarray, pred: np.ndarray, axis: int = -1) -> np.ndarray:
    """Macro-F1 over three classes, vectorised for scipy.stats.bootstrap (written from the
    definition, independent of featpipe's kernels)."""
    total = 0.0
    for k in range(3):
        tp = ((y == k) & (pred == k)).sum(axis)
        both = (y == k).sum(axis) + (pred == k).sum(axis)
        total = total + np.where(both > 0, 2 * tp / np.maximum(both, 1), 0.0)
    return total / 3


def assert_agrees_with_scipy_bca(ours, data: tuple, statistic, step: float = 0.0) -> None:
    """``ours`` (an Interval from ``N_RESAMPLES`` resamples) is scipy.stats.bootstrap's paired
    BCa interval of ``statistic(*data, axis)`` within Monte-Carlo error: the endpoints may
    differ by four standard deviations of the difference of two tail quantiles from
    independent resamples (each √(q(1−q)/B) / φ(z_q) standard errors, at q = 0.02 to allow for
    BCa's shifted levels), plus one lattice ``step`` of a discrete statistic."""
    theirs = scipy_stats.bootstrap(
        data,
        statistic,
        paired=True,
        vectorized=True,
        method="BCa",
        n_resamples=N_RESAMPLES,
        rng=np.random.default_rng(2),
    )
    q = 0.02
    sd = math.sqrt(q * (1 - q) / N_RESAMPLES) / scipy_stats.norm.pdf(scipy_stats.norm.ppf(q))
    tol = 4 * math.sqrt(2) * sd * theirs.standard_error + step
    assert ours.estimate == pytest.approx(float(statistic(*data, axis=-1)), abs=1e-12)
    assert abs(ours.low - theirs.confidence_interval.low) < tol
    assert abs(ours.high - theirs.confidence_interval.high) < tol

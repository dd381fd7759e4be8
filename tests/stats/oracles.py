"""Helpers the stats tests share: simulated classifiers, an independent macro-F1, and how far
two bootstrap intervals may differ by Monte-Carlo error alone."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as scipy_stats


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


def mc_tolerance(se: float, n_resamples: int, step: float = 0.0) -> float:
    """How far two BCa endpoints from independent resamples may differ: four standard
    deviations of the difference of two tail quantiles (each √(q(1−q)/B) / φ(z_q) standard
    errors, at q = 0.02 to allow for BCa's shifted levels), plus one lattice step of a
    discrete statistic."""
    q = 0.02
    sd = math.sqrt(q * (1 - q) / n_resamples) / scipy_stats.norm.pdf(scipy_stats.norm.ppf(q))
    return 4 * math.sqrt(2) * sd * se + step

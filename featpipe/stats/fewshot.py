"""Few-shot curves: each point's interval from the draws of training images and from the test
set together.

At k shots per class, D training subsets are drawn, a head is fitted on each and scored on the
same test images; the point is the mean of the D scores. Its variance has two parts (the law
of total variance, conditioning on the test set):

* the draws: given the test set, the D scores are independent, and s²/D (s: their standard
  deviation) estimates the variance that comes from which k images per class were drawn;
* the test set: the bootstrap over test images, resampling the same images for every draw (so
  the draws stay paired), gives the variance of the draw-averaged score over test sets.

The interval is mean ± t(ν) · √(V_draws + V_test), with the Welch–Satterthwaite degrees of
freedom ν = (V_draws + V_test)² / (V_draws² / (D − 1)) (the bootstrap's V_test, from thousands
of resamples, counts as known). With few draws and a variance the draws dominate, this is the
t interval over the draws (ν → D − 1); with a variance the test set dominates, the normal
interval of the bootstrap (ν → ∞). Neither source alone would do: the draws' spread on one test
set knows nothing of the test set's luck, and the bootstrap of one draw nothing of the next.
A draw's luck on individual images enters both parts, so the interval errs wide by at most that
noise over D·n, never narrow. One draw (a curve's "all" point, which trains on every image and
has nothing to draw) gets the test-set part alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.special import ndtri, stdtrit

from featpipe.errors import ArgumentError
from featpipe.stats.bootstrap import N_RESAMPLES, resample
from featpipe.stats.interval import Interval, check_confidence
from featpipe.stats.predictions import Predictions


def few_shot_interval(
    draws: Sequence[Predictions],
    metric: str,
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    confidence: float = 0.95,
) -> Interval:
    """One point of a few-shot curve: the mean of ``metric`` over the draws (each draw's
    predictions on the same test images), with an interval covering both the draws and the
    test set (see the module's docstring)."""
    if len(draws) == 0:
        raise ArgumentError("draws", "give the predictions of at least one draw")
    check_confidence(confidence)
    m = draws[0].metric(metric)
    replicates = resample(list(draws), m, n_resamples, seed)
    scores = np.array([r.estimate for r in replicates])
    if not np.all(np.isfinite(scores)):
        raise ArgumentError("metric", f"{metric} is undefined on this test set (one class?)")
    averaged = np.column_stack([r.resamples for r in replicates]).mean(axis=1)
    v_test = float(np.var(averaged[np.isfinite(averaged)], ddof=1))
    d = len(draws)
    v_draws = float(np.var(scores, ddof=1)) / d if d > 1 else 0.0
    total = v_draws + v_test
    q = 0.5 + confidence / 2
    if v_draws > 0:
        dof = (d - 1) * (total / v_draws) ** 2
        quantile, named = float(stdtrit(dof, q)), f"t({dof:.1f})"
    else:
        quantile, named = float(ndtri(q)), "normal"
    half = quantile * math.sqrt(total)
    mean = float(scores.mean())
    method = (
        f"{d} draws and the test-set bootstrap ({n_resamples} resamples, seed {seed}), "
        f"{named} on the summed variances"
    )
    return Interval(mean, mean - half, mean + half, len(draws[0]), method, confidence)

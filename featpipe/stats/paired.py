"""Two models on the same test images: McNemar's exact test and the paired bootstrap.

Pairing is what makes a comparison sharp: both models see the same images, so the hard images
are hard for both and cancel out of the difference. Two independent intervals that overlap say
little; the paired difference says how far apart the two models are on these images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from featpipe.errors import ArgumentError
from featpipe.stats.bootstrap import N_RESAMPLES, resample
from featpipe.stats.interval import Interval, check_confidence
from featpipe.stats.predictions import Predictions
from featpipe.stats.special import bdtr


def format_p(p: float) -> str:
    """``p = 0.006``, ``p = 0.41``, ``p < 0.001``."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


@dataclass(frozen=True)
class Difference:
    """A paired difference ``a − b`` with its interval and its two-sided p (H0: no difference).

    ``test`` names how p was computed."""

    interval: Interval
    p: float
    test: str

    def __str__(self) -> str:
        return f"difference {self.interval}, {format_p(self.p)} ({self.test})"


@dataclass(frozen=True)
class McNemar:
    """McNemar's exact test: of the images exactly one model classifies correctly, ``only_a``
    are a's and ``only_b`` b's; ``p`` is the two-sided exact binomial p of an even split."""

    only_a: int
    only_b: int
    n: int
    p: float

    def __str__(self) -> str:
        return (
            f"McNemar exact: {self.only_a} images only a gets right, {self.only_b} only b "
            f"(of {self.n}), {format_p(self.p)}"
        )


def mcnemar(a: Predictions, b: Predictions) -> McNemar:
    """McNemar's exact test of equal accuracy of two classifiers on the same images.

    Only the discordant images carry evidence; under the null each is equally likely to favour
    either model, so their split is Binomial(discordant, ½). The two-sided p doubles the
    smaller tail (exact for a symmetric null) and is 1 when the split is even or nothing is
    discordant: a model compared with itself is tied, p = 1.
    """
    if a.task != "classification":
        raise ArgumentError("predictions", "McNemar's test is for classifiers (accuracy)")
    a.same_images(b)
    right_a, right_b = a.pred == a.y, b.pred == b.y
    only_a = int(np.count_nonzero(right_a & ~right_b))
    only_b = int(np.count_nonzero(right_b & ~right_a))
    discordant = only_a + only_b
    p = 1.0 if discordant == 0 else min(1.0, 2 * float(bdtr(min(only_a, only_b), discordant, 0.5)))
    return McNemar(only_a, only_b, len(a), p)


def paired_bootstrap(
    a: Predictions,
    b: Predictions,
    metric: str,
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    confidence: float = 0.95,
) -> Difference:
    """The BCa interval and p of ``metric(a) − metric(b)``, both models scored on the same
    resamples of the same test images (one index matrix for both, so the pairing holds).

    p inverts the BCa interval: the smallest 1 − confidence whose interval leaves out 0.
    Identical predictions give the interval [0, 0] and p = 1.
    """
    check_confidence(confidence)
    m = a.metric(metric)
    ra, rb = resample([a, b], m, n_resamples, seed)
    diff = ra.minus(rb)
    low, high = diff.interval(confidence)
    method = f"paired bootstrap BCa, {n_resamples} resamples, seed {seed}"
    interval = Interval(diff.estimate, low, high, len(a), method, confidence)
    return Difference(interval, diff.p_value(0.0), "paired bootstrap BCa")


def paired_difference(
    a: Predictions,
    b: Predictions,
    metric: str,
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    confidence: float = 0.95,
) -> Difference:
    """``metric(a) − metric(b)`` on the same test images as featpipe reports every paired
    comparison: the paired bootstrap's BCa interval of the difference, and p from McNemar's
    exact test for accuracy (exact, on the discordant images) or the paired bootstrap's for
    every other metric. ``test`` names which p it is."""
    difference = paired_bootstrap(
        a, b, metric, n_resamples=n_resamples, seed=seed, confidence=confidence
    )
    if a.metric(metric).name == "accuracy":
        return Difference(difference.interval, mcnemar(a, b).p, "McNemar exact")
    return difference

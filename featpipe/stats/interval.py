"""The one interval type, and the Wilson interval of a proportion.

Every score featpipe.stats reports is an :class:`Interval`: the estimate, its bounds, how many
units it rests on (test images, or splits) and how it was computed, so that a printed score
always carries its n and its uncertainty (``0.682 [0.53, 0.81] (n=44)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from featpipe.errors import ArgumentError
from featpipe.stats.special import ndtri


@dataclass(frozen=True)
class Interval:
    """An estimate with a two-sided confidence interval.

    ``n`` counts the independent units the interval rests on, named by ``unit``: test images
    for a score on one test set, splits for a summary across re-drawn splits.
    ``method`` says how the bounds were computed (``wilson``, ``bootstrap BCa, 2000 resamples,
    seed 0``, ...).
    """

    estimate: float
    low: float
    high: float
    n: int
    method: str
    confidence: float = 0.95
    unit: str = "images"

    def __str__(self) -> str:
        return f"{self.format()} ({self.count()})"

    def count(self) -> str:
        """``n=44`` for test images, ``5 splits`` for anything else."""
        return f"n={self.n}" if self.unit == "images" else f"{self.n} {self.unit}"

    def format(self, scale: float = 1.0, extra_digit: bool = True, unit: str = "") -> str:
        """``estimate [low, high]``, the values times ``scale`` (100 for points), ``unit``
        after the estimate (``4.1 points [1.2, 7.0]``).

        The bounds get the decimals that show the interval's width to two significant digits
        (more would be noise the interval itself disowns); the estimate one more when
        ``extra_digit`` (so that a wide interval does not hide which way it leans).
        """
        low, high, estimate = self.low * scale, self.high * scale, self.estimate * scale
        digits = decimals(high - low)
        e = digits + 1 if extra_digit else digits
        return f"{estimate:.{e}f}{unit} [{low:.{digits}f}, {high:.{digits}f}]"

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


def decimals(width: float) -> int:
    """Decimals that show ``width`` to two significant digits (3 for a zero or unknown width)."""
    if not (math.isfinite(width) and width > 0):
        return 3
    return max(0, 1 - math.floor(math.log10(width)))


def z_value(confidence: float) -> float:
    """The standard normal quantile of a two-sided ``confidence`` (1.96 for 0.95)."""
    check_confidence(confidence)
    return float(ndtri(0.5 + confidence / 2))


def check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ArgumentError("confidence", f"{confidence}: give a level between 0 and 1, e.g. 0.95")


def wilson(k: int, n: int, confidence: float = 0.95) -> Interval:
    """The Wilson score interval of ``k`` successes in ``n`` trials (accuracy: correct images).

    Wilson rather than the textbook Wald interval p ± z·√(p(1−p)/n): Wald's coverage collapses
    near 0 and 1 and for small n (at n = 44 and accuracy near 0.9 it covers the truth about 90%
    of the time, not 95%), and it gives zero width at 0 or n correct. Wilson inverts the score
    test, stays inside [0, 1] and keeps close to its nominal coverage on the test-set sizes
    featpipe sees (Brown, Cai & DasGupta 2001 recommend it for n < 40 and beyond).
    """
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ArgumentError("n", f"{n}: the number of trials must be a positive whole number")
    if isinstance(k, bool) or int(k) != k or not 0 <= k <= n:
        raise ArgumentError("k", f"{k}: give a whole number of successes between 0 and n={n}")
    z = z_value(confidence)
    p = k / n
    shrink = 1 + z * z / n
    center = (p + z * z / (2 * n)) / shrink
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / shrink
    # at k = 0 or n the bound is exactly 0 or 1; rounding may step past it by 1e-17
    low, high = max(0.0, center - half), min(1.0, center + half)
    return Interval(p, low, high, int(n), "wilson", confidence)

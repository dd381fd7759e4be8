"""The Wilson interval against scipy, and its coverage by simulation; how an interval prints."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from featpipe.errors import ArgumentError
from featpipe.stats import Interval, wilson


@pytest.mark.parametrize("n", [1, 7, 44, 500])
@pytest.mark.parametrize("confidence", [0.95, 0.9])
def test_wilson_equals_scipy_including_none_and_all_correct(n: int, confidence: float) -> None:
    for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
        ours = wilson(k, n, confidence)
        theirs = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
        assert ours.low == pytest.approx(theirs.low, abs=1e-12)
        assert ours.high == pytest.approx(theirs.high, abs=1e-12)
        assert ours.estimate == k / n and ours.n == n


@pytest.mark.parametrize("n", [44, 500])
def test_wilson_covers_the_true_accuracy_95_percent_of_the_time(n: int) -> None:
    """4,000 simulated test sets, each of a known accuracy drawn from [0.85, 0.95] (averaging
    over accuracies smooths the binomial's sawtooth coverage). A Wald interval covers about
    90% at n = 44 here and fails this test."""
    rng = np.random.default_rng(n)
    truth = rng.uniform(0.85, 0.95, size=4000)
    correct = rng.binomial(n, truth)
    covered = [wilson(int(k), n).contains(p) for k, p in zip(correct, truth, strict=True)]
    assert 0.93 <= np.mean(covered) <= 0.97


def test_interval_prints_estimate_bounds_and_n() -> None:
    assert str(Interval(0.682, 0.53, 0.81, 44, "wilson")) == "0.682 [0.53, 0.81] (n=44)"
    # a narrow interval keeps two significant digits of its width
    assert str(Interval(0.8197, 0.8121, 0.8272, 10000, "x")) == "0.8197 [0.812, 0.827] (n=10000)"
    splits = Interval(0.812, 0.74, 0.88, 5, "t", unit="splits")
    assert str(splits) == "0.812 [0.74, 0.88] (5 splits)"
    assert Interval(0.041, 0.012, 0.070, 44, "x").format(100, extra_digit=False) == "4.1 [1.2, 7.0]"


@pytest.mark.parametrize(
    ("k", "n", "param"), [(-1, 10, "k"), (11, 10, "k"), (1, 0, "n"), (0.5, 10, "k")]
)
def test_wilson_rejects_impossible_counts(k, n, param: str) -> None:
    with pytest.raises(ArgumentError) as err:
        wilson(k, n)
    assert err.value.param == param


def test_confidence_outside_zero_one_is_refused() -> None:
    with pytest.raises(ArgumentError, match="confidence"):
        wilson(3, 10, confidence=95)

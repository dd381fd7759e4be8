"""Few-shot curve points: the interval covers the truth when both the training draws and the
test set vary."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from featpipe.errors import ArgumentError
from featpipe.stats import Predictions, few_shot_interval

# A probit model of a few-shot point: draw d and test image i give a right answer with
# probability Φ(MU + a_d + b_i), a_d ~ N(0, DRAW²) (how lucky the drawn training images were),
# b_i ~ N(0, IMAGE²) (how easy the image is). The expected accuracy over draws and test sets
# is then Φ(MU / √(1 + DRAW² + IMAGE²)).
MU, DRAW, IMAGE = 1.0, 0.15, 0.8
TRUTH = scipy_stats.norm.cdf(MU / math.sqrt(1 + DRAW**2 + IMAGE**2))


def curve_point(rng: np.random.Generator, draws: int, n: int) -> list[Predictions]:
    a = rng.normal(0, DRAW, size=(draws, 1))
    b = rng.normal(0, IMAGE, size=(1, n))
    right = rng.random((draws, n)) < scipy_stats.norm.cdf(MU + a + b)
    y = rng.integers(0, 2, n)
    return [Predictions.classification(y, np.where(r, y, 1 - y)) for r in right]


def test_the_interval_covers_the_expected_accuracy_over_draws_and_test_sets() -> None:
    """1,000 simulated points of 5 draws on 100 test images, where the draws and the test set
    contribute about equally. Either part alone covers 78-89% of the time here, both
    variances with a normal quantile 93%; the interval must cover 93-97%."""
    rng = np.random.default_rng(0)
    covered = [
        few_shot_interval(curve_point(rng, 5, 100), "accuracy", n_resamples=1000, seed=s).contains(
            TRUTH
        )
        for s in range(1000)
    ]
    assert 0.93 <= np.mean(covered) <= 0.97


def test_one_draw_or_identical_draws_leave_the_test_set_alone() -> None:
    [one] = curve_point(np.random.default_rng(1), 1, 300)
    alone = few_shot_interval([one], "accuracy")
    assert alone.estimate == np.mean(one.y == one.pred)
    # the test set's part: about the binomial standard error
    se = math.sqrt(alone.estimate * (1 - alone.estimate) / 300)
    assert (alone.high - alone.low) / 2 == pytest.approx(1.96 * se, rel=0.1)
    # five identical draws: no draw-to-draw part, and the same test-set part
    same = few_shot_interval([one] * 5, "accuracy")
    assert (same.low, same.high) == pytest.approx((alone.low, alone.high), rel=1e-9)


def test_draws_must_share_the_test_images() -> None:
    rng = np.random.default_rng(2)
    first = curve_point(rng, 1, 50)[0]
    other = curve_point(rng, 1, 50)[0]
    with pytest.raises(ArgumentError, match="same test images"):
        few_shot_interval([first, other], "accuracy")
    with pytest.raises(ArgumentError, match="at least one draw"):
        few_shot_interval([], "accuracy")


def test_the_test_set_part_is_what_the_draws_share() -> None:
    """Draws right or wrong independently on every image (no image harder than another):
    the test set's luck is nobody's in common, so the interval is the draws' t interval.
    Counting each draw's own luck on the images again (the variance of the draws' mean over
    resamples) would widen it by about a fifth here."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    draws = [
        Predictions.classification(y, np.where(rng.random(300) < 0.7, y, 1 - y)) for _ in range(5)
    ]
    scores = [np.mean(p.y == p.pred) for p in draws]
    low, high = scipy_stats.t.interval(0.95, 4, loc=np.mean(scores), scale=scipy_stats.sem(scores))
    point = few_shot_interval(draws, "accuracy")
    assert (point.high - point.low) == pytest.approx(high - low, rel=0.05)

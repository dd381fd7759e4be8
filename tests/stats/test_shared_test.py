"""Repeated splits on one fixed test split: the two-way bootstrap over splits and test images.

Every split is scored on the same test images, so their luck is common to all R scores; a t
interval over the splits cannot see it. These tests check the two-way bootstrap against
scipy's bootstrap where it must reduce to it, its coverage where the truth is known (and that
the t over splits does not cover it: the bug the two-way bootstrap fixes), and the ranking's
ties.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from featpipe.errors import ArgumentError
from featpipe.stats import (
    across_splits,
    compare_shared_test_to_best,
    paired_shared_test,
    shared_test_summary,
)

FLIPS = 0.03


def shared(rng: np.random.Generator, n: int, r: int, accuracy: float = 0.8) -> np.ndarray:
    """R splits × n shared test images: the test set's own luck (each image right with chance
    ``accuracy``, drawn once), then each split flips a few images (another val carve-out moves
    a few decisions, :data:`FLIPS`). Expected accuracy: ``truth(accuracy)``."""
    base = rng.random(n) < accuracy
    return np.where(rng.random((r, n)) < FLIPS, ~base, base).astype(np.float64)


def truth(accuracy: float) -> float:
    return accuracy * (1 - FLIPS) + (1 - accuracy) * FLIPS


def test_identical_splits_reduce_to_the_image_bootstrap_of_one_split() -> None:
    """With R copies of one split, resampling splits changes nothing: the interval is the
    percentile bootstrap of the mean over test images (scipy's, within Monte-Carlo error)."""
    row = (np.random.default_rng(0).random(300) < 0.7).astype(np.float64)
    summary = shared_test_summary(np.tile(row, (5, 1)), n_resamples=4000)
    oracle = scipy_stats.bootstrap(
        (row,), np.mean, n_resamples=4000, method="percentile", random_state=1
    ).confidence_interval
    assert summary.mean == pytest.approx(row.mean()) and summary.std == 0
    assert summary.interval.low == pytest.approx(oracle.low, abs=0.006)
    assert summary.interval.high == pytest.approx(oracle.high, abs=0.006)
    assert "two-way bootstrap over 5 splits × 300 shared test images" in summary.interval.method


def test_paired_identical_splits_reduce_to_the_paired_image_bootstrap() -> None:
    rng = np.random.default_rng(1)
    a = (rng.random(400) < 0.8).astype(np.float64)
    b = np.where(rng.random(400) < 0.06, 1 - a, a)
    d = paired_shared_test(np.tile(a, (4, 1)), np.tile(b, (4, 1)), n_resamples=4000)
    oracle = scipy_stats.bootstrap(
        (a - b,), np.mean, n_resamples=4000, method="percentile", random_state=2
    ).confidence_interval
    assert d.interval.estimate == pytest.approx((a - b).mean())
    assert d.interval.low == pytest.approx(oracle.low, abs=0.006)
    assert d.interval.high == pytest.approx(oracle.high, abs=0.006)


@pytest.mark.parametrize("n", [44, 500])
def test_coverage_of_the_expected_accuracy_and_the_t_over_splits_misses_it(n: int) -> None:
    """Fresh test sets of known expected accuracy, 5 splits each: the two-way intervals cover
    it about 95% of the time; the t over splits, blind to the shared test images' luck, covers
    it less than half of the time. (Where the splits flip many images the two-way bootstrap is
    conservative: it counts their noise in both directions of resampling.)"""
    rng = np.random.default_rng(n)
    trials, covered, t_covered = 600, 0, 0
    for _ in range(trials):
        values = shared(rng, n, 5)
        two_way = shared_test_summary(values, n_resamples=1000, seed=int(rng.integers(1 << 30)))
        covered += two_way.interval.contains(truth(0.8))
        t_covered += across_splits(values.mean(axis=1)).interval.contains(truth(0.8))
    assert 0.93 <= covered / trials <= 0.97
    assert t_covered / trials < 0.6


def test_a_difference_on_shared_test_images_is_not_overstated() -> None:
    """Two models three images apart on 600 shared test images, in every split: the t over
    the splits' differences calls it certain (the same +0.5 points ten times), the two-way
    bootstrap sees that it rests on three images."""
    from featpipe.stats import paired_splits

    b = shared(np.random.default_rng(3), 600, 10, 0.85)
    a = b.copy()
    a[:, np.flatnonzero((b == 0).all(axis=0))[:3]] = 1  # a gets 3 more right in every split
    t = paired_splits(a.mean(axis=1), b.mean(axis=1))
    two_way = paired_shared_test(a, b)
    assert t.p < 0.001 and t.interval.estimate == pytest.approx(3 / 600)
    assert two_way.p > 0.05 and two_way.interval.low <= 0


def test_a_model_against_itself_is_tied_with_p_1() -> None:
    values = shared(np.random.default_rng(4), 100, 3)
    ranking = compare_shared_test_to_best({"a": values, "a again": values.copy()}, "accuracy")
    [comparison] = ranking.comparisons
    assert comparison.tied and comparison.p == 1 and comparison.p_holm == 1
    assert (comparison.worse_by.low, comparison.worse_by.high) == (0, 0)
    assert str(ranking) == "a and a again are tied"


def test_a_clear_difference_is_found() -> None:
    rng = np.random.default_rng(5)
    good, bad = shared(rng, 500, 5, 0.9), shared(rng, 500, 5, 0.6)
    ranking = compare_shared_test_to_best({"bad": bad, "good": good}, "accuracy")
    [comparison] = ranking.comparisons
    assert ranking.best == "good" and not comparison.tied and comparison.p_holm < 0.001


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: shared_test_summary([[1, 0, 1]]), "at least two"),
        (lambda: shared_test_summary([[1, 0], [0.5, 2]]), "between 0 and 1"),
        (lambda: paired_shared_test([[1, 0], [1, 1]], [[1, 0, 1], [1, 1, 1]]), "image by image"),
        (lambda: shared_test_summary([[1, 0], [1, 1]], n_resamples=10), "at least"),
        (
            lambda: compare_shared_test_to_best({"a": [[1], [0]], "b": [[1], [1]]}, "macro_f1"),
            "only accuracy",
        ),
    ],
)
def test_bad_input_is_refused(call, match: str) -> None:
    with pytest.raises(ArgumentError, match=match):
        call()

"""Repeated splits: the t interval and the paired t-test against scipy, with and without
Nadeau and Bengio's correction."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from featpipe.errors import ArgumentError
from featpipe.stats import across_splits, paired_splits

A = [0.81, 0.79, 0.84, 0.80, 0.82, 0.78]
B = [0.78, 0.79, 0.80, 0.77, 0.80, 0.79]


def test_across_splits_is_the_t_interval_of_the_split_scores() -> None:
    summary = across_splits(A)
    low, high = scipy_stats.t.interval(0.95, len(A) - 1, loc=np.mean(A), scale=scipy_stats.sem(A))
    assert summary.mean == pytest.approx(np.mean(A))
    assert summary.std == pytest.approx(np.std(A, ddof=1))
    assert (summary.interval.low, summary.interval.high) == pytest.approx((low, high))
    assert summary.interval.n == 6 and str(summary.interval).endswith("(6 splits)")


def test_the_correction_widens_by_the_test_to_train_ratio() -> None:
    summary = across_splits(A, n_test=200, n_train=800)
    scale = np.std(A, ddof=1) * math.sqrt(1 / 6 + 200 / 800)
    low, high = scipy_stats.t.interval(0.95, 5, loc=np.mean(A), scale=scale)
    assert (summary.interval.low, summary.interval.high) == pytest.approx((low, high))
    assert "Nadeau & Bengio" in summary.interval.method


def test_paired_splits_is_the_paired_t_test() -> None:
    d = paired_splits(A, B)
    assert d.p == pytest.approx(scipy_stats.ttest_rel(A, B).pvalue)
    diffs = np.subtract(A, B)
    low, high = scipy_stats.t.interval(0.95, 5, loc=diffs.mean(), scale=scipy_stats.sem(diffs))
    assert (d.interval.low, d.interval.high) == pytest.approx((low, high))
    corrected = paired_splits(A, B, n_test=200, n_train=800)
    t = diffs.mean() / (diffs.std(ddof=1) * math.sqrt(1 / 6 + 200 / 800))
    assert corrected.p == pytest.approx(2 * scipy_stats.t.sf(abs(t), 5))
    assert corrected.p > d.p


def test_identical_split_scores_are_tied() -> None:
    d = paired_splits(A, A)
    assert (d.interval.low, d.interval.high, d.p) == (0.0, 0.0, 1.0)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: across_splits([0.8]), "at least two"),
        (lambda: across_splits([0.8, float("nan")]), "finite"),
        (lambda: across_splits(A, n_test=100), "together"),
        (lambda: paired_splits(A, B[:-1]), "split by split"),
    ],
)
def test_bad_split_input_is_refused(call, match: str) -> None:
    with pytest.raises(ArgumentError, match=match):
        call()

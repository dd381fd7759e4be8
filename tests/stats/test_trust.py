"""Chance levels against predictors that never look at the image; the below-chance and the
validation–test gap warnings at their thresholds."""

from __future__ import annotations

import numpy as np
import pytest

from featpipe.errors import ArgumentError
from featpipe.heads import metrics
from featpipe.stats import Interval, below_chance, chance_level, gap_warning, wilson


def test_chance_on_a_balanced_test_is_one_over_the_classes() -> None:
    y = np.repeat(np.arange(4), 25)
    for metric in ("accuracy", "balanced_accuracy", "macro_f1"):
        assert chance_level(metric, y) == 0.25
    assert chance_level("auroc", y[y < 2]) == 0.5


def test_chance_is_what_image_blind_predictors_score() -> None:
    rng = np.random.default_rng(0)
    y = rng.choice(3, size=200_000, p=[0.7, 0.2, 0.1])
    majority = np.zeros_like(y)
    blind = rng.choice(3, size=len(y), p=np.bincount(y) / len(y))  # at the class frequencies
    scored = {
        name: metrics.classification(y, pred, 3)
        for name, pred in (("majority", majority), ("blind", blind))
    }
    assert chance_level("accuracy", y) == scored["majority"]["accuracy"]
    assert chance_level("balanced_accuracy", y) == pytest.approx(1 / 3)
    assert scored["majority"]["balanced_accuracy"] == pytest.approx(1 / 3)
    assert chance_level("macro_f1", y) == pytest.approx(scored["blind"]["macro_f1"], abs=0.005)
    assert scored["majority"]["macro_f1"] < chance_level("macro_f1", y)
    # a class the test set lacks still counts in macro-F1 (it scores 0), not in balanced accuracy
    assert chance_level("macro_f1", y, n_classes=4) == 0.25
    assert chance_level("balanced_accuracy", y, n_classes=4) == pytest.approx(1 / 3)


def test_regression_chance_is_predicting_the_mean_or_the_median() -> None:
    y = np.random.default_rng(1).gamma(2.0, size=1001)
    mean, median = np.full_like(y, y.mean()), np.full_like(y, np.median(y))
    assert chance_level("r2", y) == 0.0 == pytest.approx(metrics.regression(y, mean)["r2"])
    assert chance_level("mse", y) == pytest.approx(metrics.regression(y, mean)["mse"])
    assert chance_level("mae", y) == pytest.approx(metrics.regression(y, median)["mae"])
    for shift in (-0.1, 0.1):  # the median is the best constant for MAE
        assert metrics.regression(y, median + shift)["mae"] > chance_level("mae", y)


def test_below_chance_speaks_only_when_the_whole_interval_is_below() -> None:
    line = below_chance(wilson(30, 150), 0.5, "accuracy")
    assert line is not None and line.startswith("accuracy 0.200 [0.14, 0.27] (n=150) is below")
    assert below_chance(wilson(70, 150), 0.5, "accuracy") is None  # 0.467, but 0.5 inside
    assert below_chance(wilson(120, 150), 0.5, "accuracy") is None
    error = Interval(1.9, 1.7, 2.1, 80, "bootstrap")
    assert "above chance" in below_chance(error, 1.5, "mae")
    assert below_chance(error, 1.8, "mae") is None


def symmetric(estimate: float, se: float, n: int = 100) -> Interval:
    return Interval(estimate, estimate - 1.96 * se, estimate + 1.96 * se, n, "normal")


def test_gap_warning_at_the_edge_of_what_the_intervals_allow() -> None:
    """Standard errors 0.02 and 0.015 allow a gap of 1.96 · 0.025 = 0.049."""
    val = symmetric(0.90, 0.02)
    line = gap_warning(val, symmetric(0.85, 0.015), "accuracy")
    assert line is not None and "differ by 5 points" in line and "selection" in line
    assert gap_warning(val, symmetric(0.852, 0.015), "accuracy") is None
    # test well above validation: the splits differ
    line = gap_warning(symmetric(0.80, 0.02), symmetric(0.90, 0.015), "accuracy")
    assert line is not None and "validation and test differ" in line
    # an error metric: validation looking better means a lower MAE
    line = gap_warning(symmetric(1.0, 0.05), symmetric(1.3, 0.05), "mae")
    assert line is not None and "selection" in line and "points" not in line


def test_unknown_metrics_and_bad_labels_are_refused() -> None:
    with pytest.raises(ArgumentError, match="metric"):
        chance_level("f2", [0, 1])
    with pytest.raises(ArgumentError, match="y_true"):
        chance_level("accuracy", [0.5, 1])
    with pytest.raises(ArgumentError, match="n_classes"):
        chance_level("macro_f1", [0, 1, 2], n_classes=2)

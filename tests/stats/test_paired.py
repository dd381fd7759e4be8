"""Two models on the same images: McNemar's exact test against scipy's binomial test, the
paired bootstrap against scipy's paired BCa bootstrap, and a model against itself."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from featpipe.errors import ArgumentError
from featpipe.stats import Predictions, mcnemar, paired_bootstrap, paired_difference
from oracles import N_RESAMPLES, assert_agrees_with_scipy_bca, classifier


def pair(rng: np.random.Generator, n: int, right_b: float, copy: float) -> list[Predictions]:
    """Model a is right 75% of the time; b copies a's prediction with probability ``copy``
    (correlated, as two heads on one backbone are) and is otherwise right with ``right_b``."""
    y, pred_a = classifier(rng, n, [0.5, 0.3, 0.2], 0.7)
    own = np.where(rng.random(n) < right_b, y, (y + 1) % 3)
    pred_b = np.where(rng.random(n) < copy, pred_a, own)
    return [Predictions.classification(y, p, 3) for p in (pred_a, pred_b)]


@pytest.mark.parametrize(
    ("n", "right_b", "copy"), [(44, 0.6, 0.5), (300, 0.8, 0.3), (2000, 0.7, 0.9)]
)
def test_mcnemar_equals_a_two_sided_binomial_test_on_the_discordant_images(
    n: int, right_b: float, copy: float
) -> None:
    a, b = pair(np.random.default_rng(n), n, right_b, copy)
    right_a, right_b_ = a.pred == a.y, b.pred == b.y
    only_a, only_b = int(np.sum(right_a & ~right_b_)), int(np.sum(right_b_ & ~right_a))
    result = mcnemar(a, b)
    assert (result.only_a, result.only_b, result.n) == (only_a, only_b, n)
    expected = scipy_stats.binomtest(only_a, only_a + only_b, 0.5).pvalue
    assert result.p == pytest.approx(expected, rel=1e-9)
    assert mcnemar(b, a).p == pytest.approx(result.p, rel=1e-12)


@pytest.mark.parametrize(("only_a", "only_b"), [(0, 6), (7, 0), (5, 5), (3, 4), (12, 30)])
def test_mcnemar_on_constructed_disagreements(only_a: int, only_b: int) -> None:
    # 50 images of 2 classes both models get right, then the discordant ones
    y = np.zeros(50 + only_a + only_b, dtype=int)
    pred_a = np.r_[np.zeros(50 + only_a, dtype=int), np.ones(only_b, dtype=int)]
    pred_b = np.r_[np.zeros(50, dtype=int), np.ones(only_a, dtype=int), np.zeros(only_b, int)]
    result = mcnemar(
        Predictions.classification(y, pred_a, 2), Predictions.classification(y, pred_b, 2)
    )
    assert (result.only_a, result.only_b) == (only_a, only_b)
    expected = scipy_stats.binomtest(only_a, only_a + only_b, 0.5).pvalue
    assert result.p == pytest.approx(expected, rel=1e-9)


def test_a_model_compared_with_itself_is_tied_with_p_1() -> None:
    a, _ = pair(np.random.default_rng(1), 200, 0.7, 0.5)
    same = Predictions.classification(a.y, a.pred.copy(), 3)  # the same backbone, another name
    assert mcnemar(a, same).p == 1.0
    for metric in ("accuracy", "macro_f1", "balanced_accuracy"):
        d = paired_bootstrap(a, same, metric)
        assert (d.interval.estimate, d.interval.low, d.interval.high, d.p) == (0, 0, 0, 1.0)


def paired_cases(rng: np.random.Generator):
    a, b = pair(rng, 400, 0.7, 0.6)
    yield "accuracy", a, b, (a.pred == a.y, b.pred == b.y), 1 / 400
    # correlated, skewed absolute errors: the pairing narrows the interval a lot
    truth = rng.normal(size=300)
    shared = rng.lognormal(0, 1, size=300)
    err_a = shared * rng.choice([-1, 1], size=300)
    err_b = err_a + rng.normal(0, 0.3, size=300)
    yield (
        "mae",
        Predictions.regression(truth, truth + err_a),
        Predictions.regression(truth, truth + err_b),
        (np.abs(err_a), np.abs(err_b)),
        0.0,
    )


@pytest.mark.parametrize("index", range(2))
def test_paired_bootstrap_agrees_with_scipy_paired_bca_within_monte_carlo_error(
    index: int,
) -> None:
    name, a, b, data, step = list(paired_cases(np.random.default_rng(12)))[index]
    ours = paired_bootstrap(a, b, name, n_resamples=N_RESAMPLES, seed=1).interval
    assert_agrees_with_scipy_bca(
        ours, data, lambda u, v, axis=-1: np.mean(u, axis=axis) - np.mean(v, axis=axis), step
    )


def test_the_p_value_is_where_the_interval_reaches_zero() -> None:
    """p inverts the BCa interval: at confidence 1 − p one end of the interval is 0 (up to
    the gaps between neighbouring resamples), and p < 0.05 exactly when the 95% interval
    leaves 0 out. The case is skewed (model b now and then makes a far larger error), so BCa's
    acceleration is far from 0 (about −0.09) and a p that ignored it would miss."""
    rng = np.random.default_rng(3)
    truth, err = rng.normal(size=200), rng.normal(size=200)
    jump = (rng.random(200) < 0.05) * rng.lognormal(0, 1.5, size=200)
    a = Predictions.regression(truth, truth + err)
    b = Predictions.regression(truth, truth + (np.abs(err) + jump - 0.08) * np.sign(err))
    options = {"seed": 4, "n_resamples": 20_000}  # resamples close together around 0
    d = paired_bootstrap(a, b, "mae", **options)
    assert 0.01 < d.p < 0.5  # a case where the inversion is not at a clipped end
    at_p = paired_bootstrap(a, b, "mae", confidence=1 - d.p, **options).interval
    se = (d.interval.high - d.interval.low) / 3.92
    assert min(abs(at_p.low), abs(at_p.high)) < 0.01 * se
    for seed in range(6):
        a, b = pair(np.random.default_rng(seed), 150, 0.72, 0.5)
        d = paired_bootstrap(a, b, "macro_f1", seed=seed)
        assert (d.p < 0.05) == (not d.interval.contains(0.0))


def test_paired_comparisons_need_the_same_test_images() -> None:
    a, b = pair(np.random.default_rng(2), 50, 0.7, 0.5)
    other = Predictions.classification(np.roll(a.y, 1), b.pred, 3)
    for call in (lambda: mcnemar(a, other), lambda: paired_bootstrap(a, other, "accuracy")):
        with pytest.raises(ArgumentError, match="same test images"):
            call()
    with pytest.raises(ArgumentError, match="classifiers"):
        mcnemar(
            Predictions.regression([1.0, 2.0], [1.0, 2.5]),
            Predictions.regression([1.0, 2.0], [1.0, 2.0]),
        )


def test_paired_difference_takes_mcnemar_s_p_for_accuracy_and_the_bootstrap_s_otherwise() -> None:
    a, b = pair(np.random.default_rng(5), 300, 0.6, 0.4)
    d = paired_difference(a, b, "accuracy", seed=2)
    boot = paired_bootstrap(a, b, "accuracy", seed=2)
    assert d.interval == boot.interval and d.test == "McNemar exact"
    assert d.p == mcnemar(a, b).p != boot.p
    assert d.interval.estimate == pytest.approx(np.mean(a.pred == a.y) - np.mean(b.pred == b.y))
    assert paired_difference(a, b, "macro_f1", seed=2) == paired_bootstrap(a, b, "macro_f1", seed=2)

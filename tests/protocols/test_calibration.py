"""Calibration scores against direct computations; temperature scaling on seeded logits."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import log_loss

from featpipe.errors import ArgumentError
from featpipe.protocols.calibration import (
    brier_score,
    calibration_scores,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability,
    softmax,
)

N_CLASSES = 5


def sampled(n: int, scale: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``scale`` times those the labels were drawn from: calibrated at scale 1,
    over-confident above it."""
    rng = np.random.default_rng(seed)
    true_logits = 2.0 * rng.normal(size=(n, N_CLASSES))
    p = softmax(true_logits)
    y = (rng.random((n, 1)) > np.cumsum(p, axis=1)).sum(axis=1)
    return scale * true_logits, y


def ece_by_hand(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> tuple[float, list]:
    """Guo et al.'s ECE as a loop over the bins (lo, hi], and each bin's (conf, acc, count)."""
    confidence, prediction = probs.max(axis=1), probs.argmax(axis=1)
    ece, bins = 0.0, []
    for m in range(n_bins):
        lo, hi = m / n_bins, (m + 1) / n_bins
        members = [i for i in range(len(y)) if lo < confidence[i] <= hi]
        if not members:
            bins.append((None, None, 0))
            continue
        acc = sum(prediction[i] == y[i] for i in members) / len(members)
        conf = sum(confidence[i] for i in members) / len(members)
        ece += len(members) / len(y) * abs(acc - conf)
        bins.append((conf, acc, len(members)))
    return ece, bins


def test_ece_and_reliability_equal_a_loop_over_the_bins() -> None:
    logits, y = sampled(3000, 2.5, seed=0)
    probs = softmax(logits)
    probs[:50] = np.eye(N_CLASSES)[y[:50] % N_CLASSES]  # confidence exactly 1: the last bin
    expected, bins = ece_by_hand(probs, y)
    assert expected_calibration_error(probs, y) == pytest.approx(expected, abs=1e-12)
    diagram = reliability(probs, y)
    assert diagram.count.tolist() == [count for *_, count in bins]
    for m, (conf, acc, count) in enumerate(bins):
        if count:
            assert diagram.confidence[m] == pytest.approx(conf, abs=1e-12)
            assert diagram.accuracy[m] == pytest.approx(acc, abs=1e-12)
        else:
            assert np.isnan(diagram.confidence[m]) and np.isnan(diagram.accuracy[m])
    assert expected > 0.05  # over-confident logits are visibly off


def test_nll_and_brier_equal_their_formulas() -> None:
    logits, y = sampled(500, 1.0, seed=1)
    probs = softmax(logits)
    assert negative_log_likelihood(probs, y) == pytest.approx(
        log_loss(y, probs, labels=range(N_CLASSES)), abs=1e-12
    )
    by_hand = np.mean(
        [sum((probs[i, c] - (c == y[i])) ** 2 for c in range(N_CLASSES)) for i in range(len(y))]
    )
    assert brier_score(probs, y) == pytest.approx(by_hand, abs=1e-12)
    scores = calibration_scores(probs, y)
    assert (scores.nll, scores.brier, scores.ece) == (
        negative_log_likelihood(probs, y),
        brier_score(probs, y),
        expected_calibration_error(probs, y),
    )
    # a zero probability on the true class counts as float64's epsilon, not as infinity
    assert negative_log_likelihood(np.array([[1.0, 0.0]]), np.array([1])) == pytest.approx(
        -np.log(np.finfo(np.float64).eps)
    )


def test_temperature_scaling_undoes_over_confidence_on_held_out_data() -> None:
    val_logits, val_y = sampled(4000, 3.0, seed=2)
    test_logits, test_y = sampled(4000, 3.0, seed=3)
    fit = fit_temperature(val_logits, val_y)
    assert 2.7 < fit.temperature < 3.3
    assert fit.nll_after < fit.nll_before
    before = calibration_scores(softmax(test_logits), test_y)
    after = calibration_scores(softmax(test_logits, fit.temperature), test_y)
    assert after.nll < before.nll - 0.1
    assert after.ece < before.ece / 2
    assert after.brier < before.brier
    assert fit_temperature(val_logits, val_y) == fit  # deterministic


def test_temperature_of_calibrated_logits_is_one() -> None:
    logits, y = sampled(20000, 1.0, seed=4)
    assert fit_temperature(logits, y).temperature == pytest.approx(1.0, abs=0.05)


def test_temperature_is_the_nll_minimum() -> None:
    logits, y = sampled(2000, 1.7, seed=5)
    fit = fit_temperature(logits, y)
    grid = np.exp(np.linspace(np.log(0.2), np.log(10), 400))
    nll = [negative_log_likelihood(softmax(logits, t), y) for t in grid]
    assert fit.temperature == pytest.approx(grid[int(np.argmin(nll))], rel=0.02)
    assert fit.nll_after == pytest.approx(min(nll), abs=1e-5)
    assert fit.nll_before == pytest.approx(negative_log_likelihood(softmax(logits), y), abs=1e-12)


def test_bad_input_names_the_parameter() -> None:
    logits, y = sampled(10, 1.0, seed=6)
    with pytest.raises(ArgumentError, match=r"^probs must be probabilities"):
        expected_calibration_error(logits, y)
    with pytest.raises(ArgumentError, match=r"^y holds classes outside 0..4"):
        brier_score(softmax(logits), y + 5)
    with pytest.raises(ArgumentError, match=r"^bounds must be 0 < low < high"):
        fit_temperature(logits, y, bounds=(0.0, 10.0))
    with pytest.raises(ArgumentError, match=r"^n_bins must be an integer of at least 1, got 0"):
        reliability(softmax(logits), y, n_bins=0)

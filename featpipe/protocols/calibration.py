"""How far a classifier's probabilities can be taken at their word, and temperature scaling.

* ECE, the expected calibration error of Guo, Pleiss, Sun and Weinberger, "On Calibration of
  Modern Neural Networks" (ICML 2017): the confidence of a prediction is its top probability;
  the predictions fall in 15 equal-width confidence bins ``(m/15, (m+1)/15]``, and
  ``ECE = Σ_bins |bin| / n · |accuracy(bin) − mean confidence(bin)|``. The per-bin figures are
  the reliability diagram's data (:class:`Reliability`).
* NLL: the mean of −log p(true class).
* Brier score, multi-class as Brier defined it ("Verification of forecasts expressed in terms
  of probability", 1950): the mean over samples of ``Σ_c (p_c − 1[c = y])²``, 0 to 2.
* Temperature scaling (Guo et al. 2017, §4.2): one scalar T > 0 divides the logits, fitted by
  minimising the NLL on validation logits; it changes no prediction, only the confidence.

Numpy (and scipy for the fit) only: no torch import.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from featpipe.errors import ArgumentError
from featpipe.protocols.arrays import at_least_one, features, labels

ECE_BINS = 15
TEMPERATURE_BOUNDS = (0.01, 100.0)


@dataclass(frozen=True)
class Reliability:
    """The reliability diagram's data: bin ``m`` holds the predictions whose confidence lies in
    ``(edges[m], edges[m + 1]]``; ``confidence`` and ``accuracy`` are its means (NaN where the
    bin is empty), ``count`` its size."""

    edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray

    @property
    def ece(self) -> float:
        """Guo et al.'s ECE: the bins' |accuracy − confidence|, weighted by their share."""
        filled = self.count > 0
        gaps = np.abs(self.accuracy[filled] - self.confidence[filled])
        return float((self.count[filled] * gaps).sum() / self.count.sum())


@dataclass(frozen=True)
class CalibrationScores:
    """ECE, NLL and Brier score of one set of probabilities, and the diagram behind the ECE."""

    ece: float
    nll: float
    brier: float
    reliability: Reliability


@dataclass(frozen=True)
class TemperatureFit:
    """The fitted temperature and the NLL of the logits it was fitted on, before (T = 1) and
    after dividing by it."""

    temperature: float
    nll_before: float
    nll_after: float


def reliability(probs: np.ndarray, y: np.ndarray, n_bins: int = ECE_BINS) -> Reliability:
    """Confidence, accuracy and count per equal-width confidence bin (Guo et al. 2017)."""
    return _reliability(*_probabilities(probs, y), n_bins)


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Guo et al.'s ECE over ``n_bins`` equal-width confidence bins (15 in the paper)."""
    return reliability(probs, y, n_bins).ece


def negative_log_likelihood(probs: np.ndarray, y: np.ndarray) -> float:
    """The mean of −log p(true class); a probability below float64's machine epsilon counts as
    that epsilon (scikit-learn's ``log_loss`` rule), so that a zero vote is large, not inf."""
    return _nll(*_probabilities(probs, y))


def brier_score(probs: np.ndarray, y: np.ndarray) -> float:
    """Brier's multi-class score: the squared error of the probability vector against the
    one-hot truth, summed over classes, averaged over samples (0 is perfect, 2 the worst)."""
    return _brier(*_probabilities(probs, y))


def calibration_scores(
    probs: np.ndarray, y: np.ndarray, n_bins: int = ECE_BINS
) -> CalibrationScores:
    """ECE, NLL, Brier score and reliability-diagram data of one set of probabilities."""
    p, y = _probabilities(probs, y)
    diagram = _reliability(p, y, n_bins)
    return CalibrationScores(diagram.ece, _nll(p, y), _brier(p, y), diagram)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Class probabilities of ``logits / temperature`` (rows × classes), in float64."""
    z = features("logits", logits).astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(
    logits: np.ndarray, y: np.ndarray, bounds: tuple[float, float] = TEMPERATURE_BOUNDS
) -> TemperatureFit:
    """Temperature scaling: the T in ``bounds`` minimising the NLL of ``softmax(logits / T)``.

    The NLL is convex in 1/T, so it has one minimum along log T, which scipy's bounded Brent
    search (``minimize_scalar``) finds deterministically. A T at a bound means the optimum lies
    beyond it (logits that separate the validation classes perfectly drive T towards 0).
    """
    from scipy.optimize import minimize_scalar  # scipy.optimize costs ~0.3 s to import

    z = features("logits", logits).astype(np.float64)
    y = labels("y", y, len(z), z.shape[1])
    lo, hi = bounds
    if not 0 < lo < hi < math.inf:
        raise ArgumentError("bounds", f"must be 0 < low < high < inf, got {bounds}")

    def nll(log_t: float) -> float:
        scaled = z / math.exp(log_t)
        top = scaled.max(axis=1)
        log_norm = top + np.log(np.exp(scaled - top[:, None]).sum(axis=1))
        return float((log_norm - scaled[np.arange(len(y)), y]).mean())

    found = minimize_scalar(
        nll, bounds=(math.log(lo), math.log(hi)), method="bounded", options={"xatol": 1e-8}
    )
    return TemperatureFit(math.exp(found.x), nll(0.0), float(found.fun))


def _probabilities(probs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``probs`` as float64 rows of non-negative numbers summing to one, and ``y`` checked."""
    p = features("probs", probs).astype(np.float64)
    if len(p) == 0:
        raise ArgumentError("probs", "holds no rows")
    if p.min() < 0 or not np.allclose(p.sum(axis=1), 1.0, atol=1e-4):
        raise ArgumentError(
            "probs", "must be probabilities (rows ≥ 0 summing to 1): apply softmax to logits first"
        )
    return p, labels("y", y, len(p), p.shape[1])


def _reliability(p: np.ndarray, y: np.ndarray, n_bins: int) -> Reliability:
    """The bins of :class:`Reliability`. A confidence of exactly 0, outside every ``(lo, hi]``
    bin, cannot be the top probability of a probability vector; one rounded above 1 counts in
    the last bin."""
    n_bins = at_least_one("n_bins", n_bins)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(which, confidence, n_bins) / count
        accuracy = np.bincount(which, correct, n_bins) / count
    return Reliability(edges, mean_confidence, accuracy, count)


def _nll(p: np.ndarray, y: np.ndarray) -> float:
    true = p[np.arange(len(y)), y]
    return float(-np.log(np.maximum(true, np.finfo(np.float64).eps)).mean())


def _brier(p: np.ndarray, y: np.ndarray) -> float:
    error = p.copy()
    error[np.arange(len(y)), y] -= 1.0
    return float((error**2).sum(axis=1).mean())

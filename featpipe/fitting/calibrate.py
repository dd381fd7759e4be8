"""A fit's calibration: ECE, NLL and Brier score on test, before and after temperature scaling.

The temperature is fitted on the val split's logits (Guo et al. 2017, §4.2), so it needs a head
that did not train on val: after a refit on train + val that is selection's train-only head, and
both the figures before and after are that head's, so that they compare one model. Without a
val split (selection by cross-validation) no temperature is fitted. A k-NN head's outputs are
vote shares, not logits (a share of 0 has no logarithm), so it is scored as it votes, unscaled.
The arithmetic is :mod:`featpipe.protocols.calibration`'s.
"""

from __future__ import annotations

import numpy as np

from featpipe.heads.fitted import CosineKNN, FittedHead
from featpipe.protocols.calibration import calibration_scores, fit_temperature, softmax
from featpipe.runs.metrics import Calibrated, Calibration


def calibration(
    head: FittedHead,
    which: str,
    test: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray] | None,
) -> Calibration:
    """``head``'s calibration from its raw outputs on test and on val, each ``(outputs, y)``;
    ``which`` names the head (``chosen``, or ``selection``: the train-only head of a refit);
    ``val`` None: there is no val split to fit a temperature on."""
    test_out, y_test = test
    if isinstance(head.module, CosineKNN):
        return Calibration(
            which,
            _scored(test_out, y_test),
            note="k-NN votes are not logits: no temperature scaling",
        )
    before = _scored(softmax(test_out), y_test)
    if val is None:
        return Calibration(which, before, note="no val split to fit a temperature on")
    fitted = fit_temperature(*val)
    after = _scored(softmax(test_out, fitted.temperature), y_test)
    return Calibration(which, before, after, fitted.temperature)


def _scored(probs: np.ndarray, y: np.ndarray) -> Calibrated:
    scores = calibration_scores(probs, y)
    bins = scores.reliability
    return Calibrated(
        scores.ece,
        scores.nll,
        scores.brier,
        [None if np.isnan(c) else float(c) for c in bins.confidence],
        [None if np.isnan(a) else float(a) for a in bins.accuracy],
        [int(n) for n in bins.count],
    )

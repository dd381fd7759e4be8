"""Metrics, named the way the results table names them.

Classification: accuracy (the selection metric), balanced accuracy and macro-F1 (which do not
let a majority class hide a minority one: ELPV is 3:1), AUROC for two classes when the head's
scores are given, and the confusion matrix (the report's per-class table reads it).
Regression: R² (the selection metric), MAE and MSE.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from featpipe.errors import ArgumentError


def r2(y: np.ndarray, pred: np.ndarray) -> float:
    y, pred = np.asarray(y, np.float64), np.asarray(pred, np.float64)
    total = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - pred) ** 2).sum()) / total if total > 0 else 0.0


def classification(
    y: np.ndarray, pred: np.ndarray, n_classes: int, scores: np.ndarray | None = None
) -> dict[str, float]:
    """``scores``: the head's raw outputs, one column per class (for AUROC, two classes)."""
    from sklearn.metrics import f1_score, recall_score, roc_auc_score

    y, pred = np.asarray(y), np.asarray(pred)
    labels = list(range(n_classes))
    # Balanced accuracy is the mean recall over the classes present (balanced_accuracy_score
    # warns when a prediction names a class absent from y, as in a small CV fold).
    present = np.unique(y)
    out = {
        "accuracy": float(np.mean(y == pred)),
        "balanced_accuracy": float(
            recall_score(y, pred, labels=present, average="macro", zero_division=0)
        ),
        "macro_f1": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
    }
    if scores is not None and n_classes == 2:
        margin = two_class_margin(scores)
        out["auroc"] = float(roc_auc_score(y, margin)) if len(present) == 2 else float("nan")
    return out


def two_class_margin(scores: np.ndarray) -> np.ndarray:
    """The score AUROC ranks by: class 1's output over class 0's (or the one column given)."""
    return scores[:, 1] - scores[:, 0] if scores.shape[1] == 2 else scores[:, 0]


def regression(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    err = np.asarray(pred, np.float64) - np.asarray(y, np.float64)
    return {"r2": r2(y, pred), "mae": float(np.abs(err).mean()), "mse": float((err**2).mean())}


def confusion(y: np.ndarray, pred: np.ndarray, n_classes: int) -> list[list[int]]:
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y), np.asarray(pred)), 1)
    return matrix.tolist()


def primary(task: str) -> str:
    """The metric selection maximises."""
    return "r2" if task == "regression" else "accuracy"


def predicted(task: str, outputs: Any) -> np.ndarray:
    """What a head's raw outputs (one row per image) predict: the argmax class, or the value of
    a regression. The one rule: :func:`from_outputs`, ``stats.Predictions.from_outputs`` and the
    sweep's seeds use it."""
    outputs = np.asarray(outputs)
    if outputs.ndim != 2:
        raise ArgumentError("outputs", f"shape {outputs.shape}: give one row per image")
    if task == "regression":
        return outputs[:, 0]
    if task != "classification":
        raise ArgumentError("task", f"{task}: choose classification or regression")
    return outputs.argmax(axis=1)


def from_outputs(task: str, n_classes: int, y: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
    """Metrics from a head's raw outputs (its ``decision_function``), however they were
    computed: at once, or block by block from a cache larger than memory."""
    pred = predicted(task, outputs)  # the argmax class, or a regression's value
    if task == "regression":
        return regression(y, pred)
    return classification(y, pred, n_classes, outputs)

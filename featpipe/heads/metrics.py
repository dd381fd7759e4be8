"""Metrics, named the way the results table names them.

Classification: accuracy (the selection metric), macro-F1 and the confusion matrix.
Regression: R² (the selection metric), MAE and MSE.
"""

from __future__ import annotations

import numpy as np


def r2(y: np.ndarray, pred: np.ndarray) -> float:
    y, pred = np.asarray(y, np.float64), np.asarray(pred, np.float64)
    total = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - pred) ** 2).sum()) / total if total > 0 else 0.0


def classification(y: np.ndarray, pred: np.ndarray, n_classes: int) -> dict[str, float]:
    from sklearn.metrics import f1_score

    labels = list(range(n_classes))
    return {
        "accuracy": float(np.mean(y == pred)),
        "macro_f1": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
    }


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


def evaluate(head, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    pred = head.predict(X)
    if head.task == "regression":
        return regression(y, pred)
    return classification(y, pred, len(head.class_names))

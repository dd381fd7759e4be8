"""Regularisation paths: many ``alpha`` (ridge) or ``C`` (logistic regression) for about one fit.

A sweep over the regularisation strength is the sweep that matters for a linear probe, and
solving it value by value repeats the expensive part every time. Two classic shortcuts:

* **Ridge** (big_vision's ``fewshot_lsr``, scikit-learn's ``RidgeCV``): one eigendecomposition of
  the centred Gram matrix (``XᵀX`` when there are more samples than features, ``XXᵀ``
  otherwise) makes the solution for any ``alpha`` a rescaling of the eigenvalues: one
  decomposition, then a few matrix products per ``alpha``. Classification regresses one-vs-rest
  targets in {-1, 1}, exactly as ``RidgeClassifier`` does, so predictions equal solving each
  ``alpha`` separately (a test holds them to scikit-learn's).
* **Logistic regression**: L-BFGS from the previous solution along increasing ``C`` (scikit-learn's
  ``warm_start``, the idea behind ``LogisticRegressionCV``'s path), so each step starts near its
  optimum instead of at zero.

Both return plain ``(coef, intercept)`` arrays in scikit-learn's shapes, so the caller converts
them to modules the way it converts a single fit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def balanced_weights(y: np.ndarray) -> np.ndarray:
    """scikit-learn's ``class_weight="balanced"`` as per-sample weights."""
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    return (len(y) / (len(classes) * counts))[inverse]


def ridge_targets(
    y: np.ndarray, classes: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One-vs-rest targets in {-1, 1} (one column for two classes), as ``RidgeClassifier``.

    ``classes``: those of the whole training set, when ``y`` is one block of it.
    """
    classes = np.unique(y) if classes is None else classes
    Y = np.where(y[:, None] == classes[None, :], 1.0, -1.0)
    return (Y[:, 1:] if len(classes) == 2 else Y), classes


def ridge_path(
    X: np.ndarray,
    Y: np.ndarray,
    alphas: Sequence[float],
    sample_weight: np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Ridge solutions ``(coef [T×D], intercept [T])`` for every ``alpha``, from one eigh.

    ``Y`` is N×T (targets as columns). The intercept is not penalised: X and Y are centred
    (with the sample weights, if any), as scikit-learn's ``Ridge(fit_intercept=True)`` does.
    """
    X = np.asarray(X, np.float64)
    Y = np.asarray(Y, np.float64).reshape(len(X), -1)
    w = np.ones(len(X)) if sample_weight is None else np.asarray(sample_weight, np.float64)
    x_mean = w @ X / w.sum()
    y_mean = w @ Y / w.sum()
    root = np.sqrt(w)[:, None]
    Xc, Yc = (X - x_mean) * root, (Y - y_mean) * root
    n, d = Xc.shape
    if n >= d:  # primal: (XᵀX + αI)⁻¹ XᵀY through the eigenvectors of XᵀX (D×D)
        return ridge_path_gram(Xc.T @ Xc, Xc.T @ Yc, x_mean, y_mean, alphas)
    # dual: Xᵀ (XXᵀ + αI)⁻¹ Y through the eigenvectors of XXᵀ (N×N)
    evals, P = np.linalg.eigh(Xc @ Xc.T)
    PtY = P.T @ Yc
    solutions = []
    for alpha in alphas:
        coef = Xc.T @ (P @ (PtY / (evals + alpha)[:, None]))
        solutions.append((coef.T, y_mean - x_mean @ coef))
    return solutions


def ridge_path_gram(
    gram: np.ndarray,
    cross: np.ndarray,
    x_mean: np.ndarray,
    y_mean: np.ndarray,
    alphas: Sequence[float],
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Ridge solutions from the centred ``XᵀX`` (D×D) and ``XᵀY`` (D×T) and the means.

    The primal half of :func:`ridge_path`, and all a fit streamed from disk accumulates: one
    pass over the rows, however many there are, then one eigh for every ``alpha``.
    """
    evals, Q = np.linalg.eigh(gram)
    QtXtY = Q.T @ cross
    solutions = []
    for alpha in alphas:
        coef = Q @ (QtXtY / (evals + alpha)[:, None])
        solutions.append((coef.T, y_mean - x_mean @ coef))
    return solutions


def ridge_classifier_path(
    X: np.ndarray, y: np.ndarray, alphas: Sequence[float], balanced: bool = False
) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """``RidgeClassifier`` for every ``alpha``: solutions and the classes they score."""
    Y, classes = ridge_targets(y)
    return ridge_path(X, Y, alphas, balanced_weights(y) if balanced else None), classes


def logistic_path(
    X: np.ndarray,
    y: np.ndarray,
    Cs: Sequence[float],
    balanced: bool = False,
    max_iter: int = 2000,
    tol: float = 1e-4,
) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """L-BFGS logistic regression for every ``C``, each started from its neighbour's optimum.

    The path runs from the strongest regularisation (smallest ``C``) up, where solutions change
    smoothly; results come back in the order of ``Cs``.
    """
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(
        max_iter=max_iter,
        tol=tol,
        warm_start=True,
        class_weight="balanced" if balanced else None,
    )
    by_c: dict[float, tuple[np.ndarray, np.ndarray]] = {}
    for C in sorted(set(Cs)):
        model.set_params(C=C).fit(X, y)
        by_c[C] = (model.coef_.copy(), model.intercept_.copy())
    return [by_c[C] for C in Cs], model.classes_

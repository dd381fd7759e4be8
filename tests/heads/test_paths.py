"""Regularisation paths give what solving each value separately gives (scikit-learn as oracle)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, Ridge, RidgeClassifier

from featpipe.heads.fitted import fit_heads
from featpipe.heads.paths import logistic_path, ridge_classifier_path, ridge_path
from featpipe.heads.train_data import TrainData

ALPHAS = [1e-3, 0.1, 10.0, 1e3]


def data(n: int, d: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    X = rng.normal(size=(n, d)) + 0.7 * rng.normal(size=(classes, d))[y]
    return X.astype(np.float32), y


@pytest.mark.parametrize(("n", "d"), [(300, 40), (60, 150)])  # primal and dual
@pytest.mark.parametrize("classes", [2, 4])
@pytest.mark.parametrize("balanced", [False, True])
def test_ridge_classifier_path_equals_one_fit_per_alpha(n, d, classes, balanced) -> None:
    X, y = data(n, d, classes)
    if balanced:  # make the weights matter
        keep = (y != 0) | (np.arange(n) % 3 == 0)
        X, y = X[keep], y[keep]
    solutions, found = ridge_classifier_path(X, y, ALPHAS, balanced)
    for alpha, (coef, intercept) in zip(ALPHAS, solutions, strict=True):
        ref = RidgeClassifier(alpha=alpha, class_weight="balanced" if balanced else None)
        ref.fit(X, y)
        np.testing.assert_allclose(coef, np.atleast_2d(ref.coef_), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(intercept, np.atleast_1d(ref.intercept_), rtol=1e-4, atol=1e-6)
        scores = X @ coef.T + intercept
        pred = (
            found[(scores[:, 0] > 0).astype(int)] if coef.shape[0] == 1 else found[scores.argmax(1)]
        )
        np.testing.assert_array_equal(pred, ref.predict(X))


def test_ridge_regression_path_equals_ridge() -> None:
    X, _ = data(200, 30, 2)
    t = X @ np.random.default_rng(1).normal(size=30) + 3.0
    for alpha, (coef, intercept) in zip(ALPHAS, ridge_path(X, t[:, None], ALPHAS), strict=True):
        ref = Ridge(alpha=alpha).fit(X, t)
        np.testing.assert_allclose(coef[0], ref.coef_, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(intercept[0], ref.intercept_, rtol=1e-5)


def test_logistic_path_matches_independent_fits() -> None:
    X, y = data(300, 20, 3)
    Cs = [10.0, 0.01, 1.0]  # out of order on purpose: results come back in the given order
    solutions, classes = logistic_path(X, y, Cs, tol=1e-8)
    for C, (coef, intercept) in zip(Cs, solutions, strict=True):
        ref = LogisticRegression(C=C, max_iter=2000, tol=1e-8).fit(X, y)
        # Both are the optimum of the same strictly convex problem, to L-BFGS's tolerance: the
        # probabilities agree closely (the weakly regularised coefficients less so).
        logits = X @ coef.T + intercept
        proba = np.exp(logits - logits.max(1, keepdims=True))
        proba /= proba.sum(1, keepdims=True)
        np.testing.assert_allclose(proba, ref.predict_proba(X), atol=2e-3)
        pred = classes[logits.argmax(1)]
        np.testing.assert_array_equal(pred, ref.predict(X))


def _fit(configs, X, y, Xv, task="classification"):
    names = [str(c) for c in range(int(y.max()) + 1)] if task == "classification" else []
    return fit_heads(configs, TrainData(X, y, None, None, names, task), n_jobs=1)


@pytest.mark.parametrize(
    ("head", "along", "values", "n", "d"),
    [
        ("ridge", "alpha", [1e-2, 1.0, 30.0, 1e3], 300, 40),  # primal
        ("ridge", "alpha", [1e-2, 1.0, 30.0, 1e3], 60, 150),  # dual
        ("logreg", "C", [1e-3, 0.1, 10.0], 300, 40),
    ],
)
@pytest.mark.parametrize("class_weight", ["none", "balanced"])
def test_fit_heads_sweeps_a_path_with_the_predictions_of_single_fits(
    head, along, values, n, d, class_weight
) -> None:
    """A grid along alpha / C goes through one path; every head predicts as its single fit."""
    from featpipe.heads.config import HeadConfig
    from featpipe.heads.fitted import path_groups

    X, y = data(n + 200, d, 4)
    keep = (y != 0) | (np.arange(len(y)) % 3 == 0)  # unbalanced, so the weights matter
    X, y = X[keep], y[keep]
    X, Xt, y = X[:n], X[n:], y[:n]
    configs = [HeadConfig(head=head, class_weight=class_weight, **{along: v}) for v in values]
    assert path_groups(configs) == [list(range(len(values)))]
    swept = _fit(configs, X, y, None)
    for config, head_fit in zip(configs, swept, strict=True):
        [single] = _fit([config], X, y, None)
        assert head_fit.config == config
        np.testing.assert_array_equal(head_fit.predict(Xt), single.predict(Xt))
        # Ridge: the same solution up to rounding. Logistic regression: both stop L-BFGS at its
        # tolerance (1e-4) near the same optimum, from different starting points.
        atol = 1e-4 if head == "ridge" else 0.05
        np.testing.assert_allclose(head_fit.predict_proba(Xt), single.predict_proba(Xt), atol=atol)


def test_fit_heads_ridge_regression_path_equals_single_fits() -> None:
    from featpipe.heads.config import HeadConfig

    X, _ = data(200, 30, 2)
    t = X @ np.random.default_rng(1).normal(size=30) + 3.0
    configs = [HeadConfig(head="ridge", alpha=a) for a in ALPHAS]
    for config, swept in zip(configs, _fit(configs, X, t, None, "regression"), strict=True):
        [single] = _fit([config], X, t, None, "regression")
        np.testing.assert_allclose(swept.predict(X), single.predict(X), rtol=1e-4, atol=1e-4)


def test_path_groups_keep_other_options_apart() -> None:
    from featpipe.heads.config import HeadConfig
    from featpipe.heads.fitted import path_groups

    configs = [
        HeadConfig(head="ridge", alpha=1.0),
        HeadConfig(head="logreg", C=1.0),
        HeadConfig(head="ridge", alpha=2.0),
        HeadConfig(head="ridge", alpha=2.0, class_weight="balanced"),
        HeadConfig(head="logreg", C=3.0),
        HeadConfig(head="linearsvc", C=1.0),
        HeadConfig(head="linearsvc", C=2.0),
    ]
    assert path_groups(configs) == [[0, 2], [1, 4], [3], [5], [6]]

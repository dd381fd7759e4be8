"""``Head`` is a scikit-learn estimator: clone, Pipeline, GridSearchCV, cross_val_score,
is_classifier and scikit-learn's own estimator checks, on the installed scikit-learn; labels
as users have them."""

from __future__ import annotations

import numpy as np
import pytest
import sklearn
from sklearn.base import clone, is_classifier
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

from featpipe.errors import ArgumentError, DataError
from featpipe.heads.estimator import Head

# The checks that do not apply to Head, each with the reason (scikit-learn reports them xfail).
NOT_APPLICABLE = {
    "check_classifiers_regression_target": (
        "Head regresses continuous targets by design (one estimator for both tasks, as "
        "featpipe fit is), instead of refusing them"
    ),
    "check_class_weight_classifiers": (
        "class_weight is 'none' or 'balanced', a string a run can record; per-class weight "
        "dicts are not an option"
    ),
    "check_methods_subset_invariance": (
        "heads run in float32, whose matrix products round differently for different batch "
        "sizes (about 1e-7 relative, below this check's 1e-7 tolerance at times); "
        "test_predictions_do_not_depend_on_the_batch holds it to float32 rounding"
    ),
}


def blobs(n: int = 240, d: int = 6, c: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(c, d))
    y = np.arange(n) % c
    return (centers[y] + rng.normal(size=(n, d))).astype(np.float32), y


def test_sklearn_version_is_the_one_tested() -> None:
    assert tuple(int(p) for p in sklearn.__version__.split(".")[:2]) >= (1, 6)  # validate_data


# lr=0.05, 15 epochs: fixed options keep these ~50 checks short (tests/heads/test_defaults.py
# holds the defaults to LogisticRegression).
@pytest.mark.parametrize("head", ["linear", "mlp", "logreg", "linearsvc", "ridge", "knn"])
def test_scikit_learn_estimator_checks_pass(head: str) -> None:
    results = check_estimator(
        Head(head, lr=0.05, epochs=15), expected_failed_checks=NOT_APPLICABLE, on_fail=None
    )
    failed = [
        (r["check_name"], str(r["exception"])[:200]) for r in results if r["status"] == "failed"
    ]
    assert failed == []
    assert sum(r["status"] == "passed" for r in results) >= 50


def test_clone_pipeline_and_is_classifier() -> None:
    head = Head(head="mlp", hidden=512, dropout=0.3)
    twin = clone(head)
    assert twin is not head and twin.get_params() == head.get_params()
    assert repr(head) == "Head(dropout=0.3, head='mlp', hidden=512)"
    assert is_classifier(head)
    X, y = blobs()
    pipe = make_pipeline(StandardScaler(), Head(lr=0.05, standardize=False)).fit(X[:180], y[:180])
    assert pipe.score(X[180:], y[180:]) > 0.9


def test_grid_search_over_a_pipeline_returns_real_scores() -> None:
    X, y = blobs()
    search = GridSearchCV(
        make_pipeline(StandardScaler(), Head(epochs=10)),
        {"head__lr": [1e-4, 0.1], "head__head": ["linear", "logreg"]},
        cv=3,
    ).fit(X, y)
    scores = search.cv_results_["mean_test_score"]
    assert np.isfinite(scores).all() and (scores > 0).all()
    assert search.best_score_ == scores.max()
    assert search.best_params_ == search.cv_results_["params"][int(np.argmax(scores))]
    assert search.score(X, y) > 0.9


def test_cross_val_score_classification_and_regression() -> None:
    X, y = blobs()
    scores = cross_val_score(Head(lr=0.05), X, y, cv=3)
    assert scores.shape == (3,) and (scores > 0.9).all()
    target = X[:, 0] * 2.0 - X[:, 1] + 0.5  # continuous: regressed, scored by R²
    r2 = cross_val_score(Head("ridge", alpha=1e-3), X, target, cv=3)
    assert (r2 > 0.99).all()


def test_string_labels() -> None:
    X, y = blobs()
    names = np.array(["cat", "dog", "eel"])[y]
    head = Head(lr=0.05).fit(X[:180], names[:180], X[180:], names[180:])
    assert head.classes_.tolist() == ["cat", "dog", "eel"]
    assert set(head.predict(X[180:])) <= {"cat", "dog", "eel"}
    assert head.predict_proba(X[180:]).shape == (60, 3)
    assert head.score(X[180:], names[180:]) > 0.9
    assert head.fitted_.class_names == ["cat", "dog", "eel"]


def test_labels_one_and_two_have_no_phantom_class_zero() -> None:
    X, y = blobs(c=2)
    labels = y + 1
    head = Head(lr=0.05).fit(X, labels)
    assert head.classes_.tolist() == [1, 2]
    assert head.predict_proba(X).shape == (len(X), 2)
    assert set(head.predict(X).tolist()) == {1, 2}
    assert head.decision_function(X).shape == (len(X),)  # binary: one margin per row
    assert ((head.decision_function(X) > 0) == (head.predict(X) == 2)).all()


def test_float_zero_one_labels_are_classes_and_continuous_targets_regress() -> None:
    X, y = blobs(c=2)
    head = Head("logreg").fit(X, y.astype(np.float64))
    assert head.classes_.tolist() == [0.0, 1.0] and head.fitted_.task == "classification"
    target = X @ np.arange(1, X.shape[1] + 1) + 0.25
    regressor = Head("ridge", alpha=1e-3).fit(X, target)
    assert regressor.fitted_.task == "regression" and not hasattr(regressor, "classes_")
    assert regressor.score(X, target) > 0.999
    with pytest.raises(DataError, match="for classification heads"):
        regressor.predict_proba(X)


def test_fitted_attributes_and_not_fitted_error() -> None:
    X, y = blobs()
    with pytest.raises(NotFittedError):
        Head().predict(X)
    head = Head(epochs=2).fit(X, y)
    assert head.n_features_in_ == X.shape[1]
    with pytest.raises(ValueError, match="X has 5 features, but Head is expecting 6"):
        head.predict(X[:, :5])


def test_parameters_are_stored_unchanged_and_validated_in_fit() -> None:
    X, y = blobs()
    head = Head(lr="0.05", epochs="3")  # stored as given: clone and set_params see them
    assert head.get_params()["lr"] == "0.05"
    assert head.fit(X, y).fitted_.config.lr == 0.05
    bad = Head(lr="fast")  # no error until fit, as scikit-learn requires
    with pytest.raises(ArgumentError, match="lr 'fast': expected a number"):
        bad.fit(X, y)
    with pytest.raises(TypeError):
        Head(learning_rate=0.1)
    with pytest.raises(ArgumentError, match="head logreg is a classifier"):
        Head(head="logreg").fit(X, X[:, 0] + 0.5)


def test_validation_split_in_the_users_labels() -> None:
    X, y = blobs()
    names = np.array(["a", "b", "c"])[y]
    head = Head(epochs=6, lr=0.05).fit(X[:180], names[:180], X[180:], names[180:])
    assert len(head.fitted_.history["val_metric"]) == 6
    with pytest.raises(DataError, match="y_val holds labels that y does not"):
        Head().fit(X[:180], names[:180], X[180:], np.full(60, "zebra"))


def test_predictions_do_not_depend_on_the_batch() -> None:
    """What check_methods_subset_invariance asks, to float32 rounding: a row's outputs do not
    depend on the rows predicted with it."""
    X, y = blobs(n=600)
    head = Head("mlp", lr=0.05, epochs=5).fit(X, y)
    whole = head.decision_function(X)
    parts = np.concatenate([head.decision_function(X[i : i + 7]) for i in range(0, 600, 7)])
    np.testing.assert_allclose(parts, whole, rtol=1e-5, atol=1e-5)
    assert (head.predict(X[:7]) == head.predict(X)[:7]).all()

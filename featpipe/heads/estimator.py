"""``Head``: any featpipe head as a scikit-learn estimator over cached features.

``Head(head="mlp", hidden=512).fit(X, y)`` follows scikit-learn's estimator contract, so it
goes into ``clone``, ``Pipeline``, ``GridSearchCV`` and ``cross_val_score``: its keyword
parameters are the options of :class:`~featpipe.heads.config.HeadConfig`, stored unchanged in
``__init__`` and validated in ``fit`` (a bad value raises there, naming the option); fitted
state lives in attributes ending in ``_``.

Labels are taken as users have them: strings, ``{1, 2}``, floats ``0.0/1.0``; ``classes_``
holds them sorted, as scikit-learn's classifiers do. The task follows scikit-learn's
``type_of_target``: continuous targets (floats that are not all whole numbers) are regressed,
anything binary or multiclass is classified. ``Head`` is tagged a classifier (``is_classifier``
is true; cross-validation stratifies class labels and plain-folds continuous targets).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from featpipe.errors import ArgumentError, DataError
from featpipe.heads.config import HeadConfig
from featpipe.heads.fitted import FittedHead, fit_heads
from featpipe.heads.train_data import TrainData


class Head(ClassifierMixin, BaseEstimator):
    """A head over cached features; see :class:`~featpipe.heads.config.HeadConfig` for what
    each option does (the defaults are the same)::

        head = Head(head="mlp", lr=1e-3).fit(X_train, y_train, X_val, y_val)
        head.predict(X_test), head.predict_proba(X_test), head.score(X_test, y_test)

    ``X_val, y_val`` (optional) are scored every epoch (``fitted_.history``); with ``patience`` they
    choose the epoch a torch head keeps, as ``featpipe fit`` does.
    """

    def __init__(
        self,
        head: str = "linear",
        *,
        lr: float | None = None,
        wd: float = 0.0,
        optimizer: str = "adamw",
        schedule: str = "cosine",
        epochs: int = 0,
        batch_size: int = 128,
        hidden: int = 0,
        depth: int = 1,
        dropout: float = 0.5,
        bn: bool = True,
        label_smoothing: float = 0.0,
        class_weight: str = "none",
        patience: int = 0,
        C: float = 1.0,
        alpha: float = 1.0,
        k: int = 10,
        temperature: float = 0.0,
        standardize: bool | None = None,
        l2norm: bool | None = None,
        pca: int = 0,
        seed: int = 0,
    ) -> None:
        self.head = head
        self.lr = lr
        self.wd = wd
        self.optimizer = optimizer
        self.schedule = schedule
        self.epochs = epochs
        self.batch_size = batch_size
        self.hidden = hidden
        self.depth = depth
        self.dropout = dropout
        self.bn = bn
        self.label_smoothing = label_smoothing
        self.class_weight = class_weight
        self.patience = patience
        self.C = C
        self.alpha = alpha
        self.k = k
        self.temperature = temperature
        self.standardize = standardize
        self.l2norm = l2norm
        self.pca = pca
        self.seed = seed

    @property
    def config(self) -> HeadConfig:
        """The parameters as a validated :class:`HeadConfig` (raises naming a bad option)."""
        return HeadConfig.from_dict(self.get_params())

    def fit(
        self,
        X: Any,
        y: Any,
        X_val: Any | None = None,
        y_val: Any | None = None,
    ) -> Head:
        config = self.config
        X, y = validate_data(self, X, y, dtype=np.float32)
        kind = type_of_target(y, input_name="y", raise_unknown=True)
        if kind == "continuous":
            task, target, names = "regression", y.astype(np.float64), []
            self.__dict__.pop("classes_", None)  # refitted as a regressor: no classes
        elif kind in ("binary", "multiclass"):
            task = "classification"
            self.classes_, target = np.unique(y, return_inverse=True)
            if len(self.classes_) < 2:
                raise DataError(
                    f"y holds one class ({self.classes_[0]!r}): a classifier needs at least two"
                )
            names = [str(c) for c in self.classes_]
        else:
            raise DataError(f"y is {kind}: Head takes one label or one value per row")
        Xv, yv = self._validation(X_val, y_val, task)
        data = TrainData(X, target, Xv, yv, names, task)
        [self.fitted_] = fit_heads([config], data, n_jobs=1)
        return self

    def _validation(
        self, X_val: Any | None, y_val: Any | None, task: str
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The validation split in the training split's encoding (or none)."""
        if X_val is None and y_val is None:
            return None, None
        if X_val is None or y_val is None:
            raise ArgumentError("X_val", "pass X_val and y_val together, or neither")
        Xv = check_array(X_val, dtype=np.float32)
        yv = np.asarray(y_val)
        if Xv.shape[1] != self.n_features_in_ or len(yv) != len(Xv):
            raise DataError(
                f"X_val is {Xv.shape} and y_val has {len(yv)} rows: give the training features' "
                f"{self.n_features_in_} columns and one label per row"
            )
        if task == "regression":
            return Xv, yv.astype(np.float64)
        unknown = np.setdiff1d(yv, self.classes_)
        if len(unknown):
            raise DataError(f"y_val holds labels that y does not ({unknown[:5].tolist()})")
        return Xv, np.searchsorted(self.classes_, yv)

    def _head(self, X: Any) -> tuple[FittedHead, np.ndarray]:
        check_is_fitted(self, "fitted_")
        return self.fitted_, validate_data(self, X, dtype=np.float32, reset=False)

    def predict(self, X: Any) -> np.ndarray:
        head, X = self._head(X)
        out = head.predict(X)
        return out if head.task == "regression" else self.classes_[out]

    def predict_proba(self, X: Any) -> np.ndarray:
        head, X = self._head(X)
        return head.predict_proba(X)

    def decision_function(self, X: Any) -> np.ndarray:
        """Logits (vote shares for k-NN); for two classes the margin of the second, shape (n,)."""
        head, X = self._head(X)
        if head.task == "regression":
            raise DataError("decision_function is for classification heads; use predict")
        out = head.decision_function(X).astype(np.float64)
        return out[:, 1] - out[:, 0] if out.shape[1] == 2 else out

    def score(self, X: Any, y: Any, sample_weight: Any | None = None) -> float:
        """Accuracy for classification, R² for regression (as scikit-learn's mixins)."""
        head, _ = self._head(X)
        if head.task == "regression":
            from sklearn.metrics import r2_score

            return float(r2_score(y, self.predict(X), sample_weight=sample_weight))
        return super().score(X, y, sample_weight=sample_weight)

"""What every statistic resamples: one model's predictions on one test set, image by image.

Intervals and paired comparisons need the per-image predictions, not the scores: a bootstrap
redraws images, a paired test counts the images two models disagree on. :class:`Predictions`
is parsed once (shapes, label ranges, finite values) so that everything inward can trust it;
:class:`Metric` names what the project reports (``featpipe.heads.metrics``) and which way is
better.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from featpipe.errors import ArgumentError
from featpipe.heads.metrics import predicted


@dataclass(frozen=True)
class Metric:
    """A reported metric: its task, which way is better, and whether it is a proportion in
    [0, 1] (whose differences read as percentage points)."""

    name: str
    task: str
    higher_is_better: bool
    proportion: bool


METRICS = {
    m.name: m
    for m in (
        Metric("accuracy", "classification", True, True),
        Metric("balanced_accuracy", "classification", True, True),
        Metric("macro_f1", "classification", True, True),
        Metric("auroc", "classification", True, True),
        Metric("r2", "regression", True, False),
        Metric("mae", "regression", False, False),
        Metric("mse", "regression", False, False),
        # per-query scores in [0, 1] (retrieval's recall@k hits, AP@R): their mean
        Metric("mean", "per_query", True, True),
    )
}


def _read_only(a: np.ndarray) -> np.ndarray:
    a = np.array(a)  # a copy: the caller's array may change, these may not
    a.flags.writeable = False
    return a


@dataclass(frozen=True, eq=False)
class Predictions:
    """One model's predictions on one test set, one entry per image.

    Build it with :meth:`classification`, :meth:`regression`, :meth:`from_outputs` or
    :meth:`per_query` (``pred`` holds each query's score), which check the arrays.
    ``scores``: a two-class head's raw outputs (one or two columns), which AUROC ranks by; None
    when not given.
    """

    task: str
    y: np.ndarray
    pred: np.ndarray
    n_classes: int  # 0 for regression
    scores: np.ndarray | None = None

    @classmethod
    def classification(
        cls,
        y: Any,
        pred: Any,
        n_classes: int | None = None,
        scores: Any = None,
    ) -> Predictions:
        """Class indices ``y`` (true) and ``pred``; ``n_classes`` defaults to the largest
        index seen plus one."""
        y = _vector("y", y)
        pred = _vector("pred", pred, len(y))
        for name, a in (("y", y), ("pred", pred)):
            if not np.issubdtype(a.dtype, np.integer) and not np.all(a == np.round(a)):
                raise ArgumentError(name, "must hold class indices (whole numbers)")
            if a.min() < 0:
                raise ArgumentError(name, f"has a negative class index ({a.min()})")
        y, pred = y.astype(np.int64), pred.astype(np.int64)
        seen = int(max(y.max(), pred.max())) + 1
        k = seen if n_classes is None else int(n_classes)
        if k < seen or k < 2:
            raise ArgumentError(
                "n_classes", f"{n_classes}: the labels use {seen} classes; give at least that"
            )
        if scores is not None:
            scores = np.asarray(scores, dtype=np.float64)
            if scores.ndim == 1:
                scores = scores[:, None]
            if k != 2 or scores.ndim != 2 or len(scores) != len(y) or scores.shape[1] > 2:
                raise ArgumentError(
                    "scores",
                    f"shape {scores.shape}: give a two-class head's outputs, one row per image "
                    "and one or two columns (AUROC is for two classes)",
                )
            if not np.all(np.isfinite(scores)):
                raise ArgumentError("scores", "hold NaN or infinite values")
            scores = _read_only(scores)
        return cls("classification", _read_only(y), _read_only(pred), k, scores)

    @classmethod
    def regression(cls, y: Any, pred: Any) -> Predictions:
        """True values ``y`` and predicted values ``pred``."""
        y = _vector("y", y).astype(np.float64)
        pred = _vector("pred", pred, len(y)).astype(np.float64)
        for name, a in (("y", y), ("pred", pred)):
            if not np.all(np.isfinite(a)):
                raise ArgumentError(name, "holds NaN or infinite values")
        return cls("regression", _read_only(y), _read_only(pred), 0)

    @classmethod
    def per_query(cls, labels: Any, values: Any) -> Predictions:
        """One score in [0, 1] per query whose mean is what is reported (metric ``mean``):
        retrieval's recall@k hit (0 or 1) or AP@R of each query. ``labels``: each query's
        class, which the pairing of two models on the same queries checks."""
        y = _vector("labels", labels)
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
            raise ArgumentError("labels", "must hold class indices (whole numbers ≥ 0)")
        values = np.asarray(values)
        values = values.astype(np.float64) if values.dtype == np.bool_ else values  # hits
        values = _vector("values", values, len(y)).astype(np.float64)
        if not np.all((values >= 0) & (values <= 1)):  # also refuses NaN
            raise ArgumentError("values", "must lie between 0 and 1 (a hit, a precision)")
        return cls("per_query", _read_only(y.astype(np.int64)), _read_only(values), 0)

    @classmethod
    def from_outputs(cls, task: str, n_classes: int, y: Any, outputs: Any) -> Predictions:
        """From a head's raw outputs (its ``decision_function``), as
        ``featpipe.heads.metrics.from_outputs`` scores them: the prediction is the argmax."""
        outputs = np.asarray(outputs, dtype=np.float64)
        scores = outputs if n_classes == 2 else None  # a binary task's AUROC reads them
        return cls.from_predicted(task, n_classes, y, predicted(task, outputs), scores)

    @classmethod
    def from_predicted(
        cls, task: str, n_classes: int, y: Any, pred: Any, scores: Any = None
    ) -> Predictions:
        """From :func:`predicted`'s values: the class (or value), with a classifier's
        ``scores`` where they are kept."""
        if task == "regression":
            return cls.regression(y, pred)
        return cls.classification(y, pred, n_classes, scores)

    def __len__(self) -> int:
        return len(self.y)

    def metric(self, name: str) -> Metric:
        """The metric called ``name``, checked against this task (and AUROC's scores)."""
        m = METRICS.get(name)
        if m is None or m.task != self.task:
            choices = ", ".join(k for k, v in METRICS.items() if v.task == self.task)
            raise ArgumentError("metric", f"{name}: for {self.task}, choose one of {choices}")
        if name == "auroc" and self.scores is None:
            raise ArgumentError(
                "metric", "auroc needs the head's scores: Predictions.classification(scores=...)"
            )
        return m

    def same_images(self, other: Predictions) -> None:
        """Raise unless ``other`` is scored on the same test set (same task and labels, in the
        same order: the pairing of a paired test is image by image)."""
        if (
            other.task != self.task
            or len(other) != len(self)
            or not np.array_equal(other.y, self.y)
        ):
            raise ArgumentError(
                "predictions",
                "are not on the same test images (task, count or true labels differ): a paired "
                "comparison needs every model scored on the same images, in the same order",
            )
        if other.n_classes != self.n_classes:
            raise ArgumentError(
                "n_classes",
                f"differs ({self.n_classes} and {other.n_classes}): give every model's "
                "Predictions the dataset's number of classes",
            )


def _vector(name: str, a: Any, length: int | None = None) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 1 or len(a) == 0:
        raise ArgumentError(name, f"shape {a.shape}: give one value per test image")
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ArgumentError(name, f"dtype {a.dtype}: give numbers")
    if length is not None and len(a) != length:
        raise ArgumentError(name, f"has {len(a)} values for {length} images in y")
    return a

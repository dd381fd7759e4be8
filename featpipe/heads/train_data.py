"""What a grid of heads is fitted on, as one value: :class:`TrainData`.

Every fit of heads (a validation split, each cross-validation fold, the refit of the chosen
config, a few-shot draw, the :class:`~featpipe.heads.estimator.Head` estimator) hands the
trainers the same things: the training rows and their targets, the rows that watch training
(val: torch heads' curves and early stopping), the label set and the task, and optionally
augmented views of the training rows. They travel together, so no signature lists them one by
one and no caller can pass a val split's targets with another split's rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from featpipe.heads.preprocess import Matrix
from featpipe.heads.views import TrainViews


@dataclass(frozen=True)
class TrainData:
    """Training rows ``X`` (N × D) with targets ``y``; ``X_val``/``y_val`` the rows that watch
    training (None: none); the label set; ``views`` augmented views of the rows of ``X``
    (N × K × D, :mod:`featpipe.heads.views`), which torch heads train on and scikit-learn heads
    add as rows. ``X`` and ``X_val`` may be :class:`~featpipe.heads.preprocess.Rows` of a
    larger matrix (a split, not copied): the heads' preprocessing reads them block by block and
    the trainers see only its output, :meth:`transformed`."""

    X: Matrix
    y: np.ndarray
    X_val: Matrix | None
    y_val: np.ndarray | None
    class_names: list[str]
    task: str
    views: TrainViews | None = None

    @property
    def n_out(self) -> int:
        """Outputs of a classifier (one per class); 0 means regression."""
        return len(self.class_names) if self.task == "classification" else 0

    @property
    def watched(self) -> bool:
        """Whether there are val rows to watch (an empty val split is none)."""
        return self.X_val is not None and self.y_val is not None and len(self.X_val) > 0

    def transformed(self, transform: Callable[[Matrix], np.ndarray]) -> TrainData:
        """Every row through a row transform (the heads' preprocessing, fitted on ``X``); an
        empty val split becomes None."""
        watched = self.watched
        return replace(
            self,
            X=transform(self.X),
            X_val=transform(self.X_val) if watched else None,
            y_val=self.y_val if watched else None,
            views=self.views.transformed(transform) if self.views is not None else None,
        )

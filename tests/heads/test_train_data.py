"""TrainData: the rows a grid of heads is fitted on, travelling as one value."""

from __future__ import annotations

import numpy as np

from featpipe.heads.train_data import TrainData
from featpipe.heads.views import TrainViews


def test_a_transform_reaches_every_row_and_an_empty_val_split_is_none() -> None:
    X = np.arange(12, dtype=np.float32).reshape(6, 2)
    views = TrainViews(np.stack([X, X + 100], axis=1))
    y, names = np.arange(6) % 3, ["a", "b", "c"]
    data = TrainData(X, y, X[:2] + 50, np.array([0, 1]), names, "classification", views)
    doubled = data.transformed(lambda rows: rows * 2)
    np.testing.assert_array_equal(doubled.X, X * 2)
    np.testing.assert_array_equal(doubled.X_val, (X[:2] + 50) * 2)
    np.testing.assert_array_equal(doubled.views.X, np.stack([X, X + 100], axis=1) * 2)
    assert doubled.watched and doubled.y_val.tolist() == [0, 1] and doubled.y is data.y
    empty = TrainData(X, data.y, X[:0], data.y[:0], data.class_names, data.task)
    assert not empty.watched
    assert empty.transformed(lambda rows: rows).X_val is None
    assert empty.transformed(lambda rows: rows).y_val is None


def test_outputs_are_one_per_class_and_none_for_regression() -> None:
    X, y = np.zeros((4, 2), np.float32), np.zeros(4)
    assert TrainData(X, y, None, None, ["a", "b", "c"], "classification").n_out == 3
    assert TrainData(X, y, None, None, [], "regression").n_out == 0

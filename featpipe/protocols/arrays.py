"""The arrays every protocol takes, checked once at the door.

Features are 2-D float arrays (float16, as a cache may store them, is widened to float32, since
sums of half floats lose the digits the rankings depend on); labels are 1-D class indices that
agree in length with their rows. A mismatch is one ``ArgumentError`` naming the parameter.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from featpipe.errors import ArgumentError


def features(param: str, X: np.ndarray) -> np.ndarray:
    """``X`` as a 2-D float32 or float64 array (float64 stays float64, other floats → float32)."""
    X = np.asarray(X)
    if X.ndim != 2 or not np.issubdtype(X.dtype, np.floating):
        raise ArgumentError(
            param, f"must be a 2-D float array (rows × dims), got {X.dtype} {X.shape}"
        )
    return X if X.dtype == np.float64 else X.astype(np.float32, copy=False)


def labels(param: str, y: np.ndarray, rows: int, n_classes: int | None = None) -> np.ndarray:
    """``y`` as int64 class indices, one per row, each in ``[0, n_classes)`` when it is given."""
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != rows or not np.issubdtype(y.dtype, np.integer):
        raise ArgumentError(
            param, f"must be {rows} integer class indices (one per row), got {y.dtype} {y.shape}"
        )
    if n_classes is not None and len(y) and (y.min() < 0 or y.max() >= n_classes):
        raise ArgumentError(param, f"holds classes outside 0..{n_classes - 1}")
    return y.astype(np.int64, copy=False)


def at_least_one(param: str, value: int) -> int:
    """A count that must be at least 1 (a block size, a number of bins, of tries, of classes)."""
    if int(value) != value or value < 1:
        raise ArgumentError(param, f"must be an integer of at least 1, got {value}")
    return int(value)


def positive_ints(param: str, values: Sequence[int]) -> tuple[int, ...]:
    """A non-empty tuple of distinct positive integers, in the order given."""
    out = tuple(int(v) for v in values)
    if not out or min(out) < 1 or len(set(out)) != len(out):
        raise ArgumentError(param, f"must be distinct positive integers, got {list(values)}")
    return out

"""An in-memory fit holds its feature matrix and one preprocessed copy of train + val, no more.

Measured with tracemalloc, which sees every numpy allocation (not how fast anything runs): the
peak above what the process held before the sweep, against the matrix's size. Before the split
rows were handed to the heads uncopied (:class:`~featpipe.heads.preprocess.Rows`) and the
preprocessing worked block by block, this sweep peaked at about 5× its matrix above the start
(train and val copied raw, then a float64 copy for the statistics, then whole-matrix temporaries
of the transform); the stacked trainer shares the preprocessed array with torch
(``torch.from_numpy``), so torch adds only minibatches.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import sklearn.metrics  # noqa: F401  imported before measuring: a fixed cost, not the matrix's

from featpipe.cache.entry import Features
from featpipe.fitting.sweep import sweep
from featpipe.heads.config import HeadConfig, expand, parse_grid
from featpipe.heads.preprocess import BLOCK_BYTES, Preprocessor, Rows


def _features(n: int, dim: int) -> Features:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, n)
    X = rng.standard_normal((n, dim), dtype=np.float32)
    X[:, :4] += 8 * np.eye(4, dtype=np.float32)[labels]  # learnable
    split = rng.choice(np.array(["train", "val", "test"]), n, p=[0.7, 0.15, 0.15])
    relpath = np.array([f"{i}.png" for i in range(n)])
    names = ["a", "b", "c", "d"]
    return Features(X, labels, labels.astype(float), split, relpath, names, "classification")


@pytest.mark.parametrize("cv", [False, True], ids=["val split, refit", "cross-validation"])
def test_an_in_memory_fit_peaks_near_its_matrix(cv: bool) -> None:
    features = _features(20_000, 768)  # 61 MB of features
    if cv:  # no val split: selection by 3-fold cross-validation of train
        features.split[features.split == "val"] = "train"
    grid = {"head": ["linear"], "standardize": [True], "l2norm": [True], "wd": [0.0, 0.1]}
    configs = expand(parse_grid(grid | {"epochs": [1]}, "grid"), HeadConfig())
    matrix = features.X.nbytes
    preprocessed = int((features.split != "test").mean() * matrix)  # train + val, float32
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        result = sweep(features, configs, cv=3, n_jobs=1)
        peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    assert result.best.test[0]["accuracy"] > 0.35  # it learned (chance: 0.25)
    assert peak <= preprocessed + 8 * BLOCK_BYTES, f"{peak / matrix:.2f}× the matrix"


@pytest.mark.parametrize(("standardize", "l2norm", "pca"), [(True, True, 0), (True, False, 8)])
def test_rows_preprocess_as_their_copy_does(standardize: bool, l2norm: bool, pca: int) -> None:
    """Block by block, over rows picked from a larger matrix, the preprocessing gives what it
    gives on a plain copy of those rows."""
    X = np.random.default_rng(1).normal(3.0, 2.0, (3 * BLOCK_BYTES // (4 * 64), 64))
    X = X.astype(np.float32)
    picked = np.flatnonzero(np.arange(len(X)) % 3 != 1)
    rows, copy = Rows(X, picked), X[picked]
    by_rows = Preprocessor(standardize, l2norm, pca).fit(rows)
    by_copy = Preprocessor(standardize, l2norm, pca).fit(copy)
    np.testing.assert_allclose(by_rows.arrays["mean"], copy.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(by_rows.arrays["scale"], copy.std(axis=0), rtol=1e-5)
    for name, value in by_copy.arrays.items():
        np.testing.assert_array_equal(by_rows.arrays[name], value)
    np.testing.assert_allclose(by_rows.transform(rows), by_copy.transform(copy), atol=1e-5)

"""Sweeps: selection on validation only, CV without a val split, seeds, few-shot, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from featpipe.cache.entry import Features
from featpipe.errors import FeatpipeError
from featpipe.fitting.features import concatenate
from featpipe.fitting.sweep import few_shot, parse_shots, stratified_sample, sweep
from featpipe.heads.config import HeadConfig, expand

GRID = expand({"lr": [1e-4, 1e-2, 1.0], "head": ["linear"]}, HeadConfig(epochs=5))


def features(
    n: int = 900, d: int = 16, c: int = 3, splits=("train", "val", "test"), seed: int = 0
) -> Features:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    labels = (X @ rng.normal(size=(d, c))).argmax(axis=1)
    split = np.array([splits[i % len(splits)] for i in range(n)], dtype=object)
    return Features(
        X,
        labels,
        np.full(n, np.nan),
        split,
        np.array([f"{i}.png" for i in range(n)], dtype=object),
        [f"c{i}" for i in range(c)],
        "classification",
    )


def test_selection_never_looks_at_test() -> None:
    honest = features()
    poisoned = features()
    test = poisoned.split == "test"
    poisoned.labels[test] = (poisoned.labels[test] + 1) % 3  # test labels that reward bad heads
    a, b = sweep(honest, GRID), sweep(poisoned, GRID)
    assert a.best.config == b.best.config
    assert [c.val for c in a.candidates] == [c.val for c in b.candidates]
    assert b.best.test[0]["accuracy"] < 0.5 < a.best.test[0]["accuracy"]
    tested = [c for c in a.candidates if c.test]
    assert tested == [a.best]  # the test split was scored for the chosen config only


def test_cross_validation_when_there_is_no_val_split() -> None:
    result = sweep(features(splits=("train", "train", "test")), GRID, cv=3)
    assert result.selection == "cv3"
    assert result.best.heads and result.best.test  # refitted on all of train, then tested


def test_seeds_give_mean_and_std() -> None:
    result = sweep(features(), GRID[:1], seeds=3)
    cand = result.best
    assert len(cand.val) == len(cand.test) == 3
    assert cand.std("accuracy") >= 0.0
    assert [r["seed"] for r in result.rows()] == [0, 1, 2]


def test_few_shot_sampler_is_stratified_and_reproducible() -> None:
    labels = np.array([0] * 50 + [1] * 30 + [2] * 3)
    first = stratified_sample(labels, 5, seed=1)
    assert np.bincount(labels[first]).tolist() == [5, 5, 3]
    assert np.array_equal(first, stratified_sample(labels, 5, seed=1))
    assert not np.array_equal(first, stratified_sample(labels, 5, seed=2))


def test_few_shot_curve_rises_with_data() -> None:
    curve = few_shot(features(n=1500), HeadConfig(head="logreg"), parse_shots("1,10,all"), 3)
    assert [p["shots"] for p in curve] == [1, 10, "all"]
    assert [p["draws"] for p in curve] == [3, 3, 1]
    assert curve[0]["mean"] < curve[-1]["mean"]
    with pytest.raises(FeatpipeError, match="--shots 0,5"):
        parse_shots("0,5")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.X.__setitem__((3, 2), np.nan), "hold NaN or inf"),
        (lambda f: f.labels.__setitem__(f.split == "train", 0), "train split has only one"),
        (lambda f: f.labels.__setitem__(f.split == "val", 1), "val split has only one class"),
        (lambda f: f.split.__setitem__(f.split == "train", "val"), "train split is empty"),
    ],
)
def test_bad_features_are_clear_errors(mutate, message: str) -> None:
    f = features()
    mutate(f)
    with pytest.raises(FeatpipeError, match=message):
        sweep(f, GRID)


def test_caches_with_different_label_sets_refuse_to_join() -> None:
    a, b = features(), features(c=4)
    with pytest.raises(FeatpipeError, match="caches with different label sets"):
        concatenate([a, b], ["a", "b"])
    joined = concatenate([a, features(seed=1)], ["a", "b"])
    assert joined.X.shape == (900, 32)

"""Repeated splits: re-drawn with the data's own shares, stratified, reproducible, the same for
every backbone whatever its row order; a fixed test split stays; a sweep's intervals, config
verdict and per-image predictions."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from featpipe.cache.entry import Features
from featpipe.errors import ArgumentError
from featpipe.fitting.repeats import CARVE_OUTS, redraw, redrawn, repeat
from featpipe.fitting.sweep import few_shot, sweep
from featpipe.heads.config import HeadConfig, expand
from featpipe.runs.metrics import REDRAWN_ALL, REDRAWN_FOLDS, REDRAWN_VAL, correct_matrix

GRID = expand({"wd": [0.0, 0.1]}, HeadConfig(head="linear", epochs=5, lr=0.1))


def features(source: str = "stratified", n: int = 600, seed: int = 0) -> Features:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 8)).astype(np.float32)
    labels = (X @ rng.normal(size=(8, 3))).argmax(axis=1)
    split = np.array(["train", "train", "train", "train", "val", "test"] * (n // 6), dtype=object)
    return Features(
        X,
        labels,
        np.full(n, np.nan),
        split,
        np.array([f"{i}.png" for i in range(n)], dtype=object),
        ["a", "b", "c"],
        "classification",
        meta={"split_source": source},
    )


def counts(f: Features) -> dict[str, np.ndarray]:
    return {s: np.bincount(f.labels[f.split == s], minlength=3) for s in ("train", "val", "test")}


def test_a_redraw_keeps_the_shares_within_each_class_and_moves_the_images() -> None:
    f = features()
    assert redrawn(f) == REDRAWN_ALL
    again = redraw(f, 1)
    for s in ("val", "test"):  # every class gets the split's share of the data (1/6)
        share = np.mean(f.split == s)
        assert np.allclose(counts(again)[s] / np.bincount(f.labels), share, atol=0.01)
    moved = np.mean(again.split != f.split)
    assert 0.2 < moved < 0.6  # a different split, not a relabelling of a few rows
    assert np.array_equal(redraw(f, 1).split, again.split)  # reproducible
    assert not np.array_equal(redraw(f, 2).split, again.split)  # another draw, another split


def test_a_redraw_does_not_depend_on_row_order() -> None:
    """Every backbone of a dataset gets the same splits, so comparisons pair split by split."""
    f = features()
    order = np.random.default_rng(3).permutation(len(f))
    shuffled = replace(
        f, X=f.X[order], labels=f.labels[order], targets=f.targets[order],
        split=f.split[order], relpath=f.relpath[order],
    )  # fmt: skip
    a, b = redraw(f, 1), redraw(shuffled, 1)
    assert dict(zip(a.relpath, a.split, strict=True)) == dict(zip(b.relpath, b.split, strict=True))


def test_a_fixed_test_split_stays_and_the_val_carve_out_is_redrawn() -> None:
    f = features("folders")
    assert redrawn(f) == REDRAWN_VAL
    again = redraw(f, 1)
    test = f.split == "test"
    assert np.array_equal(again.split == "test", test)
    assert (again.split == "val").sum() == pytest.approx((f.split == "val").sum(), abs=3)
    assert not np.array_equal(again.split, f.split)
    no_val = replace(f, split=np.where(f.split == "val", "train", f.split))
    assert redrawn(no_val) == REDRAWN_FOLDS and redraw(no_val, 1) is no_val  # the folds move


def test_repeat_summarises_split_0_and_the_redrawn_splits() -> None:
    f = features()
    first = sweep(f, GRID)
    repeats = repeat(first, f, GRID, 3)
    assert repeats.scores["accuracy"][0] == first.best.mean("accuracy", "test")
    assert len(repeats.chosen) == 3 and repeats.n_test == [100, 100, 100]
    s = repeats.summary["accuracy"]
    assert s.n == 3 and s.low < s.estimate < s.high and "Nadeau" in s.method
    with pytest.raises(ArgumentError, match="test split"):
        no_test = replace(f, split=np.where(f.split == "test", "train", f.split))
        repeat(sweep(no_test, GRID), no_test, GRID, 2)


def test_a_fixed_test_split_keeps_per_image_correctness_and_resamples_its_images() -> None:
    """Every split scored on the same 100 test images: each split's per-image correctness is
    recorded (its mean is that split's accuracy), accuracy's interval is the two-way bootstrap
    over splits and images, the other metrics' t over splits says it covers the carve-outs only;
    re-drawn test images record none."""
    f = features("folders")
    repeats = repeat(sweep(f, GRID), f, GRID, 3)
    assert repeats.redrawn == REDRAWN_VAL and repeats.correct is not None
    matrix = correct_matrix(repeats.correct)
    assert matrix.shape == (3, 100)
    assert matrix.mean(axis=1) == pytest.approx(repeats.scores["accuracy"])
    s = repeats.summary["accuracy"]
    assert "two-way bootstrap over 3 splits × 100 shared test images" in s.method
    assert s.low <= s.estimate <= s.high and s.estimate == pytest.approx(matrix.mean())
    # the test images' luck is in it: at least as wide as one split's Wilson interval, nearly
    assert s.high - s.low > 0.1
    assert CARVE_OUTS in repeats.summary["macro_f1"].method
    assert repeat(sweep(features(), GRID), features(), GRID, 2).correct is None


def test_a_sweep_keeps_per_image_outputs_intervals_and_a_config_verdict() -> None:
    f = features()
    result = sweep(f, GRID)
    recorded = result.predictions
    assert recorded is not None
    assert list(recorded.splits["test"].relpath) == list(f.relpath[f.split == "test"])
    test = result.verdict.intervals["test"]["accuracy"]
    assert test.n == 100 and test.estimate == pytest.approx(result.best.test[0]["accuracy"])
    assert result.verdict.ranking is not None and len(result.verdict.ranking.comparisons) == 1
    cv = sweep(replace(f, split=np.where(f.split == "val", "train", f.split)), GRID, cv=3)
    # under cross-validation every train image is scored once, out of fold
    assert cv.verdict.intervals["val"]["accuracy"].n == 500


def test_few_shot_points_carry_an_interval_over_draws_and_test_images() -> None:
    curve = few_shot(features(), HeadConfig(head="logreg"), [2, "all"], draws=3)
    for point in curve:
        assert point.interval is not None and point.interval.n == 100
        assert point.interval.low <= point.mean <= point.interval.high
    assert curve[0].interval.high - curve[0].interval.low > 0

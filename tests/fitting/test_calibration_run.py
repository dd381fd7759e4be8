"""Every classification fit records its test calibration, before and after temperature scaling
fitted on val, and the report draws its reliability diagram."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from featpipe.cache.entry import Features
from featpipe.fitting.run import save_run
from featpipe.fitting.sweep import outputs, sweep
from featpipe.heads.config import HeadConfig
from featpipe.reports.report import report
from featpipe.runs.record import load_run

# Few rows in many dimensions, trained long without weight decay: an overconfident head.
OVERCONFIDENT = HeadConfig(head="linear", lr=0.1, wd=0.0, epochs=60, standardize=True)


def features(n: int = 600, d: int = 48, c: int = 4, seed: int = 0) -> Features:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    scores = X @ rng.normal(size=(d, c)) + 2.5 * rng.normal(size=(n, c))  # noisy labels
    split = np.array(["train", "val", "test", "test"] * (n // 4), dtype=object)
    return Features(
        X,
        scores.argmax(axis=1),
        np.full(n, np.nan),
        split,
        np.array([f"{i}.png" for i in range(n)], dtype=object),
        [f"c{i}" for i in range(c)],
        "classification",
    )


def save(result, runs_dir: Path):
    run = save_run(
        runs_dir,
        result,
        dataset="synthetic",
        dataset_root="synthetic",
        spec="none",
        entries=[],
        request={},
        extract_seconds=0.0,
    )
    return load_run(run.path)  # read back through metrics.json


def direct_ece(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Guo et al.'s ECE written out: 15 equal-width bins (lo, hi] of the top probability."""
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == y
    total = 0.0
    edges = np.linspace(0, 1, bins + 1)
    for lo, hi in itertools.pairwise(edges):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return total


def test_a_fit_records_calibration_and_temperature_scaling_helps_an_overconfident_head(
    tmp_path: Path,
) -> None:
    data = features()
    result = sweep(data, [OVERCONFIDENT], refit=False)
    run = save(result, tmp_path / "runs")
    record = run.metrics.calibration
    assert record is not None and record.head == "chosen" and record.note == ""
    is_test = data.split == "test"
    probs = result.best_head.predict_proba(data.X[is_test])
    y = data.y[is_test]
    assert record.before.ece == pytest.approx(direct_ece(probs, y), abs=1e-9)
    assert record.before.nll == pytest.approx(-np.log(probs[np.arange(len(y)), y]).mean())
    assert sum(record.before.count) == is_test.sum()
    # the head is overconfident (T > 1), and the temperature fitted on val lowers test NLL
    assert record.temperature > 1.2
    assert record.after.nll < record.before.nll - 0.05
    assert record.after.ece < record.before.ece
    # temperature scaling changes no prediction: accuracy per bin moves, not the argmax
    assert sum(record.after.count) == is_test.sum()

    page = report(tmp_path / "runs", tmp_path / "report")
    html = page.read_text()
    assert "reliability-1.png" in html and (tmp_path / "report" / "reliability-1.png").is_file()
    assert "temperature-scaled" in html and f"{record.after.ece:.4f}" in html


def test_after_a_refit_the_train_only_head_is_calibrated_on_val() -> None:
    data = features(seed=1)
    result = sweep(data, [OVERCONFIDENT])
    assert result.trained_on == "train+val"
    record = result.calibration
    assert record is not None and record.head == "selection"
    is_test = data.split == "test"
    [test_out] = outputs(result.selection_heads[:1], data, is_test)
    probs = result.selection_heads[0].predict_proba(data.X[is_test])
    assert record.before.ece == pytest.approx(direct_ece(probs, data.y[is_test]), abs=1e-9)
    assert test_out.shape == probs.shape


def test_without_a_val_split_no_temperature_is_fitted_and_knn_is_scored_unscaled() -> None:
    data = features(seed=2)
    data.split[data.split == "val"] = "train"
    record = sweep(data, [HeadConfig(head="logreg")], cv=3).calibration
    assert record.after is None and "no val split" in record.note
    knn = sweep(features(seed=3), [HeadConfig(head="knn", k=15, temperature=0.1)]).calibration
    assert knn.after is None and "not logits" in knn.note and 0 < knn.before.brier < 2


def test_regression_runs_have_no_calibration() -> None:
    data = features(seed=4)
    data.task, data.class_names = "regression", []
    data.targets = data.X[:, 0].astype(np.float64)
    assert sweep(data, [HeadConfig(head="ridge")]).calibration is None

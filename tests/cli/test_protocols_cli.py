"""The protocols through the installed console script: DINOv2's kNN as a fit, retrieval as its
own command, calibration in every classification run; bad values are one-line errors, exit 2."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import TINY, console_script, flags, split_tree
from featpipe.runs.record import list_runs


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return split_tree(tmp_path_factory.mktemp("protocols") / "shapes")


def test_dinov2_knn_sweep_and_calibration_through_fit(dataset, tmp_path) -> None:
    common = [*flags(TINY), "--cache-dir", tmp_path / "cache", "--runs-dir", tmp_path / "runs"]
    grid = ["--sweep", "k=3,20", "temperature=0,0.07"]
    fixed = ["--set", "standardize=false", "l2norm=true"]
    done = console_script("fit", dataset, *common, "--head", "knn", *grid, *fixed)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "knn(k=20, temperature=0.07" in done.stdout and "knn(k=3, temperature=0" in done.stdout
    [run] = list_runs(tmp_path / "runs")
    assert len(run.config["request"]["configs"]) == 4
    assert run.metrics.calibration is not None and run.metrics.calibration.before.count


def test_retrieve_prints_a_leaderboard_and_saves_runs(dataset, tmp_path) -> None:
    common = [*flags(TINY), "--cache-dir", tmp_path / "cache", "--runs-dir", tmp_path / "runs"]
    other = ["-b", "resnet18@none"]
    args = ["retrieve", dataset, *common, *other, "--gallery", "test", "--metric", "l2"]
    done = console_script(*args, columns=200)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "retrieval leaderboard (retrieval(l2, gallery=test)" in done.stdout
    assert "recall@10" in done.stdout and "mAP@R" in done.stdout
    assert "test_efficientnet" in done.stdout and "resnet18@none" in done.stdout
    # every score with its 95% interval over the 15 queries, on both rows
    rows = r"^[\s│]*(test_efficientnet|resnet18@none)\s"  # inside the table's border or not
    scored = [line for line in done.stdout.splitlines() if re.search(rows, line)]
    assert len(scored) == 2, done.stdout
    for line in scored:
        assert len(re.findall(r"\d\.\d+ \[\d\.\d+, \d\.\d+\]", line)) == 4, line
        assert re.search(r"\][\s│]+15[\s│]", line), line
    # and the two compared on the same queries, score by score (paired bootstrap, Holm)
    for score in ("recall@1", "recall@5", "recall@10", "map@r"):
        assert f"on the same 15 test queries, {score}: " in done.stdout
    runs = list_runs(tmp_path / "runs")
    assert sorted(r.config["backbone"] for r in runs) == ["resnet18@none", "test_efficientnet@none"]
    assert all(r.config["kind"] == "retrieval" for r in runs)
    # headers unwrapped
    listed = console_script("results", "--runs-dir", tmp_path / "runs", columns=300)
    assert listed.returncode == 0 and "test recall@1" in listed.stdout
    assert "test map@r" in listed.stdout and "gallery: test" in listed.stdout


@pytest.mark.parametrize(
    ("args", "flag", "message"),
    [
        (["fit", "--head", "knn", "--set", "temperature=-1"], "--set", "temperature=-1: must be"),
        (["fit", "--head", "knn", "--set", "temperature=x"], "--set", "temperature=x: expected"),
        (["retrieve", "--gallery", "val"], "--gallery", "val: choose one of train, test"),
        (["retrieve", "--metric", "dot"], "--metric", "dot: choose one of cosine, l2"),
        (["retrieve", "--ks", "0,5"], "--ks", "0,5: give distinct positive ranks"),
    ],
)
def test_bad_values_are_one_line_errors(dataset, tmp_path, args, flag, message) -> None:
    command, *rest = args
    done = console_script(command, dataset, *rest, "--cache-dir", tmp_path / "cache")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert flag in lines[0] and message in lines[0]

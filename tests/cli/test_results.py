"""``featpipe results`` through the console script: filters, columns, cut rows, ``chosen``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import console_script
from featpipe.runs.metrics import RunMetrics
from featpipe.runs.record import write_run


def _run(runs: Path, dataset: str, seeds: int, chosen_lr: float) -> str:
    rows = [
        {
            "head": head,
            "lr": lr,
            "wd": 0.0,
            "seed": seed,
            "val_accuracy": 0.5 + lr * 10 + 0.01 * seed + (0.1 if head == "mlp" else 0.0),
            "fit_seconds": 0.1,
            "chosen": head == "mlp" and lr == chosen_lr,
        }
        for head in ("linear", "mlp")
        for lr in (0.001, 0.01)
        for seed in range(seeds)
    ]
    run = write_run(
        runs,
        kind="fit",
        dataset=dataset,
        dataset_root=str(runs / dataset),
        backbone="tf_efficientnet_lite0",
        request={},
        metrics=RunMetrics(metric="accuracy"),
        rows=rows,
    )
    return run.path.name


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, list[str]]:
    folder = tmp_path / "runs"
    names = [_run(folder, "elpv", 2, 0.01), _run(folder, "fashion", 1, 0.001)]
    return folder, names


def test_filter_that_matches_nothing_says_so(runs) -> None:
    folder, _ = runs
    done = console_script("results", "--runs-dir", folder, "--where", "head=linearx", columns=160)
    assert done.returncode == 2
    line = done.stderr.strip()
    assert len(line.splitlines()) == 1 and "fit something first" not in line
    assert "--where head=linearx: no row matches" in line and "head takes linear, mlp" in line


@pytest.mark.parametrize("option", [["--where", "val_acc=1"], ["--sort", "val_acc"]])
def test_unknown_columns_are_refused_with_the_valid_ones(runs, option) -> None:
    folder, _ = runs
    done = console_script("results", "--runs-dir", folder, *option, columns=160)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "val_acc" in done.stderr and "val_accuracy" in done.stderr and "head" in done.stderr


def test_table_names_runs_marks_one_chosen_per_run_and_says_when_cut(runs) -> None:
    folder, names = runs
    done = console_script("results", "--runs-dir", folder, columns=160)
    assert done.returncode == 0, done.stderr
    assert all(name in done.stdout for name in names)
    assert done.stdout.count("✓") == 2  # one per run, although elpv's choice has two seeds
    assert "±" in done.stdout  # seeds averaged with their spread
    assert "showing" not in done.stdout
    cut = console_script("results", "--runs-dir", folder, "--limit", "3", columns=160)
    assert "showing 3 of 8" in cut.stdout


def test_where_numbers_compare_as_numbers_and_csv_keeps_seeds(runs, tmp_path) -> None:
    folder, _ = runs
    out = tmp_path / "rows.csv"
    where = ["--where", "lr=1e-2", "dataset=elpv"]
    done = console_script("results", "--runs-dir", folder, *where, "--csv", out, columns=160)
    assert done.returncode == 0, done.stderr
    assert re.search(r"2 configs \(4 rows\)", done.stdout)
    assert len(out.read_text().splitlines()) == 1 + 4


def test_empty_runs_folder_says_fit_something_first(tmp_path) -> None:
    done = console_script("results", "--runs-dir", tmp_path / "none", columns=160)
    assert done.returncode == 2 and "fit something first" in done.stderr

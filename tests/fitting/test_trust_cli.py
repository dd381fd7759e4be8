"""Every score with its n and 95% interval, paired comparisons and --repeats, through the
installed console script (what a person meets in a terminal) and from Python."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY, TINY_EXTRACT, console_script, flags, make_tree
from featpipe.fitting.stage import fit
from featpipe.runs.predictions import FILE, RunPredictions
from featpipe.runs.record import load_run

# an interval as the leaderboards print it: 0.333 [0.10, 0.70]
INTERVAL = re.compile(r"\d\.\d+ \[-?\d\.\d+, \d\.\d+\]")


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "shapes", classes=("a", "b", "c"), per_class=14)


def test_fit_prints_n_and_intervals_and_records_them(dataset, tmp_path) -> None:
    runs = tmp_path / "runs"
    done = console_script(
        "fit", dataset, *flags(TINY), "--cache-dir", tmp_path / "cache", "--runs-dir", runs,
        "--sweep", "wd=0,0.1", "--set", "epochs=3",
        columns=250,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "95% intervals, val n=6, test n=6" in out
    assert len(INTERVAL.findall(out)) >= 3  # both configs' val, the chosen one's test
    assert "configs on the same val images:" in out
    assert re.search(r"test: accuracy \d\.\d+ \[\d\.\d+, \d\.\d+\] \(n=6\)", out)
    [run_json] = runs.rglob("run.json")
    run = load_run(run_json.parent)
    test = run.metrics.intervals["test"]["accuracy"]
    assert test.n == 6 and test.method == "wilson" and test.low <= test.estimate <= test.high
    assert run.metrics.intervals["val"]["macro_f1"].method.startswith("bootstrap BCa")
    assert run.metrics.verdict  # two configs: compared on the val images
    assert f"test accuracy={test}" in repr(run)  # a notebook's one line carries it too
    # the per-image predictions beside metrics.json, arrays only
    recorded = RunPredictions.load(run.path / FILE)
    assert recorded.on("test") is not None and len(recorded.splits["test"].relpath) == 6
    with np.load(run.path / FILE, allow_pickle=False) as data:
        assert all(data[k].dtype != object for k in data.files)
    # rows.csv and the results CSV carry n and every interval of the chosen config
    csv_path = tmp_path / "results.csv"
    done = console_script("results", "--runs-dir", runs, "--csv", csv_path, columns=250)
    assert done.returncode == 0, done.stderr[-2000:]
    assert INTERVAL.search(done.stdout)
    for path in (run.path / "rows.csv", csv_path):
        with path.open() as handle:
            rows = list(csv.DictReader(handle))
        [chosen] = [r for r in rows if r["chosen"] == "True"]
        assert chosen["test_n"] == "6" and chosen["val_n"] == "6"
        low, high = float(chosen["test_accuracy_low"]), float(chosen["test_accuracy_high"])
        assert low <= float(chosen["test_accuracy"]) <= high
        assert float(chosen["test_macro_f1_low"]) <= float(chosen["test_macro_f1_high"])
        assert all(r["val_accuracy_low"] for r in rows)  # every config's selection score


def test_compare_of_a_backbone_with_itself_is_tied_with_p_1(tmp_path) -> None:
    data = make_tree(tmp_path / "pairs", per_class=12)
    done = console_script(
        "compare", "--data", data, "--backbone", "test_efficientnet@none",
        "test_efficientnet@none", "--sweep", "head=logreg", "--runs-dir", tmp_path / "runs",
        "--cache-dir", tmp_path / "cache", *flags(TINY_EXTRACT),
        columns=250,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "tied (p = 1)" in out
    assert re.search(r"pairs, on the same \d+ test images: .* are tied", out)
    assert "worse" not in out
    assert INTERVAL.search(out)


def test_compare_over_repeats_on_a_fixed_test_split_resamples_its_images(tmp_path) -> None:
    """A fixed test/ folder: every repeat is scored on the same test images, so the paired
    verdict over the splits is the two-way bootstrap over splits and those images."""
    data = make_tree(tmp_path / "fixed", per_class=12, split="train")
    make_tree(data, per_class=6, split="test", seed=1)
    done = console_script(
        "compare", "--data", data, "--backbone", "test_efficientnet@none",
        "test_efficientnet@none", "--sweep", "head=logreg", "--holdout", "0.25", "--repeats",
        "3", "--runs-dir", tmp_path / "runs", "--cache-dir", tmp_path / "cache",
        *flags(TINY_EXTRACT),
        columns=250,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r"fixed, paired over 3 splits \(two-way bootstrap\): .* are tied", done.stdout)


def test_repeats_through_the_command_line(dataset, tmp_path) -> None:
    done = console_script(
        "fit", dataset, *flags(TINY), "--cache-dir", tmp_path / "cache", "--runs-dir",
        tmp_path / "runs", "--head", "logreg", "--repeats", "3",
        columns=250,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "over 3 splits (re-drawn: train/val/test" in done.stdout
    assert re.search(r"test accuracy -?\d\.\d+ \[-?\d\.\d+, \d\.\d+\] \(corrected", done.stdout)
    [run_json] = (tmp_path / "runs").rglob("run.json")
    repeats = load_run(run_json.parent).metrics.repeats
    assert repeats is not None and len(repeats.scores["accuracy"]) == 3
    bad = console_script("fit", dataset, "--repeats", "0", columns=250)
    assert bad.returncode == 2 and "--repeats" in bad.stderr


def test_repeats_from_python_redraw_splits_and_keep_split_0(dataset, tmp_path) -> None:
    options = {"extract_options": TINY_EXTRACT | {"cache_dir": tmp_path / "cache"}}
    once, single = fit(dataset, "test_efficientnet", head={"head": "logreg"},
                       runs_dir=tmp_path / "a", **options)  # fmt: skip
    run, result = fit(dataset, "test_efficientnet", head={"head": "logreg"}, repeats=4,
                      runs_dir=tmp_path / "b", **options)  # fmt: skip
    repeats = run.metrics.repeats
    assert once.metrics.repeats is None and repeats is not None and result.repeats == repeats
    assert repeats.redrawn == "train/val/test" and len(repeats.chosen) == 4
    scores = repeats.scores["accuracy"]
    assert scores[0] == single.best.mean("accuracy", "test")  # split 0: the data's own
    summary = repeats.summary["accuracy"]
    assert summary.n == 4 and summary.unit == "splits"
    assert summary.estimate == pytest.approx(np.mean(scores))
    assert repeats.std["accuracy"] == pytest.approx(np.std(scores, ddof=1))
    assert repeats.n_test == [6, 6, 6, 6]
    assert run.config["request"]["repeats"] == 4


def test_with_several_seeds_the_chosen_config_is_the_one_called_best(
    dataset, tmp_path, capsys
) -> None:
    """The leaderboard ranks configs by their mean over seeds and the sweep chooses by it; the
    paired comparison must name the same config best (it once used the first seed alone)."""
    from featpipe.cli.app import main

    args = ["fit", dataset, *flags(TINY), "--cache-dir", tmp_path / "cache"]
    args += ["--runs-dir", tmp_path / "runs", "--sweep", "lr=0.001,0.1", "--set", "epochs=2"]
    assert main([str(a) for a in [*args, "--seeds", "3"]]) == 0
    out = capsys.readouterr().out
    assert "configs on the same val images, over their 3 seeds: " in out
    [first] = [line for line in out.splitlines() if line.startswith("│ 1 ")]
    assert "best" in first  # row 1 is the chosen config: ranked by the mean, like the choice
    report = tmp_path / "report"
    assert main(["report", "--runs-dir", str(tmp_path / "runs"), "-o", str(report)]) == 0
    assert (
        "configs on the same val images, over their 3 seeds: "
        in (report / "index.html").read_text()
    )

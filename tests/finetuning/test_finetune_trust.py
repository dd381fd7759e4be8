"""A fine-tune's numbers as a fit's: per-image predictions in predictions.npz, every score with
its n and 95% interval (metrics.json, rows.csv, the console line, results and the report), and
the paired test against the head it started from on the same test images."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

import featpipe
from conftest import FEATPIPE, TINY, TINY_EXTRACT, TINY_FINETUNE, console_script, make_tree
from featpipe.finetuning.config import FinetuneConfig
from featpipe.finetuning.plan import make_plan
from featpipe.finetuning.refit import refit_plan
from featpipe.finetuning.stage import finetune
from featpipe.finetuning.trainer import Trainer
from featpipe.finetuning.trust import against_start
from featpipe.fitting.stage import fit
from featpipe.reports.report import report
from featpipe.runs.metrics import Gain, RunMetrics
from featpipe.runs.predictions import FILE, SELECTION_TEST, RunPredictions, SplitOutputs
from featpipe.runs.record import list_runs, load_run, results_table
from featpipe.stats import Interval, wilson

# random images in three classes: near chance, so the start head and the fine-tune disagree on
# some test images and the paired test has discordant images to count
CONFIG = TINY_FINETUNE | {"epochs": 2, "lr": 0.05, "unfreeze": "all"}


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A linear head fitted (and refitted on train + val, as fit does by default), then a
    fine-tune from it, through the console script as a user runs it."""
    root = tmp_path_factory.mktemp("trust")
    data = make_tree(root / "imgs", classes=("a", "b", "c"), per_class=14)
    start, _ = fit(
        data,
        "test_efficientnet",
        head={"head": "linear", "epochs": 20},
        runs_dir=root / "runs",
        extract_options=TINY_EXTRACT | {"cache_dir": root / "cache"},
    )
    args = ["finetune", data, "--from", start.path, "--epochs", "2", "--lr", "0.05"]
    args += ["--unfreeze", "all", "--no-augment", "--batch-size", "8", "--runs-dir", root / "runs"]
    done = console_script(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    (root / "stdout.txt").write_text(done.stdout)
    [tuned] = [r for r in list_runs(root / "runs") if r.kind == "finetune"]
    return {"root": root, "data": data, "start": start.path, "ft": tuned.path}


def start_head_on_test(tuned: dict[str, Path]) -> dict[str, int]:
    """The oracle: the head LP-FT started from (selection's, on train alone) applied to the
    cached test features, class by image path."""
    run = load_run(tuned["start"])
    assert run.metrics.trained_on == "train+val"  # so the start head is not the run's head
    cached = featpipe.extract(tuned["data"], cache_dir=tuned["root"] / "cache", **TINY).load()
    test = cached.split == "test"
    pred = run.selection_head().decision_function(cached.X[test]).argmax(axis=1)
    return dict(zip(cached.relpath[test], pred.tolist(), strict=True))


def test_a_fine_tune_records_its_predictions_and_every_score_with_n_and_interval(
    tuned: dict[str, Path],
) -> None:
    run = load_run(tuned["ft"])
    recorded = RunPredictions.load(tuned["ft"] / FILE)
    m = run.metrics
    assert set(recorded.splits) == {"val", "test"}
    for split in ("val", "test"):
        part = recorded.splits[split]
        assert len(part.relpath) == m.split_sizes[split] > 0
        pred = part.outputs.argmax(axis=1)
        correct = int(np.sum(pred == part.y))
        # the recorded score is these predictions' accuracy, its interval their Wilson interval
        assert getattr(m, split).mean == pytest.approx(correct / len(pred))
        interval = m.intervals[split]["accuracy"]
        expected = scipy_stats.binomtest(correct, len(pred)).proportion_ci(method="wilson")
        assert (interval.low, interval.high) == pytest.approx((expected.low, expected.high))
        assert interval.n == len(pred) and interval == wilson(correct, len(pred))
        # the other metrics get the bootstrap, with the same n
        macro = m.intervals[split]["macro_f1"]
        assert macro.method.startswith("bootstrap BCa") and macro.n == len(pred)
    test = recorded.splits["test"]
    np.testing.assert_array_equal(
        np.array(m.confusion), confusion(test.y, test.outputs.argmax(axis=1), 3)
    )
    # the labels are the dataset's: the image's folder
    classes = m.class_names
    assert all(classes[y] == Path(p).parent.name for p, y in zip(test.relpath, test.y, strict=True))
    [row] = run.rows()
    assert row["test_n"] == m.split_sizes["test"]
    assert row["test_accuracy_low"] == pytest.approx(m.intervals["test"]["accuracy"].low)
    assert row["val_macro_f1_high"] == pytest.approx(m.intervals["val"]["macro_f1"].high)


def confusion(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    return np.array([[np.sum((y == a) & (pred == b)) for b in range(k)] for a in range(k)])


def test_the_gain_over_the_start_head_is_paired_on_the_same_test_images(
    tuned: dict[str, Path],
) -> None:
    m = load_run(tuned["ft"]).metrics
    test = RunPredictions.load(tuned["ft"] / FILE).splits["test"]
    start = start_head_on_test(tuned)
    ours = test.outputs.argmax(axis=1)
    theirs = np.array([start[p] for p in test.relpath])
    right_ours, right_theirs = ours == test.y, theirs == test.y
    gain = m.gain
    assert gain is not None and m.gain_note == ""
    assert gain.start == str(tuned["start"]) and gain.metric == "accuracy"
    assert gain.difference.estimate == pytest.approx(right_ours.mean() - right_theirs.mean())
    only_ours = int(np.sum(right_ours & ~right_theirs))
    only_theirs = int(np.sum(right_theirs & ~right_ours))
    assert only_ours + only_theirs > 0  # the case has discordant images to count
    exact = scipy_stats.binomtest(only_ours, only_ours + only_theirs, 0.5).pvalue
    assert gain.test == "McNemar exact" and gain.p == pytest.approx(exact)
    d = gain.difference
    assert d.low <= d.estimate <= d.high and d.n == len(test.relpath)


def test_the_console_line_results_and_the_report_show_the_intervals_and_the_gain(
    tuned: dict[str, Path],
) -> None:
    m = load_run(tuned["ft"]).metrics
    out = (tuned["root"] / "stdout.txt").read_text()
    val, test = m.intervals["val"]["accuracy"], m.intervals["test"]["accuracy"]
    assert f"val accuracy {val}, test accuracy {test}" in out  # 0.6 [0.31, 0.83] (n=10)
    assert str(m.gain) in out and "fine-tuning " in out and "McNemar exact" in out
    assert f"(n={m.split_sizes['test']})" in out
    # results: the fine-tune's row with its interval and n, through the console script
    runs = tuned["root"] / "runs"
    listed = subprocess.run(
        [FEATPIPE, "results", "--runs-dir", str(runs), "--where", "head=finetune"],
        capture_output=True,
        text=True,
        timeout=300,
        env={"COLUMNS": "300", "PATH": str(FEATPIPE.parent)},
    )
    assert listed.returncode == 0, listed.stderr
    assert f"[{test.low:.2f}, {test.high:.2f}]" in listed.stdout
    [row] = [r for r in results_table(runs) if r["head"] == "finetune"]
    assert row["test_n"] == m.split_sizes["test"]
    # the report: the leaderboard's interval and test n, the fine-tune's scores and its gain
    page = report(runs, tuned["root"] / "report").read_text()
    assert test.format() in page and f"Scores (95% intervals): val accuracy {val}" in page
    assert str(m.gain)[1:] in page  # a sentence there: its first letter is a capital


def test_a_start_run_without_the_head_s_test_predictions_says_why_there_is_no_gain(
    tuned: dict[str, Path], tmp_path: Path
) -> None:
    test = RunPredictions.load(tuned["ft"] / FILE).splits["test"]
    older = tmp_path / "older"
    shutil.copytree(tuned["start"], older)
    (older / FILE).unlink()  # a fit run written before predictions were kept
    gain, note = against_start(older, test, "classification", 3, "accuracy")
    assert gain is None and "recorded no test predictions of that head" in note
    # the start head's outputs in another order are matched by path, the same gain
    gain, note = against_start(tuned["start"], reverse(test), "classification", 3, "accuracy")
    assert note == "" and gain == load_run(tuned["ft"]).metrics.gain
    # other images: no pairing, and it says so
    other = SplitOutputs(test.relpath[1:], test.y[1:], test.outputs[1:])
    gain, note = against_start(tuned["start"], other, "classification", 3, "accuracy")
    assert gain is None and "tested on other images" in note


def reverse(part: SplitOutputs) -> SplitOutputs:
    return SplitOutputs(part.relpath[::-1], part.y[::-1], part.outputs[::-1])


def test_the_start_run_keeps_selection_s_head_on_test_apart_from_the_refitted_one(
    tuned: dict[str, Path],
) -> None:
    recorded = RunPredictions.load(tuned["start"] / FILE)
    start = start_head_on_test(tuned)
    kept = recorded.splits[SELECTION_TEST]
    assert [start[p] for p in kept.relpath] == kept.outputs.argmax(axis=1).tolist()
    assert load_run(tuned["start"]).test_outputs() is not None


def test_a_fresh_head_has_nothing_to_compare_with(tmp_path: Path) -> None:
    data = make_tree(tmp_path / "imgs", classes=("a", "b"), per_class=8)
    run, result = finetune(data, FinetuneConfig(**CONFIG), runs_dir=tmp_path / "runs")
    assert result.trust.gain is None and result.trust.gain_note == ""
    metrics = json.loads((run.path / "metrics.json").read_text())
    assert metrics["gain"] is None and metrics["gain_note"] == ""
    # two classes: AUROC from the outputs, with its bootstrap interval
    auroc = metrics["intervals"]["test"]["auroc"]
    assert 0 <= auroc["low"] <= auroc["estimate"] <= auroc["high"] <= 1
    assert RunMetrics.from_dict(metrics).intervals["test"]["auroc"] == Interval(**auroc)


@pytest.mark.parametrize(
    ("estimate", "low", "high", "p", "said"),
    [
        (0.041, 0.012, 0.070, 0.006, "gained 4.1 points [1.2, 7.0] of test accuracy"),
        (-0.023, -0.056, 0.010, 0.2, "lost 2.3 points [-1.0, 5.6] of test accuracy"),
    ],
)
def test_the_gain_reads_as_a_sentence(
    estimate: float, low: float, high: float, p: float, said: str
) -> None:
    d = Interval(estimate, low, high, 44, "paired bootstrap BCa")
    text = str(Gain("runs/x", "accuracy", d, p, "McNemar exact"))
    assert said in text and "over the head it started from (n=44)" in text
    assert ("no difference these test images can tell" in text) == (p > 0.05)
    r2 = str(Gain("runs/x", "r2", Interval(0.05, 0.01, 0.09, 30, "b"), 0.01, "paired bootstrap"))
    assert "gained 0.050 [0.010, 0.090] of test r2" in r2  # not a proportion: no points


def test_a_refit_starts_from_the_start_run_s_own_head_and_is_compared_with_it(
    tuned: dict[str, Path], tmp_path: Path
) -> None:
    start = load_run(tuned["start"])
    config = FinetuneConfig(**CONFIG | {"from_run": str(start.path), "refit": True, "workers": 0})
    plan = make_plan(tuned["data"], config, tmp_path / "run")
    before_training = Trainer(refit_plan(plan, 0)).model.head[1].state_dict()
    own, selection = start.head().module.state_dict(), start.selection_head().module.state_dict()
    assert all(torch.equal(before_training[k], own[k]) for k in own)
    assert not all(torch.equal(own[k], selection[k]) for k in own)  # so the check can fail

    run, result = finetune(tuned["data"], config, tmp_path / "run")
    test = RunPredictions.load(run.path / FILE).splits["test"]
    theirs = start.test_outputs(selection=False).aligned(test.relpath)
    right_ours = test.outputs.argmax(axis=1) == test.y
    right_theirs = theirs.outputs.argmax(axis=1) == theirs.y
    gain = result.trust.gain
    assert gain is not None and result.trained_on == "train+val"
    assert gain.difference.estimate == pytest.approx(right_ours.mean() - right_theirs.mean())


def test_a_refit_is_paired_with_the_start_run_s_own_head_not_selection_s(
    tuned: dict[str, Path],
) -> None:
    # the start run's own head tested against itself: no difference, whatever the images; its
    # selection head differs on some test image (macro F1 sees which wrong class it predicts)
    own = load_run(tuned["start"]).test_outputs(selection=False)
    same, _ = against_start(tuned["start"], own, "classification", 3, "macro_f1", refitted=True)
    other, _ = against_start(tuned["start"], own, "classification", 3, "macro_f1")
    assert same is not None and same.difference.estimate == 0.0
    assert other is not None and other.difference.estimate != 0.0

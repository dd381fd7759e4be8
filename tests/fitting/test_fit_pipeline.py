"""fit → results → predict → export → compare → report, through the CLI and the library."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import TINY, TINY_EXTRACT, console_script, flags, make_tree
from featpipe.cli.app import main
from featpipe.errors import FeatpipeError
from featpipe.fitting.stage import fit
from featpipe.heads.config import HeadConfig
from featpipe.reports.compare import read_experiment
from featpipe.reports.diagnosis import diagnose
from featpipe.runs.record import load_run


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "shapes", classes=("a", "b", "c"), per_class=14)


def test_fit_cli_prints_leaderboard_and_results_export_csv(dataset, tmp_path, capsys) -> None:
    args = [
        "fit",
        dataset,
        *flags(TINY),
        "--cache-dir",
        tmp_path / "cache",
        "--runs-dir",
        tmp_path / "runs",
        "--sweep",
        "lr=1e-3,1e-2",
        "head=linear,logreg",
        "--set",
        "epochs=3",
    ]
    assert main([str(a) for a in args]) == 0
    out = capsys.readouterr().out
    assert "head leaderboard" in out and "logreg" in out
    assert "linear(lr=0.001, epochs=3)" in out  # what varies, and what --set changed
    assert "chosen:" in out and "run:" in out
    csv_path = tmp_path / "rows.csv"
    assert main(["results", "--runs-dir", str(tmp_path / "runs"), "--csv", str(csv_path)]) == 0
    with csv_path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 and {r["head"] for r in rows} == {"linear", "logreg"}
    assert sum(r["chosen"] == "True" for r in rows) == 1
    assert all(r["dataset"] == "shapes" and r["backbone"] == "test_efficientnet@none" for r in rows)


def test_fit_refits_on_train_and_val_unless_told_not_to(dataset, tmp_path) -> None:
    """Through the console script: the run says what its head was trained on, keeps the
    train-only head beside it, and --no-refit keeps selection's head as the run's head."""
    common = [*flags(TINY), "--cache-dir", tmp_path / "cache", "--holdout", "0.3"]
    common += ["--set", "epochs=3", "--sweep", "wd=0,0.1"]
    runs = {}
    for name, extra in (("refit", []), ("plain", ["--no-refit"])):
        done = console_script("fit", dataset, *common, *extra, "--runs-dir", tmp_path / name)
        assert done.returncode == 0, done.stderr[-2000:]
        [run_json] = (tmp_path / name).rglob("run.json")
        runs[name] = load_run(run_json.parent)
        assert ("refitted on train + val" in done.stdout) == (name == "refit")
    refit, plain = runs["refit"], runs["plain"]
    assert refit.metrics.trained_on == "train+val" and plain.metrics.trained_on == "train"
    assert refit.config["request"]["refit"] and not plain.config["request"]["refit"]
    assert (refit.path / "selection-head").is_dir() and not (plain.path / "selection-head").exists()
    # the same selection; the refit's train-only head is --no-refit's head, tested the same
    assert refit.metrics.val == plain.metrics.val
    assert refit.metrics.test_before_refit.all == plain.metrics.test.all
    kept, alone = refit.selection_head(), plain.head()
    states = kept.module.state_dict(), alone.module.state_dict()
    for p, q in zip(*(state.values() for state in states), strict=True):
        assert (p == q).all()
    assert plain.selection_head().config == alone.config  # no refit: the run's own head


def test_a_run_records_head_configs_one_way(dataset, tmp_path) -> None:
    """run.json's request, metrics.json's chosen head, rows.csv, curves.json and head.json all
    hold HeadConfig.to_dict(); the label names every option that differs from its default."""
    run, result = fit(
        dataset,
        "test_efficientnet",
        grid={"lr": ["1e-3", 1e-2]},
        head={"head": "mlp", "hidden": "16", "dropout": "0.3", "epochs": 2},
        seeds=2,
        runs_dir=tmp_path / "runs",
        extract_options=TINY_EXTRACT | {"cache_dir": tmp_path / "cache"},
    )
    configs = [c.config for c in result.candidates]
    request = json.loads((run.path / "run.json").read_text())["request"]
    assert request["head"] == {"head": "mlp", "hidden": 16, "dropout": 0.3, "epochs": 2}
    assert request["grid"] == {"lr": [1e-3, 1e-2]}
    assert request["configs"] == [c.to_dict() for c in configs]
    metrics = json.loads((run.path / "metrics.json").read_text())
    assert metrics["chosen"] == result.best.config.to_dict()
    assert (
        metrics["chosen_label"].startswith("mlp(")
        and "hidden=16, dropout=0.3" in (metrics["chosen_label"])
    )
    with (run.path / "rows.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4
    for row in rows:
        config = HeadConfig.from_dict(row, ignore_unknown=True)
        assert {k: row[k] for k in config.to_dict()} == {
            k: str(v) for k, v in config.to_dict().items()
        }
        assert config in {replace(c, seed=int(row["seed"])) for c in configs}
    curves = json.loads((run.path / "curves.json").read_text())
    assert [c["config"] for c in curves] == [c.to_dict() for c in configs for _ in range(2)]
    head = json.loads((run.path / "head" / "head.json").read_text())
    assert head["config"] == result.best.config.to_dict()
    assert run.head().config == result.best.config


def test_fit_says_which_shot_counts_it_left_out(dataset, tmp_path, capsys) -> None:
    args = [
        "fit",
        dataset,
        *flags(TINY),
        "--cache-dir",
        tmp_path / "cache",
        "--runs-dir",
        tmp_path / "runs",
        "--head",
        "logreg",
        "--holdout",
        "0.25",
        "--shots",
        "1,5,50",
        "--draws",
        "2",
    ]
    assert main([str(a) for a in args]) == 0
    out = capsys.readouterr().out
    assert "few-shot: 50 per class left out: the smallest train class" in out
    assert "the 'all' point uses every training image" in out


def test_bad_sweep_values_are_clear_errors(dataset, tmp_path, capsys) -> None:
    code = main(["fit", str(dataset), "--sweep", "lr=fast", "--runs-dir", str(tmp_path)])
    assert code == 2 and "--sweep lr=fast: expected a number" in capsys.readouterr().err
    code = main(["fit", str(dataset), "--sweep", "head=tree"])
    assert code == 2 and "--sweep head=tree: choose one of linear" in capsys.readouterr().err


def test_run_from_a_newer_version_is_refused(dataset, tmp_path) -> None:
    run, _ = fit(
        dataset,
        "test_efficientnet",
        head={"head": "knn"},
        runs_dir=tmp_path / "r",
        extract_options=TINY_EXTRACT | {"cache_dir": tmp_path / "cache"},
    )
    config = json.loads((run.path / "run.json").read_text())
    config["format"] = 99
    (run.path / "run.json").write_text(json.dumps(config))
    with pytest.raises(FeatpipeError, match="written by a newer featpipe"):
        load_run(run.path)


def test_compare_two_datasets_two_backbones_with_random_control(tmp_path, capsys) -> None:
    a = make_tree(tmp_path / "set-a", per_class=12)
    b = make_tree(tmp_path / "set-b", classes=("x", "y", "z"), per_class=10, seed=5)
    experiment = tmp_path / "exp.toml"
    experiment.write_text(
        f'data = ["{a}", "{b}"]\n'
        'backbones = ["tf_efficientnet_lite0", "tf_efficientnet_lite0@none"]\n'
        f'runs_dir = "{tmp_path / "runs"}"\n'
        '[sweep]\nhead = ["logreg", "knn"]\n'
        f'[extract]\ncache_dir = "{tmp_path / "cache"}"\nimage_size = 32\nprecision = "fp32"\n'
        'engine = "torch"\nbatch_size = 8\nworkers = 0\n'
    )
    assert read_experiment(experiment).backbones[1] == "tf_efficientnet_lite0@none"
    assert main(["compare", "--experiment", str(experiment)]) == 0
    out = capsys.readouterr().out
    # one table per dataset, its rows on one line each (captured output is 160 columns wide)
    assert "set-a: backbones by val accuracy" in out and "set-b: backbones by val" in out
    table = [line.strip() for line in out.splitlines()]
    table = [line for line in table if line.startswith("tf_efficientnet_lite0")]
    assert len(table) == 4
    # each dataset's rows compared on the same test images, below the table
    assert "set-a, on the same " in out and "set-b, on the same " in out
    assert "vs random" in out
    controls = [r for r in table if r.startswith("tf_efficientnet_lite0@none")]
    gaps = [r for r in table if r not in controls]
    # the pretrained rows carry one interval more than their controls: the gap's
    assert len(gaps) == 2 and all(g.count("[") == controls[0].count("[") + 1 for g in gaps)
    assert (
        main(["report", "--runs-dir", str(tmp_path / "runs"), "-o", str(tmp_path / "report")]) == 0
    )
    page = (tmp_path / "report" / "index.html").read_text()
    assert "heatmap-accuracy.png" in page
    assert (tmp_path / "report" / "heatmap-accuracy.png").stat().st_size > 1000


def test_compare_on_the_command_line_takes_several_values(tmp_path, capsys) -> None:
    a = make_tree(tmp_path / "one", per_class=10)
    b = make_tree(tmp_path / "two", per_class=10, seed=3)
    code = main(
        [
            "compare",
            "--data",
            str(a),
            str(b),
            "--backbone",
            "test_efficientnet@none",
            "test_resnet@none",
            "--sweep",
            "head=knn",
            "--runs-dir",
            str(tmp_path / "runs"),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--precision",
            "fp32",
            "--engine",
            "torch",
            "--image-size",
            "32",
        ]
    )
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.strip().startswith("test_") and "@none" in line]
    assert len(rows) == 4


@pytest.mark.parametrize(
    ("train", "val", "loss", "verdict"),
    [
        (0.99, 0.80, None, "overfit"),
        (0.55, 0.52, None, "underfit"),
        (0.97, 0.95, None, "good fit"),
        (0.92, 0.88, [0.5, 0.3, 0.4, 0.5], "overfit"),
    ],
)
def test_diagnosis_quadrants(train, val, loss, verdict) -> None:
    assert diagnose(train, val, chance_error=0.9, val_loss=loss).verdict == verdict

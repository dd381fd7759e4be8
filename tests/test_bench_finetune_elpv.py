"""``benchmarks/bench_finetune_elpv.py``: the paper's split (seeded, stratified, written once),
the row selection, and its ``--smoke`` mode end to end (a few rows here; every row with
``pytest -m slow``)."""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from featpipe.errors import StorageError
from featpipe.finetuning.config import FinetuneConfig
from featpipe.runs.predictions import SplitOutputs

ROOT = Path(__file__).parent.parent
SCRIPT = ROOT / "benchmarks" / "bench_finetune_elpv.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_finetune_elpv", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_split_is_stratified_seeded_and_written_once(bench, tmp_path: Path) -> None:
    root = tmp_path / "elpv"
    for label, count in (("defective", 40), ("functional", 81)):
        (root / label).mkdir(parents=True)
        for i in range(count):
            (root / label / f"{label}_{i:05d}.png").touch()
    manifest = bench.write_split(root)
    rows = bench.split_rows(root)
    assert manifest.read_text().splitlines()[0] == "path,label,split"
    for label, count in (("defective", 40), ("functional", 81)):
        splits = [r["split"] for r in rows if r["label"] == label]
        test = round(0.25 * count)
        assert splits.count("test") == test  # 25% of each class
        assert splits.count("val") == round(0.15 * (count - test))
    assert bench.write_split(root) == manifest  # the same split again: kept as it is
    assert bench.describe_split(manifest)["counts"]["test"] == {"defective": 10, "functional": 20}
    manifest.write_text(manifest.read_text().replace(",test", ",train", 1))
    with pytest.raises(StorageError, match="holds another split"):
        bench.write_split(root)


def test_rows_are_chosen_by_id_or_group(bench) -> None:
    assert [r.id for r in bench.select("1,4")] == ["1", "4"]  # 4 is a row: not its group
    assert [r.id for r in bench.select("4-first,4-first-lr")] == ["4-first", "4-first-lr"]
    group = [r.id for r in bench.select("3")]
    assert len(group) == 10 and all(i.startswith("3-") for i in group)
    assert bench.select("6") == [] and len(bench.select("all")) == len(bench.ROWS)
    with pytest.raises(SystemExit, match="--rows 7"):
        bench.select("7")


def smoke(work: Path, rows: str, seeds: int) -> dict:
    args = ["--smoke", "--rows", rows, "--seeds", str(seeds), "--work", str(work)]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((work / "finetune-elpv-smoke.json").read_text())


def check(results: dict, ids: list[str], seeds: int) -> None:
    assert results["smoke"] and [r["id"] for r in results["rows"]] == ids
    for row in results["rows"]:
        assert len(row["seeds"]) == seeds
        assert 0 <= row["test_accuracy"] <= 1 and row["test_accuracy_std"] >= 0
        assert row["seconds"] > 0
    counts = results["split"]["counts"]
    assert counts["test"] == {"defective": 2, "functional": 2}  # 25% of 8 per class
    assert len(results["paper"]) == 2


def test_smoke_runs_a_head_and_the_full_recipe_and_keeps_finished_runs(tmp_path: Path) -> None:
    results = smoke(tmp_path, "1,4", seeds=2)
    check(results, ["1", "4"], seeds=2)
    full = results["rows"][1]["seeds"][0]
    assert full["tta"] == "dihedral" and full["options"]["rot90"] is True
    assert full["options"]["epochs"] == 1  # the smoke run's single epoch
    assert results["device"] == "cpu"  # and CPU runs are kept under runs/, GPU runs apart
    assert (tmp_path / "runs" / "4" / "seed1" / "bench.json").exists()
    again = smoke(tmp_path, "4", seeds=2)  # read back from --work, not run again
    assert again["rows"][0]["seeds"] == results["rows"][1]["seeds"]
    assert "| 6 | VGG-19 fine-tuned" in (tmp_path / "finetune-elpv-smoke.md").read_text()
    # elpv_errors.py reads the kept runs: errors by defect probability, pairs, the ensemble
    errors = ROOT / "benchmarks" / "elpv_errors.py"
    args = ["--work", str(tmp_path), "--rows", "4", "--against", "1", "--seeds", "2"]
    done = subprocess.run([sys.executable, str(errors), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    for seed in (0, 1):
        accuracy = results["rows"][1]["seeds"][seed]["test_accuracy"]
        assert lines[seed].startswith(f"row 4 seed {seed}: accuracy {accuracy:.4f}; errors p=")
        assert "; vs row 1: " in lines[seed]
    assert lines[2].startswith("row 4: the 2 seeds' mean softmax scores ")
    # the misses both runs share are misses of each, so missing only those beats both runs
    pattern = r"all 2 runs miss (\d+) of (\d+) cells \(p=.*\); missing only those scores (\S+)"
    shared = re.fullmatch(pattern, lines[3])
    assert shared is not None, lines[3]
    best = max(seed["test_accuracy"] for seed in results["rows"][1]["seeds"])
    assert float(shared[3]) >= best - 1e-4
    assert float(shared[3]) == pytest.approx(1 - int(shared[1]) / int(shared[2]), abs=1e-4)
    # each seed records its test predictions (cells in path order), scoring its accuracy...
    with (tmp_path / "elpv" / "paper-split.csv").open() as handle:
        cells = sorted(
            (r["path"], r["label"]) for r in csv.DictReader(handle) if r["split"] == "test"
        )
    classes = sorted({label for _, label in cells})
    truth = [classes.index(label) for _, label in cells]
    for row in results["rows"]:
        for seed in row["seeds"]:
            hits = [int(d) == t for d, t in zip(seed["test_predicted"], truth, strict=True)]
            assert np.mean(hits) == pytest.approx(seed["test_accuracy"])
    # ...so a later row pairs with them once the runs are gone, as it pairs with the runs
    first = tmp_path / "first.json"  # rows 1 and 4 (the smoke file now holds the rerun's 4)
    first.write_text(json.dumps(results))
    recorded = [*args[:-4], "--against", f"{first}:1", *args[-2:]]
    shutil.rmtree(tmp_path / "runs" / "1")
    done = subprocess.run([sys.executable, str(errors), *recorded], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    pairs = [line.rsplit(": ", 1)[1] for line in done.stdout.splitlines()[:2]]
    assert pairs == [line.rsplit(": ", 1)[1] for line in lines[:2]]


def test_shared_misses_are_the_cells_every_run_gets_wrong() -> None:
    spec = importlib.util.spec_from_file_location(
        "elpv_errors", ROOT / "benchmarks" / "elpv_errors.py"
    )
    errors = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(errors)
    cells = np.array(["a.png", "b.png", "c.png", "d.png"])
    y = np.array([0, 1, 1, 0])
    first = SplitOutputs(cells, y, np.eye(2)[[0, 0, 0, 1]])  # misses b, c, d
    # the same images in another order, missing c and d only: b is not shared
    order = np.array([3, 2, 1, 0])
    second = SplitOutputs(cells[order], y[order], np.eye(2)[[1, 0, 1, 0]])
    probability = {"a.png": 0.0, "b.png": 1.0, "c.png": 2 / 3, "d.png": 1 / 3}
    line = errors.shared_misses([first, second], probability)
    assert line == (
        "all 2 runs miss 2 of 4 cells (p=0.00: 0/1, p=0.33: 1/1, p=0.67: 1/1, p=1.00: 0/1); "
        "missing only those scores 0.5000"
    )


@pytest.mark.slow
def test_smoke_runs_every_row(tmp_path: Path, bench) -> None:
    results = smoke(tmp_path, "all", seeds=2)
    check(results, [r.id for r in bench.ROWS], seeds=2)


def test_only_every_row_overwrites_the_recorded_results(bench, tmp_path: Path) -> None:
    def stem(**given: object) -> Path:
        args = {"out": None, "smoke": False, "rows": "all", "backbone": bench.BACKBONE}
        return bench.results_stem(argparse.Namespace(work=tmp_path, **args | given))

    assert stem() == bench.RESULTS
    assert stem(backbone="tf_efficientnet_lite2").name == "finetune-elpv-tf_efficientnet_lite2"
    assert stem(rows="1,4") == tmp_path / "finetune-elpv-rows"
    assert stem(rows="all", smoke=True) == tmp_path / "finetune-elpv-smoke"
    assert stem(rows="1", out=tmp_path / "x") == tmp_path / "x"


def test_gpu_runs_are_kept_apart_from_cpu_runs(bench, tmp_path: Path, monkeypatch) -> None:
    assert bench.Bench(tmp_path, bench.SMOKE, "fp32", "cpu").runs == tmp_path / "runs"
    monkeypatch.setattr(bench, "_device_name", lambda device: "NVIDIA H100 80GB HBM3")
    gpu = bench.Bench(tmp_path, bench.SMOKE, "fp32", "cuda")
    assert gpu.runs == tmp_path / "runs-cuda"
    assert gpu.extract_options("native")["device"] == "cuda"


def test_a_work_folder_of_another_backbone_is_refused_not_reused(bench, tmp_path: Path) -> None:
    work = tmp_path / "work"
    smoke = bench.Bench(work, bench.SMOKE, "fp32", "cpu")
    kept = work / "runs" / "1" / "seed0" / "bench.json"
    kept.parent.mkdir(parents=True)
    kept.write_text(json.dumps({"backbone": "tf_efficientnet_lite2", "test_accuracy": 0.9}))
    with pytest.raises(StorageError, match="was run with tf_efficientnet_lite2, not test_eff"):
        smoke.run(bench.BY_ID["1"], 0)
    kept.write_text(json.dumps({"backbone": "test_efficientnet", "test_accuracy": 0.9}))
    assert smoke.run(bench.BY_ID["1"], 0)["test_accuracy"] == 0.9  # its own: read back


def test_a_run_kept_with_other_options_than_its_row_has_now_is_refused(bench, tmp_path) -> None:
    """Changing a row (the recipe choosing by val loss, say) must not pass off the runs of its
    old definition as its result."""
    smoke = bench.Bench(tmp_path, bench.SMOKE, "fp32", "cpu")
    row = bench.BY_ID["4"]
    options = row.options(smoke.train_images, smoke.scale) | {"epochs": 1}
    for row_id in ("1", "4"):  # a head and a fine-tune kept as finished
        kept = tmp_path / "runs" / row_id / "seed0" / "bench.json"
        kept.parent.mkdir(parents=True)
        summary = {"backbone": "test_efficientnet", "test_accuracy": 0.9, "run": "r"}
        kept.write_text(json.dumps(summary | {"options": options}))
    assert smoke.run(row, 0)["test_accuracy"] == 0.9  # the same options, defaults left out
    # from before --select-by and --refit
    old = {k: v for k, v in options.items() if k not in ("select_by", "refit")}
    kept.write_text(json.dumps(summary | {"options": old}))
    with pytest.raises(StorageError, match=r"runs/4/seed0/bench\.json was run with other options"):
        smoke.run(row, 0)
    # what such runs are now: row 4-select-metric, where they were moved
    before = bench.BY_ID["4-select-metric"].options(smoke.train_images, smoke.scale)
    assert FinetuneConfig(**old) == FinetuneConfig(**before | {"epochs": 1})
    # and the runs from before --refit alone: row 4-no-refit
    no_refit = bench.BY_ID["4-no-refit"].options(smoke.train_images, smoke.scale)
    assert FinetuneConfig(**options | {"refit": False}) == FinetuneConfig(
        **no_refit | {"epochs": 1}
    )

"""``benchmarks/bench_engines.py``: the shares mode (where an extraction's time goes) on the
tiny model here, its stopwatch, and the whole ``--smoke`` run with real weights (``pytest -m
slow``: it converts and times three engines on two datasets)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

import featpipe.data.images as images
import featpipe.data.transforms as transforms
import featpipe.extraction.rows as rows
import featpipe.runtime.tuning as tuning
from conftest import TINY
from featpipe.data.loader import prefetched
from featpipe.runtime.openvino_engine import OpenVinoEngine
from featpipe.runtime.tuning import build_engine

ROOT = Path(__file__).parent.parent
SCRIPT = ROOT / "benchmarks" / "bench_engines.py"
PARTS = {
    "scan",
    "cache lookup",
    "settle (key, memo)",
    "collate",
    "screening",
    "commit",
    "fingerprints",
    "decode",
    "resize, crop",
    "to tensor",
    "forward",
    "SHA-256 of written files",
    "journal write",
    "HDF5 seal",
    "engine build",
    "backbone build",
    "rest",
}
# A warm OpenVINO run goes without torch (featpipe.extraction.settle.runs_without_torch): no
# backbone, no tensors.
PARTS_WITHOUT_TORCH = PARTS - {"backbone build", "to tensor"}


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(SCRIPT.parent))  # the script imports bench_extract beside it
    spec = importlib.util.spec_from_file_location("bench_engines", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.path.remove(str(SCRIPT.parent))


def test_the_stopwatch_counts_a_nested_part_once_and_puts_featpipe_back(bench) -> None:
    watch = bench.Stopwatch()
    inner = watch.timed("inner", lambda: time.sleep(0.01))
    outer = watch.timed("outer", lambda: [inner() for _ in range(3)])
    start = time.perf_counter()
    outer()
    elapsed = time.perf_counter() - start
    assert set(watch.seconds) == {"inner", "outer"}
    assert watch.seconds["inner"] >= 0.03  # three sleeps of 10 ms at least
    assert watch.seconds["inner"] + watch.seconds["outer"] <= elapsed  # exclusive parts
    with pytest.raises(RuntimeError), watch.wrapped():
        assert transforms.load_image is not images.load_image
        assert tuning.build_engine is not build_engine
        assert rows.OpenVinoEngine is not OpenVinoEngine
        raise RuntimeError("an extraction that fails")
    assert transforms.load_image is images.load_image  # put back, even after an error
    assert tuning.build_engine is build_engine
    assert rows.OpenVinoEngine is OpenVinoEngine


def test_shares_time_every_part_of_an_extraction_and_add_up_to_its_wall(
    bench, tree: Path, tmp_path: Path
) -> None:
    options = {k: TINY[k] for k in ("weights", "image_size", "batch_size")}
    row = bench.shares("tiny", tree, TINY["backbone"], tmp_path / "work", [0, 1], 1, **options)
    assert list(row["configs"]) == list(bench.SHARE_CONFIGS)
    for config, record in row["configs"].items():
        expected = PARTS if record["torch_loaded"] else PARTS_WITHOUT_TORCH
        assert set(record["parts_s"]) == expected, config
        assert record["images"] == 12
        parts = {part: s for part, s in record["parts_s"].items() if part != "rest"}
        assert all(s > 0 for s in parts.values()), parts  # every part ran and was timed
        assert sum(parts.values()) <= record["wall_s"] + 0.01  # parts never overlap
        assert sum(record["shares"].values()) == pytest.approx(1.0, abs=0.002)
        # OpenVINO fp32 is also run with the LATENCY hint its engine was chosen against, and
        # every configuration with PIL decoding the PNGs
        latency = ["0+thread LATENCY"] if record["engine"] == "openvino" else []
        ways = ["0", "0+thread", *latency, "0+thread PIL PNGs", "1"]
        assert list(record["images_per_s_by_workers"]) == ways
        assert record["forward_ceiling_images_per_s"] > 0
    assert rows.prefetched is prefetched  # the runs without the thread put it back
    assert tuning.build_engine is build_engine  # and the runs with the LATENCY hint the engines
    assert rows.OpenVinoEngine is OpenVinoEngine
    assert images.pyspng is not None  # and the runs with PIL decoding libspng
    assert row["configs"]["openvino fp32"]["engine"] == "openvino"
    assert row["configs"]["openvino fp32"]["torch_loaded"] is False  # all settings given, warm
    assert row["configs"]["torch fp32"]["engine"] == "torch"


def test_an_unknown_part_is_refused_by_name(bench, tmp_path: Path) -> None:
    args = argparse.Namespace(work=tmp_path, parts="ceiling,shapes")
    with pytest.raises(SystemExit, match="--parts shapes: choose from ceiling, whole, shares"):
        bench.run(args)


@pytest.mark.slow
def test_smoke_runs_every_part(tmp_path: Path) -> None:
    out = tmp_path / "engines.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--work", str(tmp_path), "--json", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    for engine, record in results["ceiling"][0]["engines"].items():
        if "fp32" in engine:  # the exact engines agree with torch on real photos
            assert record["min_cosine_to_torch_fp32"] >= 0.99999, engine
    assert [r["dataset"] for r in results["whole_process"]] == ["pngs-24", "elpv-smoke"]
    for row in results["whole_process"]:  # the naive recipe alternated with featpipe's runs
        walls = [c["warm_walls_s"] for c in row["configs"].values()]
        assert len(row["naive_recipe_walls_s"]) == len(walls[0])
        assert row["naive_recipe_wall_s"] == min(row["naive_recipe_walls_s"])
        ratio = row["naive_recipe_wall_s"] / row["configs"]["default"]["warm_wall_s"]
        assert row["default_vs_naive_whole"] == round(ratio, 2)
    assert all("default, PIL PNGs" in r["configs"] for r in results["whole_process"])
    assert [r["dataset"] for r in results["shares"]] == ["pngs-24", "elpv-smoke"]
    ways = [c["images_per_s_by_workers"] for r in results["shares"] for c in r["configs"].values()]
    assert all("0+thread PIL PNGs" in w for w in ways)
    assert all(set(c["parts_s"]) == PARTS for r in results["shares"] for c in r["configs"].values())

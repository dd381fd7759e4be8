"""``benchmarks/bench_png_decode.py`` end to end on a few grey and colour PNGs: both decoders
timed alternately, every file's pixels compared, the results written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).parent.parent
SCRIPT = ROOT / "benchmarks" / "bench_png_decode.py"


def test_it_times_both_decoders_and_compares_every_file(tmp_path: Path) -> None:
    pytest.importorskip("pyspng")
    rng = np.random.default_rng(0)
    for i, shape in enumerate([(30, 20), (30, 20, 3), (17, 40, 3)]):
        path = tmp_path / "pngs" / "a" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, shape, np.uint8)).save(path)
    out = tmp_path / "png-decode.json"
    args = [str(tmp_path / "pngs"), "--rounds", "2", "--json", str(out)]
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = json.loads(out.read_text())["folders"]
    assert row["files"] == 3 and row["pixels_equal"] == "3/3"
    assert row["decoded_by_libspng"] == 2  # the colour ones; the grey one went to PIL
    assert [len(r) for r in row["ms_per_image_rounds"].values()] == [2, 2]
    rounds, best = row["ms_per_image_rounds"], row["ms_per_image_best"]
    assert best == {name: min(ms) for name, ms in rounds.items()} and row["pil_over_libspng"] > 0

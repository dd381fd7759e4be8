"""``benchmarks/bench_gpu.py --smoke``: the one-call GPU benchmark works before device time is
spent on it (every section at toy sizes, on the CPU here). Slow: run with ``pytest -m slow``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_bench_gpu_smoke_runs_every_section(tmp_path: Path) -> None:
    out = tmp_path / "gpu-smoke.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    for section in ("fidelity", "decode_only", "whole_extraction", "heads_epoch"):
        assert isinstance(results[section], dict | list), section
    assert min(results["fidelity"]["cosine_tensor_device_to_pil"]) >= 0.999
    assert set(results["share_of_ceiling"]) == {"pil", "tensor"}

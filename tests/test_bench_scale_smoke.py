"""``benchmarks/bench_scale.py --smoke``: every step of the scale benchmark runs (N=300), so the
lead's 200,000 and 1,000,000-image runs do not fail late. Slow (eleven featpipe processes, two
minutes on a quiet 2-core machine): run with ``pytest -m slow``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_bench_scale_smoke_runs_every_step(tmp_path: Path) -> None:
    out = tmp_path / "scale-smoke.json"
    script = ROOT / "benchmarks" / "bench_scale.py"
    command = [sys.executable, str(script), "--smoke", "--work", str(tmp_path), "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=1800)
    assert done.returncode == 0, done.stderr[-2000:] + done.stdout[-2000:]
    [record] = json.loads(out.read_text()).values()
    steps = record["steps"]
    assert set(steps) == {
        "datasets describe",
        "extract (first)",
        "extract (hit)",
        "extract 1% alone",
        "extract (+1%)",
        "extract (hit, +1%)",
        "extract (swap)",
        "cache verify",
        "fit check",
        "fit (memory)",
        "fit (streamed)",
    }
    for name, step in steps.items():
        assert step["seconds"] > 0 and step["peak_rss_mib"] > 0, name
    assert steps["fit check"]["hit"] and steps["fit check"]["files_opened_by_check"] == 0
    assert "1 extracted" in " ".join(steps["extract (swap)"]["tail"])  # the swap was caught
    assert out.with_suffix(".md").read_text().count("| extract (hit) |") == 1

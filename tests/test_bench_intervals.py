"""``benchmarks/bench_intervals.py --smoke``: the benchmark's path end to end on tiny random
data (one split, then repeated splits; verdicts, intervals, rankings and the table)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
SCRIPT = ROOT / "benchmarks" / "bench_intervals.py"


def test_smoke_mode_measures_intervals_verdicts_and_repeats(tmp_path: Path) -> None:
    out = tmp_path / "intervals.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "work"), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [result] = json.loads(out.read_text())
    assert result["repeats"] == 3 and len(result["rows"]) == 2
    for row in result["rows"]:
        low, high = row["test_interval"]
        assert low <= row["test"] <= high and row["n"] > 0
        assert row["redrawn"] == "train/val/test" and row["std_across_splits"] >= 0
    assert "tied" in result["verdict_one_split"] or "worse" in result["verdict_one_split"]
    assert result["verdict_repeats"]
    assert sorted(result["ranking_one_split"]) == sorted(result["ranking_repeats"])
    assert "| smoke | test_efficientnet@none |" in done.stdout

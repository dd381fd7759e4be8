"""``benchmarks/bench_intervals.py --smoke``: the benchmark's path end to end on tiny random
data in both layouts of its real datasets (no fixed splits, as ELPV; a fixed test split and a
hold-out, as the Fashion-MNIST subset): one split, then repeated splits; verdicts, intervals,
rankings, the table, and results JSON that keeps the datasets measured before."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
SCRIPT = ROOT / "benchmarks" / "bench_intervals.py"


def test_smoke_mode_measures_intervals_verdicts_and_repeats(tmp_path: Path) -> None:
    out = tmp_path / "intervals.json"
    before = {"dataset": "elpv300", "rows": []}  # measured by an earlier run
    out.write_text(json.dumps([before]))
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "work"), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    kept, *results = json.loads(out.read_text())
    assert kept == before  # the file keeps what other runs measured
    assert [r["dataset"] for r in results] == ["smoke", "smoke-fixed"]
    # no fixed splits: every split re-drawn; a fixed test split: the held-out val re-drawn
    for result, redrawn in zip(results, ("train/val/test", "val"), strict=True):
        assert result["repeats"] == 3 and len(result["rows"]) == 2
        for row in result["rows"]:
            low, high = row["test_interval"]
            assert low <= row["test"] <= high and row["n"] > 0
            assert row["redrawn"] == redrawn and row["std_across_splits"] >= 0
        assert "tied" in result["verdict_one_split"] or "worse" in result["verdict_one_split"]
        assert result["verdict_repeats"]
        assert sorted(result["ranking_one_split"]) == sorted(result["ranking_repeats"])
    # re-drawn test images: the corrected t over splits; one fixed test split shared by every
    # split: the two-way bootstrap over splits and test images (its luck is in every split)
    assert all("Nadeau" in row["splits_method"] for row in results[0]["rows"])
    assert results[0]["repeats_test"] == ["corrected resampled paired t"]
    assert all("two-way bootstrap" in row["splits_method"] for row in results[1]["rows"])
    assert results[1]["repeats_test"] == ["two-way bootstrap"]
    assert results[1]["rows"][0]["n"] == 16  # the fixed test split: 8 images of each class
    assert "| smoke | test_efficientnet@none |" in done.stdout
    assert "| smoke-fixed | test_efficientnet@none |" in done.stdout

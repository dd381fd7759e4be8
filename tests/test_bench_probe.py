"""``benchmarks/bench_probe.py --smoke``: every probe runs on two toy datasets with the tiny
random-init model, each keeps its per-image test predictions seed by seed, and the paired tests
(McNemar exact, the paired bootstrap's interval, Holm over the datasets) equal independent
computations on those predictions."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

ROOT = Path(__file__).parent.parent
SCRIPT = ROOT / "benchmarks" / "bench_probe.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_probe", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    return bench


def test_smoke_keeps_every_probe_s_predictions_and_tests_them_paired(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = load_bench()
    out = tmp_path / "probe.json"
    bench.main(["--smoke", "--cache-dir", str(tmp_path / "cache"), "--json", str(out)])
    printed = capsys.readouterr().out
    results = json.loads(out.read_text())
    assert len(results["datasets"]) == 2 and results["whole process"] is None
    for row in results["datasets"].values():
        n_test = row["sizes"]["test"]
        assert len(row["test_y"]) == len(row["test_relpath"]) == n_test > 0
        for probe in ("featpipe default", "featpipe default at 40 epochs", bench.PEER):
            assert row[probe]["seeds"] == 2
            for run in row[probe]["runs"]:
                pred = np.array(run["test_pred"])
                assert len(pred) == n_test  # the recorded accuracy is these predictions'
                assert run["test_acc"] == pytest.approx(np.mean(pred == row["test_y"]))
    paired = results["paired"]
    assert set(paired) == {f"{a} vs {b}" for a, b in bench.COMPARED}
    for comparison in paired.values():
        datasets = comparison["datasets"]
        for seed in range(2):
            p_values = []
            for name, entry in datasets.items():
                row = results["datasets"][name]
                y = np.array(row["test_y"])
                a = np.array(row[comparison["a"]]["runs"][seed]["test_pred"]) == y
                b = np.array(row[comparison["b"]]["runs"][seed]["test_pred"]) == y
                tested = entry["seeds"][seed]
                only_a, only_b = int(np.sum(a & ~b)), int(np.sum(b & ~a))
                assert (tested["only_a"], tested["only_b"]) == (only_a, only_b)
                assert tested["difference"] == pytest.approx(a.mean() - b.mean())
                low, high = tested["interval"]
                assert low <= tested["difference"] <= high
                exact = (
                    scipy_stats.binomtest(only_a, only_a + only_b, 0.5).pvalue
                    if only_a + only_b
                    else 1.0
                )
                assert tested["p"] == pytest.approx(exact)
                p_values.append((tested["p"], tested["p_holm"], tested["verdict"]))
            # Holm over the two datasets, by hand: the smaller p doubled, the larger kept
            # unless below it
            (p1, h1, _), (p2, h2, _) = sorted(p_values)
            assert h1 == pytest.approx(min(1.0, 2 * p1))
            assert h2 == pytest.approx(max(min(1.0, 2 * p1), p2))
            for _, p_holm, said in p_values:
                assert (said == "tied") == (p_holm > bench.ALPHA)
        for entry in datasets.values():
            said = {r["verdict"] for r in entry["seeds"]}
            expected = said.pop() if len(said) == 1 else "mixed"
            assert entry["verdict"].startswith(expected)
    assert "| featpipe default vs peer (CLIP_benchmark) | toy0 | 0 |" in printed
    assert "* featpipe default against peer (CLIP_benchmark): toy0 " in printed


def test_the_verdict_over_seeds_is_the_one_they_all_give_else_mixed() -> None:
    bench = load_bench()
    rows = [{"verdict": v} for v in ("tied", "tied", "tied")]
    assert bench.verdict(rows) == "tied"
    rows[0]["verdict"] = "better"
    assert bench.verdict(rows) == "mixed (better 1, tied 2 of 3 seeds)"

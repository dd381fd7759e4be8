"""``benchmarks/bench_protocols.py --smoke``: every row of the protocols table runs end to end
(a toy tree, the tiny random-init models; the figures mean nothing, the table's shape does)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
SCRIPT = ROOT / "benchmarks" / "bench_protocols.py"


def test_smoke_fills_every_row_of_the_table(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_protocols", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    out = tmp_path / "protocols.json"
    bench.main(["--smoke", "--cache-dir", str(tmp_path / "cache"), "--json", str(out)])
    results = json.loads(out.read_text())
    [found] = results["datasets"].values()
    assert set(found["rows"]) == {
        "linear probe",
        "kNN uniform",
        "kNN DINOv2 (T=0.07)",
        "retrieval (cosine, gallery train)",
    }
    assert all(0 <= row["test"] <= 1 and row["seconds"] > 0 for row in found["rows"].values())
    # every score carries its n (the 15 test images) and a 95% interval around it
    for row in [*found["rows"].values(), found["sweep"]]:
        low, high = row["interval"]
        assert row["n"] == found["sizes"]["test"] == 15 and low <= row["test"] <= high
    retrieval = found["rows"]["retrieval (cosine, gallery train)"]
    low, high = retrieval["map_at_r_interval"]
    assert low <= retrieval["map_at_r"] <= high
    # each k-NN against the linear probe on the same test images, Holm over the two
    for name in ("kNN uniform", "kNN DINOv2 (T=0.07)"):
        versus = found["rows"][name]["vs_linear"]
        low, high = versus["interval"]
        assert low <= versus["difference"] <= high and versus["p"] <= versus["p_holm"] <= 1
        assert versus["verdict"] in {"better", "tied", "worse"}
    assert found["sweep"]["heads"] == 8 and found["calibration"]["after"] is not None
    layers = results["layers"]
    assert layers["probes"]["last 4 blocks"]["dims"] == 4 * layers["probes"]["last block"]["dims"]
    assert len(layers["single_pass_seconds"]) == 4 and layers["images"] == 63
    each = layers["each_layer"]  # the compare across depths, each block from one pass
    assert list(each["probes"]) == ["-4", "-3", "-2", "-1"] and each["one_pass_seconds"] > 0
    assert {row["dims"] for row in each["probes"].values()} == {
        layers["probes"]["last block"]["dims"]
    }
    assert all(0 <= row["test"] <= 1 for row in each["probes"].values())
    table = out.with_suffix(".md").read_text()
    assert "| kNN DINOv2 (T=0.07) |" in table and "last 4 blocks in one pass" in table
    assert "− linear:" in table and "| 15 |" in table
    assert "compare across the last 4 layers, from one pass" in table and "| block -2 |" in table

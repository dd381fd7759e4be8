"""Engines agree with each other; the probe times candidates and records what it chose."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import numpy as np
import pytest
import torch

from featpipe.backbones.build import BackboneSpec, build_backbone
from featpipe.errors import FeatpipeError
from featpipe.runtime import tuning
from featpipe.runtime.engines import Normalized, OnnxEngine, TorchEngine, export_onnx
from featpipe.runtime.tuning import CPU_BATCHES, probe


@pytest.fixture(scope="module")
def lite0() -> Normalized:
    backbone = build_backbone(BackboneSpec("tf_efficientnet_lite0", weights="offline"))
    return Normalized(backbone.module, backbone.data_config)


def test_onnxruntime_matches_torch_on_real_weights(lite0: Normalized, tmp_path: Path) -> None:
    images = torch.randint(0, 256, (3, 3, 224, 224), dtype=torch.uint8)
    eager = TorchEngine(lite0, torch.device("cpu"), "fp32", channels_last=True)(images)
    path = export_onnx(lite0, lite0.input_size, tmp_path / "lite0.onnx")
    onnx = OnnxEngine(path, threads=2, spin=False)(images)
    assert onnx.shape == eager.shape == (3, 1280)
    np.testing.assert_allclose(onnx, eager, rtol=1e-4, atol=1e-4)


def test_probe_records_every_candidate_and_picks_the_fastest(tmp_path: Path) -> None:
    backbone = build_backbone(BackboneSpec("test_efficientnet", weights="none", image_size=32))
    module = Normalized(backbone.module, backbone.data_config)
    # A generous budget: this test checks the bookkeeping, not the budget.
    chosen = probe(module, torch.device("cpu"), True, tmp_path / "m.onnx", budget_s=60.0)
    assert chosen.precision in ("fp32", "bf16") and chosen.engine in ("torch", "onnxruntime")
    assert chosen.batch_size in CPU_BATCHES
    assert {"torch-fp32@8", "torch-bf16@8"} <= set(chosen.measured)
    rates = {k: v for k, v in chosen.measured.items() if k.startswith(chosen.engine)}
    mine = f"{chosen.engine}-{chosen.precision}@{chosen.batch_size}"
    assert chosen.measured[mine] == max(
        v for k, v in rates.items() if k.startswith(f"{chosen.engine}-{chosen.precision}@")
    )


def test_explicit_settings_skip_the_probe(tmp_path: Path) -> None:
    backbone = build_backbone(BackboneSpec("test_efficientnet", weights="none", image_size=32))
    module = Normalized(backbone.module, backbone.data_config)
    chosen = probe(module, torch.device("cpu"), True, tmp_path / "m.onnx", "fp32", 4, "torch")
    assert (chosen.engine, chosen.precision, chosen.batch_size, chosen.measured) == (
        "torch",
        "fp32",
        4,
        {},
    )
    with pytest.raises(FeatpipeError, match="engine onnxruntime runs fp32 on CPU"):
        probe(module, torch.device("cpu"), True, tmp_path / "m.onnx", "bf16", 4, "onnxruntime")


class SleepEngine:
    """A stand-in engine whose cost is a known function of the batch: ``overhead + batch * per``.

    The probe's decisions depend only on timings, so sleeping engines test them exactly and
    fast, without depending on which CPU runs the suite.
    """

    name = "fake"
    # every call's cost, across engines: what the probe spent, without a clock
    slept: ClassVar[list[float]] = []

    def __init__(self, overhead: float, per_image: float) -> None:
        self.overhead, self.per_image = overhead, per_image

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        cost = self.overhead + len(images) * self.per_image
        SleepEngine.slept.append(cost)
        time.sleep(cost)
        return np.zeros((len(images), 4), np.float32)


def fake_probe(
    monkeypatch: pytest.MonkeyPatch, costs: dict[tuple[str, str], tuple[float, float]], **kwargs
) -> tuning.Settings:
    def build(settings, module, device, onnx_path):
        return SleepEngine(*costs[(settings["engine"], settings["precision"])])

    monkeypatch.setattr(tuning, "build_engine", build)
    monkeypatch.setattr(SleepEngine, "slept", [])
    module = SimpleNamespace(input_size=(8, 8))
    return probe(module, torch.device("cpu"), True, Path("unused.onnx"), **kwargs)


def test_probe_stops_at_its_budget_when_a_candidate_is_far_slower(monkeypatch) -> None:
    costs = {("torch", "fp32"): (0.0, 0.001), ("torch", "bf16"): (0.0, 0.3)}
    start = time.perf_counter()
    chosen = fake_probe(monkeypatch, costs, engine="torch", batch_size=8, budget_s=1.0)
    elapsed = time.perf_counter() - start
    # bf16 costs 2.4 s a batch of 8: single images of it are all the budget allows. Counted in
    # the engines' own costs, not in wall time, so a loaded machine cannot fail it.
    assert max(SleepEngine.slept) == pytest.approx(0.3)  # never a batch of bf16
    assert sum(SleepEngine.slept) < 1.0 + 2 * 0.3
    assert chosen.precision == "fp32" and "torch-bf16@8" in chosen.probe["over_budget"]
    assert chosen.probe["budget_s"] == 1.0 and chosen.probe["spent_s"] <= elapsed


def test_probe_budget_is_a_small_share_of_the_run_it_tunes(monkeypatch) -> None:
    costs = {("torch", "fp32"): (0.0, 0.001), ("torch", "bf16"): (0.0, 0.0001)}
    # 50 images at ~1000 img/s is a 0.05 s run: after the fp32 baseline nothing else pays.
    chosen = fake_probe(monkeypatch, costs, engine="torch", images=50)
    assert (chosen.precision, chosen.batch_size) == ("fp32", 8)
    assert list(chosen.measured) == ["torch-fp32@8"]
    assert chosen.probe["budget_s"] <= chosen.probe["spent_s"] + 0.01


def test_probe_never_keeps_a_path_slower_than_fp32_at_its_batch(monkeypatch) -> None:
    # bf16 wins at the trial batch (8: 400 vs 286 img/s) and prefers batch 32 (470 img/s), where
    # fp32 runs 615 img/s: the probe must end on fp32, not on the faster-looking bf16.
    costs = {("torch", "fp32"): (0.020, 0.001), ("torch", "bf16"): (0.004, 0.002)}
    chosen = fake_probe(monkeypatch, costs, engine="torch", budget_s=30.0)
    assert chosen.measured["torch-bf16@8"] > chosen.measured["torch-fp32@8"]
    assert (chosen.precision, chosen.engine, chosen.batch_size) == ("fp32", "torch", 32)
    assert chosen.probe["fell_back_to_fp32"]


def test_explicit_precision_far_slower_than_fp32_is_named(monkeypatch) -> None:
    costs = {("torch", "fp32"): (0.0, 0.002), ("torch", "bf16"): (0.0, 0.03)}
    chosen = fake_probe(
        monkeypatch, costs, precision="bf16", engine="torch", batch_size=4, budget_s=0.0
    )
    assert chosen.precision == "bf16"  # asked for: kept, but never silently
    assert "slower than fp32" in chosen.note and "bf16" in chosen.note
    fine = fake_probe(
        monkeypatch,
        {("torch", "fp32"): (0.0, 0.002), ("torch", "bf16"): (0.0, 0.002)},
        precision="bf16",
        engine="torch",
        batch_size=4,
        budget_s=0.0,
    )
    assert fine.note == ""


def test_probe_on_a_machine_too_slow_for_a_batch_times_one_image_and_stops(monkeypatch) -> None:
    costs = {("torch", "fp32"): (0.0, 0.4), ("torch", "bf16"): (0.0, 0.4)}
    chosen = fake_probe(monkeypatch, costs, budget_s=1.0)
    # Two single-image forwards (warm-up and timed) use the budget up; a batch of 8 (3.2 s a
    # call, warm-up and windows) never starts.
    assert SleepEngine.slept == pytest.approx([0.4, 0.4])
    assert (chosen.precision, chosen.engine, chosen.batch_size) == ("fp32", "torch", 8)
    assert chosen.measured == {} and "torch-fp32@8" in chosen.probe["over_budget"]

"""Engines agree with each other; the probe times candidates and records what it chose."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from featpipe.backbones.build import BackboneSpec, build_backbone
from featpipe.errors import FeatpipeError
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
    chosen = probe(module, torch.device("cpu"), True, tmp_path / "m.onnx")
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
    with pytest.raises(FeatpipeError, match="--engine onnxruntime runs fp32 on CPU"):
        probe(module, torch.device("cpu"), True, tmp_path / "m.onnx", "bf16", 4, "onnxruntime")

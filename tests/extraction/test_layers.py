"""Several layers from one forward pass (``--layer a,b``), and DINOv2's ``cls+avg`` pool."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from timm.models.efficientnet import EfficientNet
from timm.models.vision_transformer import VisionTransformer

from conftest import TINY
from featpipe.backbones.build import build_backbone
from featpipe.backbones.spec import BackboneSpec
from featpipe.errors import ArgumentError
from featpipe.extraction.stage import extract


def counting(monkeypatch, cls: type) -> list[int]:
    """Count ``cls.forward_intermediates`` calls (one per batch of a layered extraction)."""
    calls: list[int] = []
    real = cls.forward_intermediates

    def counted(self, x, *args, **kwargs):
        calls.append(len(x))
        return real(self, x, *args, **kwargs)

    monkeypatch.setattr(cls, "forward_intermediates", counted)
    return calls


def test_each_layers_rows_equal_its_own_extraction_from_one_forward(
    tree: Path, cache_dir: Path, monkeypatch
) -> None:
    calls = counting(monkeypatch, EfficientNet)
    rows = {}
    forwards = {}
    for layer in ("1", "-1", "1,-1"):
        before = len(calls)
        result = extract(tree, cache_dir=cache_dir, **(TINY | {"layer": layer}))
        forwards[layer] = calls[before:]
        features = result.load()
        rows[layer] = features.X[np.argsort(features.relpath)]
    layered, first, last = rows["1,-1"], rows["1"], rows["-1"]
    assert layered.shape == (len(first), first.shape[1] + last.shape[1])
    np.testing.assert_allclose(layered[:, : first.shape[1]], first, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layered[:, first.shape[1] :], last, rtol=1e-5, atol=1e-6)
    # two layers cost the forward passes of one: one forward_intermediates call per batch
    assert forwards["1,-1"] == forwards["1"] == forwards["-1"]
    assert sum(forwards["1,-1"]) >= len(first)  # every image went through it


def test_cls_avg_is_the_cls_token_beside_the_mean_patch_token(monkeypatch) -> None:
    calls = counting(monkeypatch, VisionTransformer)
    spec = BackboneSpec("test_vit", "none", pool="cls+avg", layer="-4,-1")
    layered = build_backbone(spec)
    x = torch.randn(3, 3, *layered.data_config["input_size"][1:])
    model = build_backbone(BackboneSpec("test_vit", "none")).module
    with torch.no_grad():
        del calls[:]
        out = layered.module(x)
        assert len(calls) == 1  # both blocks from one pass
        blocks = model.forward_intermediates(x, indices=[-4, -1], intermediates_only=True)
        tokens = model.forward_features(x)
    dim = model.embed_dim
    assert out.shape == (3, 4 * dim)
    for i, block in enumerate(blocks):  # NCHW patch maps: the mean patch token of each block
        np.testing.assert_allclose(
            out[:, (2 * i + 1) * dim : (2 * i + 2) * dim], block.mean(dim=(2, 3)), atol=1e-5
        )
    final = build_backbone(BackboneSpec("test_vit", "none", pool="cls+avg")).module
    with torch.no_grad():
        whole = final(x)
    expected = torch.cat([tokens[:, 0], tokens[:, model.num_prefix_tokens :].mean(dim=1)], dim=1)
    np.testing.assert_allclose(whole, expected, atol=1e-5)


@pytest.mark.parametrize(
    ("layer", "message"), [("1,1", "names a layer twice"), ("1,9", "9: test_efficientnet has")]
)
def test_a_bad_layer_list_names_the_option(layer: str, message: str) -> None:
    with pytest.raises(ArgumentError, match=rf"^layer .*{message}"):
        build_backbone(BackboneSpec("test_efficientnet", "none", layer=layer))


def test_cls_avg_refuses_a_convnet() -> None:
    with pytest.raises(ArgumentError, match=r"^pool cls\+avg"):
        build_backbone(BackboneSpec("test_efficientnet", "none", pool="cls+avg"))

"""Several layers from one forward pass: concatenated in one entry (``--layer a,b``), or each its
own entry (``-b m:a -b m:b``); and DINOv2's ``cls+avg`` pool."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from timm.models.efficientnet import EfficientNet
from timm.models.vision_transformer import VisionTransformer

from conftest import TINY, console_script, flags, make_tree
from featpipe.backbones.build import build_backbone
from featpipe.backbones.spec import BackboneSpec
from featpipe.cache.catalog import list_entries
from featpipe.cache.entry import read_meta
from featpipe.errors import ArgumentError
from featpipe.extraction.layers import extract_layers, one_pass_groups
from featpipe.extraction.options import ExtractOptions
from featpipe.extraction.stage import extract
from featpipe.reports.compare import Experiment, compare


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


# Each layer a feature set of its own, from one forward pass (featpipe.extraction.layers)

RUN = {k: v for k, v in TINY.items() if k not in ("backbone", "weights", "image_size")}


def layer_specs(*layers: str) -> list[BackboneSpec]:
    return [
        BackboneSpec("test_efficientnet", "none", layer=layer, image_size=32) for layer in layers
    ]


def recording(monkeypatch) -> list[tuple[int, tuple[int, ...]]]:
    """Every ``forward_intermediates`` call of the tiny EfficientNet: (images, layers read)."""
    calls: list[tuple[int, tuple[int, ...]]] = []
    real = EfficientNet.forward_intermediates

    def recorded(self, x, *args, indices=None, **kwargs):
        calls.append((len(x), tuple(indices)))
        return real(self, x, *args, indices=indices, **kwargs)

    monkeypatch.setattr(EfficientNet, "forward_intermediates", recorded)
    return calls


def rows(result) -> np.ndarray:
    features = result.load()
    return features.X[np.argsort(features.relpath)]


def test_each_layer_is_its_own_entry_from_one_forward_pass(
    tree: Path, cache_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    calls = recording(monkeypatch)
    options = ExtractOptions(cache_dir=cache_dir, **RUN)
    found = extract_layers(tree, layer_specs("1", "-1", "1,-1"), options)
    # one pass over the 12 images (after the build's check of one image) read both layers;
    # the concatenation needs no other
    assert [n for n, _ in calls] == [1, 4, 4, 4] and {layers for _, layers in calls} == {(1, 4)}
    assert [r.hit for r in found] == [False] * 3 and len({r.entry for r in found}) == 3
    assert [r.backbone for r in found] == [s.label for s in layer_specs("1", "-1", "1,-1")]
    first, last, both = map(rows, found)
    np.testing.assert_array_equal(both, np.hstack([first, last]))
    assert [r.dim for r in found] == [24, 64, 88]
    # each entry is the one a single-layer extraction makes: the same key, the same rows
    alone = tmp_path / "alone"
    for layer, result in zip(("1", "-1", "1,-1"), found, strict=True):
        single = extract(tree, cache_dir=alone, **(TINY | {"layer": layer}))
        assert single.entry.name == result.entry.name  # <model>-<key8>.h5
        assert read_meta(single.entry)["key"] == read_meta(result.entry)["key"]
        np.testing.assert_allclose(rows(single), rows(result), rtol=1e-5, atol=1e-6)
    provenance = read_meta(found[0].entry)["provenance"]
    assert provenance["settings"]["one_pass_layers"] == "1,-1"
    assert provenance["last_run"]["rows_extracted"] == 12
    # and the cache hit of a single-layer request, without building the model
    before = len(calls)
    monkeypatch.setattr(
        "featpipe.backbones.build.build_backbone", lambda *a, **k: pytest.fail("model built")
    )
    again = extract(tree, cache_dir=cache_dir, **(TINY | {"layer": "-1"}))
    assert again.hit and again.entry == found[1].entry
    assert all(r.hit for r in extract_layers(tree, layer_specs("1", "-1"), options))
    assert len(calls) == before


def test_the_pass_reads_only_the_layers_the_cache_lacks(
    tree: Path, cache_dir: Path, monkeypatch
) -> None:
    options = ExtractOptions(cache_dir=cache_dir, **RUN)
    had = extract(tree, cache_dir=cache_dir, **(TINY | {"layer": "2"}))
    calls = recording(monkeypatch)
    found = extract_layers(tree, layer_specs("0", "2", "blocks.4"), options)
    assert [r.hit for r in found] == [False, True, False] and found[1].entry == had.entry
    assert [n for n, _ in calls] == [1, 4, 4, 4] and {layers for _, layers in calls} == {(0, 4)}
    del calls[:]
    # one layer missing: an ordinary single-layer extraction
    found = extract_layers(tree, layer_specs("0", "3"), options)
    assert [r.hit for r in found] == [True, False] and {layers for _, layers in calls} == {(3,)}


def test_layers_of_different_backbones_do_not_share_a_pass(tree: Path, cache_dir: Path) -> None:
    options = ExtractOptions(cache_dir=cache_dir, **RUN)
    mixed = [*layer_specs("1"), BackboneSpec("test_efficientnet", "none", layer="2", pool="max")]
    with pytest.raises(ArgumentError, match=r"^backbone .*one forward pass serves layers of one"):
        extract_layers(tree, mixed, options)
    plain = [*layer_specs("1"), BackboneSpec("test_efficientnet", "none", image_size=32)]
    with pytest.raises(ArgumentError, match=r"test_efficientnet@none names no layer"):
        extract_layers(tree, plain, options)
    assert one_pass_groups([*mixed, *plain, *layer_specs("3")]) == [layer_specs("1", "3")]
    with pytest.raises(ArgumentError, match=r"^layer 1,1: names a layer twice"):
        extract_layers(tree, layer_specs("1,1", "2"), options)


def test_a_row_not_finite_in_one_layer_is_kept_in_the_others(
    tree: Path, cache_dir: Path, monkeypatch
) -> None:
    """Each entry is screened on its own columns, as its own extraction would be."""
    real = EfficientNet.forward_intermediates

    def spoiled(self, x, *args, **kwargs):
        found = real(self, x, *args, **kwargs)
        found[0][0] = float("nan")  # the first image of each batch, in the first layer asked
        return found

    monkeypatch.setattr(EfficientNet, "forward_intermediates", spoiled)
    options = ExtractOptions(cache_dir=cache_dir, **RUN)
    first, last = extract_layers(tree, layer_specs("1", "-1"), options)
    assert first.n_skipped == 3 and first.n == 9  # 12 images in batches of 4
    assert last.n_skipped == 0 and last.n == 12


def test_compare_across_layers_runs_one_forward_pass(
    cache_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    data = tmp_path / "splits"
    for split, per_class in (("train", 3), ("val", 2), ("test", 1)):
        make_tree(data, per_class=per_class, split=split, seed=per_class)
    calls = recording(monkeypatch)
    experiment = Experiment(
        data=[str(data)],
        backbones=[s.label for s in layer_specs("-4", "-3", "-2", "-1")],
        sweep={"head": ["ridge"]},
        extract=ExtractOptions(cache_dir=cache_dir, image_size=32, **RUN),
        runs_dir=str(tmp_path / "runs"),
    )
    rows_ = compare(experiment)
    assert [n for n, _ in calls] == [1, 4, 4, 4] and {layers for _, layers in calls} == {
        (1, 2, 3, 4)
    }
    assert [r.backbone for r in rows_] == [
        f"test_efficientnet:{layer}@none" for layer in ("-4", "-3", "-2", "-1")
    ]
    assert all(r.gap is None for r in rows_)  # random init: no random twin to compare with


def test_layer_entries_in_cache_ls_verify_and_rm(tree: Path, cache_dir: Path) -> None:
    """Through the console script: `extract -b m:a -b m:b` writes an entry per layer."""
    common = ["--cache-dir", str(cache_dir), "--image-size", "32", *flags(RUN)]
    made = console_script(
        "extract", str(tree), "-b", "test_efficientnet:1@none", "-b", "test_efficientnet:-1@none",
        *common, columns=200,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert made.stdout.count("12 extracted") == 2
    listed = console_script("cache", "ls", "--cache-dir", str(cache_dir), columns=200)
    assert "test_efficientnet:1 " in listed.stdout and "test_efficientnet:-1 " in listed.stdout
    checked = console_script("cache", "verify", "--cache-dir", str(cache_dir), columns=200)
    assert checked.returncode == 0, checked.stdout
    assert checked.stdout.count("ok ") == 2 and "test_efficientnet:-1" in checked.stdout
    gone = console_script(
        "cache", "rm", "tiny/test_efficientnet:1", "-y", "--cache-dir", str(cache_dir), columns=200
    )
    assert gone.returncode == 0 and "removed 1 entries" in gone.stdout, gone.stderr
    left = list_entries(cache_dir)
    assert [e.label for e in left] == ["test_efficientnet:-1"]

"""One backbone spec from the command line to the cache and back; weights resolved once."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from conftest import TINY, console_script, flags
from featpipe.backbones import build, weights
from featpipe.backbones.spec import BackboneSpec, label
from featpipe.cache.entry import read_meta
from featpipe.errors import ArgumentError
from featpipe.extraction import stage
from featpipe.extraction.stage import extract


def test_parse_joins_parts_and_weights_in_the_text_win() -> None:
    specs = BackboneSpec.parse("a@none+tv/b", weights="offline", pool="max")
    assert specs == [BackboneSpec("a", "none", pool="max"), BackboneSpec("tv/b", "offline", "max")]
    assert label(specs) == "a@none+tv/b"
    assert [s.slug for s in specs] == ["a", "tv_b"]
    with pytest.raises(ArgumentError, match=r"^backbone a\+: empty model name"):
        BackboneSpec.parse("a+")


def test_a_layer_follows_the_model_and_precedes_the_weights() -> None:
    """``MODEL[:LAYER][@WEIGHTS]``: ``hf-hub:`` is a prefix and ``@hub:TAG`` weights, not layers."""
    [hub] = BackboneSpec.parse("hf-hub:timm/vit_small_patch16_224.augreg_in21k:-2@hub:x")
    assert (hub.model, hub.layer, hub.weights) == (
        "hf-hub:timm/vit_small_patch16_224.augreg_in21k",
        "-2",
        "hub:x",
    )
    [plain] = BackboneSpec.parse("hf-hub:timm/resnet18.a1_in1k@hub:a1", layer="3")
    assert (plain.model, plain.layer, plain.weights) == (
        "hf-hub:timm/resnet18.a1_in1k",
        "3",
        "hub:a1",
    )
    specs = BackboneSpec.parse("m:-4,-1@none+tv/b+m:blocks.3", layer="2", pool="cls")
    assert [(s.model, s.layer) for s in specs] == [("m", "-4,-1"), ("tv/b", "2"), ("m", "blocks.3")]
    assert label(specs) == "m:-4,-1@none+tv/b:2+m:blocks.3"
    assert [s.slug for s in specs] == ["m", "tv_b", "m"]  # a layer's entry is named by its model
    again = BackboneSpec.parse(label(specs), pool="cls")
    assert [(s.model, s.layer, s.weights) for s in again] == [
        (s.model, s.layer, s.weights) for s in specs
    ]
    for bad, message in (("m:", "empty layer after ':'"), (":-2", "empty model name")):
        with pytest.raises(ArgumentError, match=rf"^backbone {bad}: {message}"):
            BackboneSpec.parse(bad)


def test_spec_comes_back_from_the_entry_it_made(tree: Path, cache_dir: Path) -> None:
    spec = BackboneSpec(
        "test_efficientnet", "none", pool="max", image_size=32, crop_pct=1.0, draft=True
    )
    options = {k: v for k, v in TINY.items() if k not in ("backbone", "weights", "image_size")}
    result = extract(tree, spec, cache_dir=cache_dir, **options)
    fields = read_meta(result.entry)["key_fields"]
    assert BackboneSpec.from_key_fields(spec.model, spec.weights, fields) == spec
    assert result.entry.name.startswith(spec.slug + "-")


def test_spec_and_its_own_options_do_not_mix(tree: Path, cache_dir: Path) -> None:
    with pytest.raises(ArgumentError, match=r"^backbone test_efficientnet@none: a BackboneSpec"):
        extract(tree, BackboneSpec("test_efficientnet", "none"), pool="max", cache_dir=cache_dir)


def test_jpeg_draft_is_opt_in_keyed_and_named(tree: Path, cache_dir: Path) -> None:
    exact = extract(tree, cache_dir=cache_dir, **TINY)
    assert read_meta(exact.entry)["key_fields"]["transform"]["jpeg_draft"] is False
    assert "JPEG draft" not in exact.summary()
    done = console_script(
        "extract", tree, *flags(TINY), "--cache-dir", cache_dir, "--jpeg-draft", timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "JPEG draft decoding" in done.stdout
    drafted = extract(tree, cache_dir=cache_dir, draft=True, **TINY)
    assert drafted.hit and drafted.entry != exact.entry
    assert "JPEG draft decoding" in drafted.summary()


def test_weights_are_resolved_and_read_once_per_extract(
    tree: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The --weights value is resolved once, the offline file located once and hashed once."""
    calls = {"resolve": 0, "locate": 0, "sha256": 0}

    def counting(name: str, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return wrapper

    package = weights.OFFLINE["tf_efficientnet_lite0"]
    monkeypatch.setitem(
        weights.OFFLINE,
        "tf_efficientnet_lite0",
        dataclasses.replace(package, locate=counting("locate", package.locate)),
    )
    for module in (stage, build):
        monkeypatch.setattr(module, "resolve_weights", counting("resolve", weights.resolve_weights))
    monkeypatch.setattr(build, "sha256_file", counting("sha256", weights.sha256_file))
    options = TINY | {"backbone": "tf_efficientnet_lite0", "weights": "offline"}
    result = extract(tree, cache_dir=cache_dir, **options)
    assert result.n_new == 12
    assert calls == {"resolve": 1, "locate": 1, "sha256": 1}

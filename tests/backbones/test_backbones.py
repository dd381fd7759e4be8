"""Backbones: real weights classify real photos; embeddings are pre-logits; errors are clear."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from timm.data import ImageNetInfo, create_transform

from conftest import console_script
from featpipe.backbones.build import (
    build_backbone,
    check_model_name,
    data_config,
    load_classifier,
    weights_identity,
)
from featpipe.backbones.spec import BackboneSpec
from featpipe.backbones.weights import OFFLINE, resolve_weights
from featpipe.errors import ArgumentError, DataError, FeatpipeError

CATS = {"tabby, tabby cat", "tiger cat", "Egyptian cat"}
INFO = ImageNetInfo()


def _top1(model: torch.nn.Module, config: dict, path: Path) -> str:
    x = create_transform(**config)(Image.open(path).convert("RGB")).unsqueeze(0)
    with torch.inference_mode():
        return INFO.index_to_description(int(model(x).argmax()))


@pytest.mark.parametrize("model", ["tf_efficientnet_lite0", "tv/mobilenet_v2", "mobilenetv2_100"])
def test_offline_weights_classify_real_photos(model: str, photos: dict[str, Path]) -> None:
    loaded = load_classifier(BackboneSpec(model, weights="offline"))
    assert _top1(loaded.model, loaded.data_config, photos["chelsea"]) in CATS
    assert _top1(loaded.model, loaded.data_config, photos["coffee"]) == "espresso"


def test_random_control_does_not_classify(photos: dict[str, Path]) -> None:
    loaded = load_classifier(BackboneSpec("tf_efficientnet_lite0", weights="none"))
    assert _top1(loaded.model, loaded.data_config, photos["coffee"]) != "espresso"


@pytest.mark.parametrize("model", ["tf_efficientnet_lite0", "tv/mobilenet_v2"])
def test_embedding_is_the_pre_logits_vector(model: str, photos: dict[str, Path]) -> None:
    """The embedding is what the classifier consumes: classifier(embedding) == logits."""
    spec = BackboneSpec(model, weights="offline")
    full = load_classifier(spec)
    backbone = build_backbone(spec)
    x = create_transform(**full.data_config)(Image.open(photos["chelsea"])).unsqueeze(0)
    classifier = (
        full.model.get_classifier() if not spec.is_torchvision else full.model.classifier[-1]
    )
    with torch.inference_mode():
        embedding = backbone.module(x)
        logits = full.model(x)
    expected = full.model.num_features if not spec.is_torchvision else classifier.in_features
    assert embedding.shape == (1, expected) == (1, backbone.num_features)
    torch.testing.assert_close(classifier(embedding), logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("model", "pool", "factor"),
    [
        ("test_efficientnet", "avg", 1),
        ("test_efficientnet", "max", 1),
        ("test_efficientnet", "avgmax", 2),
        ("test_vit", "cls", 1),
        ("test_vit", "avg", 1),
        ("tv/resnet18", "avgmax", 2),
    ],
)
def test_pool_dimensions(model: str, pool: str, factor: int) -> None:
    backbone = build_backbone(BackboneSpec(model, weights="none", pool=pool, image_size=64))
    native = backbone.info["native_num_features"] or 512
    assert backbone.num_features == factor * native


def test_vit_cls_and_mean_pool_differ() -> None:
    x = torch.randn(2, 3, 160, 160)
    cls = build_backbone(BackboneSpec("test_vit", weights="none", pool="cls"))
    avg = build_backbone(BackboneSpec("test_vit", weights="none", pool="avg"))
    with torch.inference_mode():
        assert not torch.allclose(cls.module(x), avg.module(x))


def test_crop_pct_keeps_the_edges_it_names(tmp_path: Path) -> None:
    """timm's crop_pct: the centre crop's share of the resized image. A 40 px image with a
    white 3 px frame, at 32 px: a crop of 0.5 cuts the frame off, 1 keeps all of it; left out,
    the weights' own (test_efficientnet's 0.95)."""
    from featpipe.data.transforms import ImageToUint8

    pixels = np.full((40, 40, 3), 255, dtype=np.uint8)
    pixels[3:-3, 3:-3] = 0
    path = tmp_path / "framed.png"
    Image.fromarray(pixels).save(path)
    edges = {}
    for crop in (None, 0.5, 1.0):
        spec = BackboneSpec("test_efficientnet", weights="none", image_size=32, crop_pct=crop)
        config = build_backbone(spec).data_config
        assert config["crop_pct"] == (crop or 0.95)
        image = ImageToUint8(config, False)(str(path))
        assert image.shape == (3, 32, 32)
        edges[crop] = int(image[:, 0, :].float().mean())
    assert edges[1.0] > 200 and edges[0.5] < 20
    with pytest.raises(ArgumentError, match=r"^crop_pct 1.5: use a fraction in \(0, 1\]"):
        build_backbone(BackboneSpec("test_efficientnet", weights="none", crop_pct=1.5))


def test_112px_input_works_thanks_to_global_pooling() -> None:
    backbone = build_backbone(
        BackboneSpec("tf_efficientnet_lite0", weights="offline", image_size=112)
    )
    assert backbone.data_config["input_size"] == (3, 112, 112)
    with torch.inference_mode():
        assert backbone.module(torch.randn(2, 3, 112, 112)).shape == (2, 1280)


def test_intermediate_layer_by_name_and_index() -> None:
    by_name = build_backbone(BackboneSpec("test_efficientnet", weights="none", layer="blocks.2"))
    by_index = build_backbone(BackboneSpec("test_efficientnet", weights="none", layer="2"))
    assert by_name.num_features == by_index.num_features < 256
    with pytest.raises(FeatpipeError, match=r"^layer blocks.9: .*feature layers 0..4"):
        build_backbone(BackboneSpec("test_efficientnet", weights="none", layer="blocks.9"))


def test_unknown_backbone_suggests_close_names() -> None:
    with pytest.raises(
        ArgumentError, match=r"^backbone resnt18: unknown model; did you mean resnet18"
    ):
        build_backbone(BackboneSpec("resnt18"))


def test_bad_pool_for_architecture_is_a_clear_error() -> None:
    with pytest.raises(FeatpipeError, match=r"^pool cls needs a transformer"):
        build_backbone(BackboneSpec("tv/resnet18", weights="none", pool="cls"))
    with pytest.raises(FeatpipeError, match=r"^pool avgmax is not available for test_vit"):
        build_backbone(BackboneSpec("test_vit", weights="none", pool="avgmax"))


def test_weights_file_that_does_not_fit_names_the_keys(tmp_path: Path) -> None:
    resnet = build_backbone(BackboneSpec("tv/resnet18", weights="none")).module.model
    path = tmp_path / "resnet18.pth"
    torch.save(resnet.state_dict(), path)
    with pytest.raises(FeatpipeError, match=r"do not fit .*missing keys: conv_stem.weight"):
        build_backbone(BackboneSpec("tf_efficientnet_lite0", weights=str(path)))


def test_local_checkpoint_loads_strictly_and_is_identified_by_sha256(tmp_path: Path) -> None:
    source = OFFLINE["tf_efficientnet_lite0"].locate()
    copy = tmp_path / "lite0.pth"
    shutil.copy(source, copy)
    from_file = build_backbone(BackboneSpec("tf_efficientnet_lite0", weights=str(copy)))
    offline = build_backbone(BackboneSpec("tf_efficientnet_lite0", weights="offline"))
    assert from_file.weights_identity == offline.weights_identity
    assert from_file.weights_identity.startswith("sha256:")


@pytest.fixture
def offline_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Hugging Face Hub unreachable and its local cache empty, whatever this machine has."""
    import huggingface_hub

    monkeypatch.setattr("featpipe.backbones.build.hub_reachable", lambda host: False)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)


@pytest.mark.parametrize("model", ["resnet18", "hf-hub:timm/resnet18.a1_in1k"])
def test_hub_failure_names_the_offline_options(model: str, offline_hub: None) -> None:
    with pytest.raises(ArgumentError, match=r"^weights hub: .*unreachable.*choose weights offline"):
        build_backbone(BackboneSpec(model, weights="hub"))


def test_torchvision_hub_offline_is_one_line_before_any_download(
    offline_hub: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd
) -> None:
    """Not cached and its host unreachable: refused at once, without torch's "Downloading:"
    line on stderr before the error."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache
    with pytest.raises(ArgumentError, match=r"^weights hub: .*\(download.pytorch.org is unre"):
        build_backbone(BackboneSpec("tv/resnet18", weights="hub"))
    assert "Downloading" not in capfd.readouterr().err


def test_hf_hub_name_is_the_timm_model_it_names() -> None:
    """``hf-hub:timm/NAME`` is timm's NAME: same architecture, same pretrained config."""
    hub = build_backbone(BackboneSpec("hf-hub:timm/resnet18.a1_in1k", weights="none"))
    plain = build_backbone(BackboneSpec("resnet18.a1_in1k", weights="none"))
    assert hub.data_config == plain.data_config and hub.num_features == 512
    assert BackboneSpec("hf-hub:timm/resnet18.a1_in1k").slug == "hf-hub_timm_resnet18.a1_in1k"
    with pytest.raises(ArgumentError, match=r"did you mean .*hf-hub:timm/resnet18"):
        check_model_name(BackboneSpec("hf-hub:timm/resnt18.a1_in1k"))


@pytest.mark.parametrize(
    ("model", "suggestion"),
    [
        ("tv/mobilenetv2", "tv/mobilenet_v2"),
        ("tv/resnt50", "tv/resnet50"),
        ("tv/foo_bar", None),
    ],
)
def test_unknown_torchvision_names_get_the_closest_names(
    model: str, suggestion: str | None
) -> None:
    with pytest.raises(ArgumentError) as caught:
        check_model_name(BackboneSpec(model))
    message = str(caught.value)
    assert message.startswith(f"backbone {model}: unknown model; ")
    assert "featpipe models --filter" in message and "family" not in message
    if suggestion:
        assert f"did you mean {suggestion}" in message
    else:
        assert "did you mean" not in message


def test_torchvision_model_of_an_unsupported_family_says_so() -> None:
    with pytest.raises(ArgumentError, match=r"^backbone tv/googlenet: this torchvision family"):
        check_model_name(BackboneSpec("tv/googlenet"))


def test_weights_file_names_missing_and_unexpected_keys(tmp_path: Path) -> None:
    state = load_classifier(BackboneSpec("test_efficientnet", weights="none")).model.state_dict()
    del state["conv_stem.weight"]
    state["extra.weight"] = torch.zeros(3)
    path = tmp_path / "edited.pth"
    torch.save(state, path)
    with pytest.raises(DataError) as caught:
        build_backbone(BackboneSpec("test_efficientnet", weights=str(path)))
    message = str(caught.value)
    assert "missing keys: conv_stem.weight" in message
    assert "unexpected keys: extra.weight" in message


@pytest.mark.parametrize(
    ("model", "source"),
    [
        ("tf_efficientnet_lite0", "tf_efficientnet_lite2"),
        ("tv/mobilenet_v2", "tf_efficientnet_lite0"),
    ],
)
def test_foreign_efficientnet_file_is_named_not_a_crash(model: str, source: str) -> None:
    """The efficientnet_pytorch key converter once crashed (IndexError, AttributeError) on
    another depth or another architecture instead of naming the keys that do not fit."""
    path = OFFLINE[source].locate()
    with pytest.raises(DataError, match=r"do not fit this architecture; missing keys: .+"):
        build_backbone(BackboneSpec(model, weights=str(path)))


def _malicious_checkpoint(path: Path, marker: Path) -> Path:
    """A pickle that runs ``touch marker`` when unpickled without weights_only."""

    class Payload:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {marker}",))

    torch.save({"conv_stem.weight": torch.zeros(1), "payload": Payload()}, path)
    return path


def test_malicious_weights_file_is_refused_in_one_line(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil = _malicious_checkpoint(tmp_path / "evil.pth", marker)
    with pytest.raises(DataError) as caught:
        build_backbone(BackboneSpec("test_efficientnet", weights=str(evil)))
    message = str(caught.value)
    assert message.startswith(f"weights {evil}: refused") and "\n" not in message
    assert "weights_only" not in message
    assert not marker.exists()


def test_a_plain_pickle_weights_file_is_refused_without_torchs_warning(
    tmp_path: Path, recwarn: pytest.WarningsRecorder
) -> None:
    """pickle.dump writes protocol 4, on which torch.load warns before refusing: the one line
    must come alone."""
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"w": Payload()}, protocol=4))
    with pytest.raises(DataError, match=r"refused, the file holds Python objects"):
        build_backbone(BackboneSpec("test_efficientnet", weights=str(evil)))
    assert [str(w.message) for w in recwarn] == []
    assert not marker.exists()


def test_cli_names_bad_backbones_and_malicious_weights_in_one_line(
    tree: Path, tmp_path: Path
) -> None:
    """Through the console script: exit 2, one line on stderr, no traceback, no code run."""
    marker = tmp_path / "ran"
    evil = _malicious_checkpoint(tmp_path / "evil.pth", marker)
    cases = [
        (
            ["-b", "tv/mobilenetv2"],
            "--backbone tv/mobilenetv2: unknown model; did you mean tv/mobilenet_v2",
        ),
        (["-b", "test_efficientnet", "--weights", str(evil)], f"--weights {evil}: refused"),
    ]
    for args, expected in cases:
        done = console_script(
            "extract", tree, *args, "--cache-dir", tmp_path / "cache", timeout=300
        )
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2, done.stderr
        assert len(lines) == 1 and expected in lines[0], done.stderr
        assert "weights_only" not in done.stderr and "Traceback" not in done.stderr
    assert not marker.exists()


def test_torchvision_file_loads_into_timm_by_path_as_offline(tmp_path: Path) -> None:
    """torchvision's MobileNetV2 file given by path to timm's mobilenetv2_100: the same tensors
    under other names, paired as the offline package pairs them."""
    copy = tmp_path / "mobilenet_v2.pth"
    shutil.copy(OFFLINE["mobilenetv2_100"].locate(), copy)
    by_path = build_backbone(BackboneSpec("mobilenetv2_100", weights=str(copy)))
    offline = build_backbone(BackboneSpec("mobilenetv2_100", weights="offline"))
    assert by_path.weights_identity == offline.weights_identity
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        torch.testing.assert_close(by_path.module(x), offline.module(x), rtol=0, atol=0)


@pytest.mark.parametrize("model", ["tv/mobilenet_v2", "mobilenetv2_100"])
def test_torchvision_mobilenet_file_brings_its_own_recipe(model: str, tmp_path: Path) -> None:
    """The offline file is torchvision's IMAGENET1K_V1: resize 256, crop 224, bilinear, in
    either library and whether named ``offline`` or by its path; not V2's 232 px nor timm's
    bicubic default."""
    v1 = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.transforms()
    copy = tmp_path / "weights.pth"
    shutil.copy(OFFLINE["tv/mobilenet_v2"].locate(), copy)
    for weights in ("offline", str(copy)):
        spec = BackboneSpec(model, weights=weights)
        choice = resolve_weights(model, weights)
        config = data_config(spec, choice, weights_identity(spec, choice))
        assert config["input_size"] == (3, 224, 224) and v1.crop_size == [224]
        assert config["interpolation"] == "bilinear" == v1.interpolation.value
        assert round(config["input_size"][-1] / config["crop_pct"]) == v1.resize_size[0] == 256
        assert config["mean"] == tuple(v1.mean) and config["std"] == tuple(v1.std)


def test_torchvision_hub_path_reads_its_own_cache(tmp_path: Path, monkeypatch) -> None:
    """The real torchvision hub code path, fed from the offline package's identical file."""
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    shutil.copy(OFFLINE["tv/mobilenet_v2"].locate(), checkpoints / "mobilenet_v2-b0353104.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    hub = build_backbone(BackboneSpec("tv/mobilenet_v2", weights="hub:IMAGENET1K_V1"))
    offline = build_backbone(BackboneSpec("tv/mobilenet_v2", weights="offline"))
    assert hub.weights_identity.startswith("hub:torchvision/MobileNet_V2_Weights.IMAGENET1K_V1")
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        torch.testing.assert_close(hub.module(x), offline.module(x))


def test_unknown_weights_option_is_a_clear_error() -> None:
    with pytest.raises(FeatpipeError, match=r"^weights nope.pth: no such file"):
        build_backbone(BackboneSpec("resnet18", weights="nope.pth"))
    with pytest.raises(FeatpipeError, match=r"no offline package carries weights for resnet18"):
        build_backbone(BackboneSpec("resnet18", weights="offline"))
    # a tag timm does not know: named with the ones it does, before anything is downloaded
    with pytest.raises(ArgumentError, match=r"^weights hub:foo: timm has no such weights .*"):
        build_backbone(BackboneSpec("tf_efficientnet_lite0", weights="hub:foo"))
    with pytest.raises(ArgumentError, match=r"choose one of hub:a1_in1k, .*hub:tv_in1k$"):
        build_backbone(BackboneSpec("resnet18", weights="hub:foo"))


@pytest.mark.parametrize("model", ["test_efficientnet", "tv/resnet18"])
@pytest.mark.parametrize("pool", ["avg", "max", "avgmax"])
def test_pooled_embedding_equals_the_feature_map_pooled_by_hand(model: str, pool: str) -> None:
    """The oracle is the unpooled map from the library's own layers, reduced with plain torch."""
    backbone = build_backbone(BackboneSpec(model, weights="none", pool=pool, image_size=64))
    net = backbone.module
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        if model.startswith("tv/"):
            fmap = torch.nn.Sequential(*list(net.model.children())[:-2])(x)
        else:
            fmap = net.forward_features(x)
        by_hand = {"avg": fmap.mean(dim=(2, 3)), "max": fmap.amax(dim=(2, 3))}
        expected = torch.cat([by_hand[p] for p in ("avg", "max") if p in pool], dim=1)
        torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-5)

"""Backbones: real weights classify real photos; embeddings are pre-logits; errors are clear."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from timm.data import ImageNetInfo, create_transform

from featpipe.backbones.build import BackboneSpec, build_backbone, load_classifier
from featpipe.backbones.weights import OFFLINE
from featpipe.errors import FeatpipeError

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
    with pytest.raises(FeatpipeError, match=r"--layer blocks.9: .*feature layers 0..4"):
        build_backbone(BackboneSpec("test_efficientnet", weights="none", layer="blocks.9"))


def test_unknown_backbone_suggests_close_names() -> None:
    with pytest.raises(FeatpipeError, match="unknown backbone 'resnt18': did you mean resnet18"):
        build_backbone(BackboneSpec("resnt18"))


def test_bad_pool_for_architecture_is_a_clear_error() -> None:
    with pytest.raises(FeatpipeError, match="--pool cls needs a transformer"):
        build_backbone(BackboneSpec("tv/resnet18", weights="none", pool="cls"))
    with pytest.raises(FeatpipeError, match="--pool avgmax is not available for test_vit"):
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


def test_hub_failure_names_the_offline_options() -> None:
    with pytest.raises(FeatpipeError, match=r"--weights offline .*--weights none"):
        build_backbone(BackboneSpec("resnet18", weights="hub"))


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
    with pytest.raises(FeatpipeError, match=r"--weights nope.pth: no such file"):
        build_backbone(BackboneSpec("resnet18", weights="nope.pth"))
    with pytest.raises(FeatpipeError, match="no offline package carries weights for resnet18"):
        build_backbone(BackboneSpec("resnet18", weights="offline"))

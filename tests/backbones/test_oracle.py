"""The embedding featpipe caches equals what the model's own library computes, on real photos.

Each test extracts real JPEG photos (scikit-image's chelsea 451×300, coffee 600×400, astronaut
512×512) with offline ImageNet weights in fp32, reads the rows back from the cache, and compares
them with a pipeline featpipe did not compute: timm's ``resolve_data_config`` +
``create_transform`` + ``forward_features`` + its own pooling for Lite0, torchvision's
``MobileNet_V2_Weights.IMAGENET1K_V1.transforms()`` and a ``torch.load``-ed state dict for
``tv/mobilenet_v2``. The model's own classifier applied to the cached rows must name the photo.
So featpipe's decoding, its ``uint8`` transform, its device-side normaliser, the engine (torch,
and OpenVINO in fp32, also in a warm run without torch: each must agree with the reference to
a cosine of 0.99999) and the cache
are all on the path under test. (Lite0's reference network gets its weights through
featpipe's loader, because the offline file uses ``efficientnet_pytorch`` key names; the
classifier test is what proves those weights right.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skimage.data
import timm
import torch
import torchvision
from PIL import Image
from timm.data import ImageNetInfo, create_transform, resolve_data_config

from featpipe.backbones.build import load_classifier
from featpipe.backbones.spec import BackboneSpec
from featpipe.backbones.weights import OFFLINE
from featpipe.cache.catalog import remove_entry
from featpipe.cache.entry import Features, load_features
from featpipe.extraction.stage import extract

CATS = {"tabby, tabby cat", "tiger cat", "Egyptian cat"}
INFO = ImageNetInfo()
EXACT = {"precision": "fp32", "batch_size": 3, "workers": 0}
# "warm": OpenVINO's second run of the same request, which goes without torch
# (featpipe.extraction.settle.runs_without_torch): EvalPixels' pixels, numpy batches, the IR.
ENGINES = ["torch", "openvino", "openvino warm"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three real photos as JPEG files; astronaut is large enough for draft decoding to act."""
    out = tmp_path_factory.mktemp("oracle") / "photos"
    out.mkdir()
    for name in ("chelsea", "coffee", "astronaut"):
        Image.fromarray(getattr(skimage.data, name)()).save(out / f"{name}.jpg", quality=95)
    return out


def _cached(folder: Path, backbone: str, cache: Path, engine: str) -> Features:
    engine, _, warm = engine.partition(" ")
    options = EXACT | {"weights": "offline", "cache_dir": cache, "engine": engine}
    result = extract(folder, backbone, **options)
    if warm:  # the entry removed, its memo and IR kept: the run without torch
        remove_entry(result.entry)
        result = extract(folder, backbone, **options)
        assert result.settings["torch_loaded"] is False
    assert result.settings["engine"] == engine and result.n_new == 3
    return load_features(result.entry)  # read back from the cache file, not from memory


def _rows(features: Features, names: list[str]) -> torch.Tensor:
    where = {p: i for i, p in enumerate(features.relpath)}
    return torch.from_numpy(features.X[[where[f"{n}.jpg"] for n in names]].astype(np.float32))


def _check_close(cached: torch.Tensor, reference: torch.Tensor) -> None:
    cos = torch.nn.functional.cosine_similarity(cached, reference, dim=1)
    assert cos.min() >= 0.99999, f"cosine to the reference: {cos.tolist()}"
    scale = reference.abs().max()
    assert (cached - reference).abs().max() <= 2e-3 * scale


def _top1(classifier: torch.nn.Module, rows: torch.Tensor) -> list[str]:
    with torch.inference_mode():
        return [INFO.index_to_description(int(i)) for i in classifier(rows).argmax(dim=1)]


NAMES = ["chelsea", "coffee", "astronaut"]


@pytest.fixture(scope="module", params=ENGINES)
def lite0(folder: Path, tmp_path_factory: pytest.TempPathFactory, request) -> tuple:
    """featpipe's cached rows, and the full timm classifier with the same weights."""
    cache = tmp_path_factory.mktemp("cache")
    model = load_classifier(BackboneSpec("tf_efficientnet_lite0", weights="offline")).model
    return _cached(folder, "tf_efficientnet_lite0", cache, request.param), model


def test_lite0_cached_rows_equal_plain_timm(folder: Path, lite0: tuple) -> None:
    features, model = lite0
    config = resolve_data_config({}, model=timm.create_model("tf_efficientnet_lite0"))
    transform = create_transform(**config)
    x = torch.stack([transform(Image.open(folder / f"{n}.jpg").convert("RGB")) for n in NAMES])
    with torch.inference_mode():
        reference = model.forward_head(model.forward_features(x), pre_logits=True)
    _check_close(_rows(features, NAMES), reference)


def test_lite0_classifier_names_the_cached_photos(lite0: tuple) -> None:
    features, model = lite0
    chelsea, coffee = _top1(model.get_classifier(), _rows(features, ["chelsea", "coffee"]))
    assert chelsea in CATS and coffee == "espresso"


@pytest.fixture(scope="module", params=ENGINES)
def mobilenet(folder: Path, tmp_path_factory: pytest.TempPathFactory, request) -> tuple:
    """featpipe's cached rows, and torchvision's own network loaded from the same file."""
    cache = tmp_path_factory.mktemp("cache")
    model = torchvision.models.mobilenet_v2()
    state = torch.load(OFFLINE["tv/mobilenet_v2"].locate(), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return _cached(folder, "tv/mobilenet_v2", cache, request.param), model.eval()


def test_mobilenet_v2_cached_rows_equal_torchvision_v1_pipeline(
    folder: Path, mobilenet: tuple
) -> None:
    features, model = mobilenet
    transform = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.transforms()
    x = torch.stack([transform(Image.open(folder / f"{n}.jpg").convert("RGB")) for n in NAMES])
    with torch.inference_mode():
        reference = torch.nn.functional.adaptive_avg_pool2d(model.features(x), 1).flatten(1)
    _check_close(_rows(features, NAMES), reference)


def test_mobilenet_v2_classifier_names_the_cached_photos(mobilenet: tuple) -> None:
    features, model = mobilenet
    chelsea, coffee = _top1(model.classifier, _rows(features, ["chelsea", "coffee"]))
    assert chelsea in CATS and coffee == "espresso"

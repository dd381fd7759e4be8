"""EvalPixels computes timm's eval transform's pixels without torch: byte for byte the same."""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata
from timm.data import create_transform

from featpipe.data.eval_pixels import EvalPixels
from featpipe.data.images import load_image
from featpipe.data.transforms import ImageToUint8


def config(size: int, crop_pct: float, interpolation: str, mode: str = "center") -> dict:
    return {
        "input_size": (3, size, size),
        "interpolation": interpolation,
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "crop_pct": crop_pct,
        "crop_mode": mode,
    }


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Real photos (colour and grey, landscape and portrait) and shapes that test the size
    and crop rules' rounding: exactly the target, odd sides, extreme aspect ratios."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    arrays = {
        "chelsea.png": skdata.chelsea(),  # 300×451 colour
        "camera.png": skdata.camera(),  # 512×512 grey
        "coffee.jpg": skdata.coffee(),  # 400×600 colour, JPEG
        "portrait.png": skdata.astronaut()[:, 100:401],  # 512×301
    }
    for h, w in [(256, 256), (224, 224), (17, 300), (301, 299), (1000, 10), (255, 257)]:
        arrays[f"noise-{h}x{w}.png"] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    paths = []
    for name, pixels in arrays.items():
        path = root / name
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    return paths


def timm_pixels(cfg: dict, path: str, draft_size: int | None = None) -> np.ndarray:
    transform = create_transform(**cfg, is_training=False, use_prefetcher=True)
    return np.asarray(transform(load_image(path, draft_size))).transpose(1, 2, 0)


@pytest.mark.parametrize(
    ("size", "crop_pct", "interpolation", "mode"),
    [
        (224, 0.875, "bicubic", "center"),  # Lite0
        (260, 0.875, "bicubic", "center"),  # Lite2
        (224, 0.95, "bilinear", "center"),  # timm's ResNets
        (224, 1.0, "bicubic", "center"),  # the whole image
        (300, 0.9, "lanczos", "center"),
        (240, 0.875, "nearest", "squash"),
        (224, 1.0, "bilinear", "squash"),
    ],
)
def test_the_same_bytes_as_timms_transform(
    photos: list[str], size: int, crop_pct: float, interpolation: str, mode: str
) -> None:
    cfg = config(size, crop_pct, interpolation, mode)
    assert EvalPixels.covers(cfg)
    pixels = EvalPixels(cfg, draft=False)
    for path in photos:
        ours = pixels(path)
        assert ours.dtype == np.uint8 and ours.shape[:2] == (size, size), path
        np.testing.assert_array_equal(ours, timm_pixels(cfg, path), err_msg=path)


def test_jpeg_draft_decodes_as_before(tmp_path) -> None:
    """With ``draft`` the JPEG decoder downscales first, to the size it always did."""
    cfg = config(224, 0.875, "bicubic")
    jpeg = str(tmp_path / "coffee-large.jpg")
    Image.fromarray(skdata.coffee()).resize((1200, 800)).save(jpeg)  # halves to 600×400 ≥ 256
    pixels = EvalPixels(cfg, draft=True)
    assert pixels.draft_size == 256
    np.testing.assert_array_equal(pixels(jpeg), timm_pixels(cfg, jpeg, draft_size=256))
    assert not np.array_equal(pixels(jpeg), EvalPixels(cfg, draft=False)(jpeg))


def test_image_to_uint8_is_the_same_tensor_either_way(photos: list[str]) -> None:
    """The torch path's transform: EvalPixels' bytes as a 3×H×W tensor, grey expanded, in the
    channels-last layout the loader stacks without gathering."""
    cfg = config(224, 0.875, "bicubic")
    transform = ImageToUint8(cfg, draft=False)
    assert transform.covered
    for path in photos:
        ours = transform(path)
        expected = timm_pixels(cfg, path)
        expected = np.broadcast_to(expected, (*expected.shape[:2], 3))
        np.testing.assert_array_equal(ours.permute(1, 2, 0).numpy(), expected, err_msg=path)
        assert ours.shape == (3, 224, 224) and ours.permute(1, 2, 0).is_contiguous() == (
            "camera" not in path
        )


@pytest.mark.parametrize(
    "cfg",
    [
        config(224, 0.875, "bicubic", "border"),  # resize the long side, then pad
        config(224, 1.1, "bicubic"),  # a crop larger than the resized image: padded
        {**config(224, 0.875, "bicubic"), "input_size": (3, 224, 192)},  # ResizeKeepRatio
    ],
    ids=["border", "crop-beyond", "non-square"],
)
def test_what_it_does_not_cover_goes_to_timm(photos: list[str], cfg: dict) -> None:
    assert not EvalPixels.covers(cfg)
    transform = ImageToUint8(cfg, draft=False)
    assert not transform.covered
    for path in photos[:2]:
        ours = transform(path).permute(1, 2, 0).numpy()
        expected = timm_pixels(cfg, path)
        np.testing.assert_array_equal(ours[:, :, : expected.shape[2]], expected)


def test_no_torch_is_loaded() -> None:
    code = (
        "import sys, featpipe.data.eval_pixels as e\n"
        "e.EvalPixels({'input_size': (3, 224, 224), 'interpolation': 'bicubic', "
        "'crop_pct': 0.875}, False)\n"
        "print(sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_filter_name_is_timms() -> None:
    from timm.data.transforms import str_to_pil_interp

    for name, pil_filter in EvalPixels.__init__.__globals__["FILTERS"].items():
        assert str_to_pil_interp(name) == pil_filter
    assert list(itertools.islice(EvalPixels.__init__.__globals__["FILTERS"], 1)) == ["nearest"]

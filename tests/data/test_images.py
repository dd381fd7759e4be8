from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featpipe.data import images
from featpipe.data.images import ImageDecodeError, load_image, load_rgb


def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "LA", "1"])
def test_every_mode_becomes_8_bit_l_or_rgb(tmp_path: Path, mode: str) -> None:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), np.uint8))
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    path = _save(img.convert(mode), tmp_path / f"x.{fmt.lower()}", format=fmt)
    out = load_image(path)
    assert out.mode == ("L" if mode in ("L", "1") else "RGB") and out.size == (30, 20)
    assert load_rgb(path).mode == "RGB"


def test_transparent_pixels_are_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)  # fully transparent black
    out = load_rgb(_save(Image.fromarray(rgba, "RGBA"), tmp_path / "a.png"))
    assert np.asarray(out).min() == 255


def test_16_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    out = np.asarray(load_rgb(_save(Image.fromarray(ramp), tmp_path / "deep.png")))
    assert out[..., 0].min() == 0 and out[..., 0].max() == 255
    assert 100 < np.median(out[..., 0]) < 160  # a clipped conversion would be all 255


def test_exif_orientation_is_honoured(tmp_path: Path) -> None:
    """Orientation 6 (the camera held upright): stored left half red, right half blue; shown
    rotated 90° clockwise, so red on top and blue at the bottom. A counter-clockwise turn or
    a mirror puts the colours elsewhere."""
    img = Image.new("RGB", (40, 20), "blue")
    img.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rot.png"  # lossless, so the colours are exact
    img.save(path, exif=exif)
    out = np.asarray(load_rgb(path))
    assert out.shape == (40, 20, 3)
    assert (out[:20] == (255, 0, 0)).all() and (out[20:] == (0, 0, 255)).all()


def test_draft_decodes_large_jpegs_smaller_but_not_below_target(tmp_path: Path) -> None:
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (1200, 1600, 3), np.uint8))
    path = _save(big, tmp_path / "big.jpg", quality=90)
    out = load_rgb(path, draft_size=256)
    assert out.size == (400, 300)  # 1/4 scale keeps the short side >= 256


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "zero-byte"), (b"hello, I am text", "not an image"), ("truncate", "truncated")],
)
def test_broken_files_raise_a_reason(tmp_path: Path, content, reason: str) -> None:
    path = tmp_path / "bad.jpg"
    if content == "truncate":
        Image.new("RGB", (200, 200), "blue").save(path, quality=95)
        path.write_bytes(path.read_bytes()[:300])
    else:
        path.write_bytes(content)
    with pytest.raises(ImageDecodeError, match=reason):
        load_rgb(path)


def test_decompression_bomb_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "MAX_PIXELS", 100)
    path = _save(Image.new("RGB", (20, 20)), tmp_path / "bomb.png")
    with pytest.raises(ImageDecodeError, match="decompression-bomb"):
        load_rgb(path)


def test_grayscale_fast_path_gives_the_same_pixels_as_rgb(tmp_path: Path) -> None:
    from featpipe.data.transforms import ImageToUint8

    gray = np.random.default_rng(1).integers(0, 255, (300, 280), np.uint8)
    path = _save(Image.fromarray(gray), tmp_path / "g.png")
    config = {
        "input_size": (3, 224, 224),
        "interpolation": "bicubic",
        "crop_pct": 0.875,
        "crop_mode": "center",
        "mean": (0.5,) * 3,
        "std": (0.5,) * 3,
    }
    transform = ImageToUint8(config, draft=True)
    fast = transform(str(path))
    slow = transform.pil_transform(load_rgb(path))
    assert fast.shape == slow.shape == (3, 224, 224)
    assert np.array_equal(fast.numpy(), slow.numpy())

"""libspng decodes 8-bit RGB PNGs in place of PIL's inflate: the same pixels to the bit, on real
files from other encoders and on hand-made ones with every filter and Adam7 interlacing;
everything else (grey, where it was not faster, and every damaged file) goes through PIL."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import skimage
from PIL import Image

from featpipe.data import images
from featpipe.data.images import ImageDecodeError, load_image

pytest.importorskip("pyspng")  # not installed where it has no wheel; PIL decodes there
SKIMAGE_DATA = Path(skimage.__file__).parent / "data"
# Written by other encoders than PIL's: with ICC profiles, XMP, text and pHYs chunks.
COLOUR_PNGS = ["chelsea", "astronaut", "coffee", "motorcycle_left", "color", "ihc"]
REAL_PNGS = [*COLOUR_PNGS, "camera", "cell", "page", "moon", "text", "microaneurysms"]  # grey
REAL_PNGS += ["horse", "logo"]  # RGBA


@pytest.fixture
def spng_calls(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every buffer handed to libspng in this test."""
    calls: list[bytes] = []
    real = images.pyspng.load

    def load(data: bytes):
        calls.append(data)
        return real(data)

    monkeypatch.setattr(images.pyspng, "load", load)
    return calls


def pil_only(path: Path, monkeypatch: pytest.MonkeyPatch) -> np.ndarray:
    with monkeypatch.context() as patch:
        patch.setattr(images, "pyspng", None)
        return np.asarray(load_image(path))


def test_libspng_gives_pils_pixels_on_real_pngs(spng_calls, monkeypatch) -> None:
    taken = 0
    for name in REAL_PNGS:
        path = SKIMAGE_DATA / f"{name}.png"
        before = len(spng_calls)
        out = load_image(path)
        with Image.open(path) as img:
            expected_fast = img.mode == "RGB"
        assert (len(spng_calls) > before) == expected_fast, name  # no slow path taken silently
        taken += expected_fast
        assert np.array_equal(np.asarray(out), pil_only(path, monkeypatch)), name
    assert taken == len(COLOUR_PNGS)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _filtered(rows: np.ndarray, channels: int) -> bytes:
    """Each row with its filter byte, cycling through PNG's five filters (none, sub, up,
    average, Paeth), computed from the raw bytes as the specification defines them."""
    out = bytearray()
    previous = np.zeros(rows.shape[1], np.int16)
    for i, row in enumerate(rows.astype(np.int16)):
        kind = i % 5
        left = np.concatenate([np.zeros(channels, np.int16), row[:-channels]])
        upper_left = np.concatenate([np.zeros(channels, np.int16), previous[:-channels]])
        if kind == 0:
            predictor = np.zeros_like(row)
        elif kind == 1:
            predictor = left
        elif kind == 2:
            predictor = previous
        elif kind == 3:
            predictor = (left + previous) // 2
        else:
            p = left + previous - upper_left
            pa, pb, pc = abs(p - left), abs(p - previous), abs(p - upper_left)
            predictor = np.where(
                (pa <= pb) & (pa <= pc), left, np.where(pb <= pc, previous, upper_left)
            )
        out += bytes([kind]) + ((row - predictor) % 256).astype(np.uint8).tobytes()
        previous = row
    return bytes(out)


ADAM7 = [(0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2)]
ADAM7 += [(1, 0, 2, 1)]  # (first row, first column, row step, column step) of each pass


def hand_made_png(pixels: np.ndarray, interlaced: bool) -> bytes:
    """An 8-bit grey or RGB PNG written by the specification, not by a library: every filter
    type, Adam7 when ``interlaced``, the data split over several IDAT chunks."""
    height, width = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else 3
    flat = pixels.reshape(height, width * channels)
    if interlaced:
        raw = b"".join(
            _filtered(
                pixels[r::dr, c::dc].reshape(-1, len(range(c, width, dc)) * channels), channels
            )
            for r, c, dr, dc in ADAM7
            if r < height and c < width
        )
    else:
        raw = _filtered(flat, channels)
    data = zlib.compress(raw, 9)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0 if channels == 1 else 2, 0, 0, interlaced)
    idat = b"".join(_chunk(b"IDAT", data[i : i + 500]) for i in range(0, len(data), 500))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + idat + _chunk(b"IEND", b"")


@pytest.mark.parametrize("interlaced", [False, True])
@pytest.mark.parametrize("shape", [(37, 23), (37, 23, 3), (1, 9, 3), (8, 1)])
def test_hand_made_pngs_decode_to_their_pixels(
    shape, interlaced, spng_calls, monkeypatch, tmp_path
) -> None:
    pixels = np.random.default_rng(len(shape) + interlaced).integers(0, 256, shape, np.uint8)
    path = tmp_path / "hand.png"
    path.write_bytes(hand_made_png(pixels, interlaced))
    out = np.asarray(load_image(path))
    assert len(spng_calls) == (len(shape) == 3)  # grey PNGs stay with PIL
    assert np.array_equal(out, pixels) and np.array_equal(pil_only(path, monkeypatch), pixels)


def _variants(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(3)
    rgb = Image.fromarray(rng.integers(0, 256, (12, 10, 3), np.uint8))
    paths = {}
    for name, image, options in [
        ("palette", rgb.convert("P"), {}),
        ("rgba", rgb.convert("RGBA"), {}),
        ("grey-alpha", rgb.convert("LA"), {}),
        ("16-bit", Image.fromarray(rng.integers(0, 65536, (12, 10), np.uint16)), {}),
        ("1-bit", rgb.convert("1"), {}),
        ("transparent-colour", rgb, {"transparency": (1, 2, 3)}),
        ("transparent-grey", rgb.convert("L"), {"transparency": 7}),
        ("exif", rgb, {"exif": _rotated()}),
        ("animated", rgb, {"save_all": True, "append_images": [rgb.rotate(90)]}),
    ]:
        paths[name] = tmp_path / f"{name}.png"
        image.save(paths[name], **options)
    return paths


def _rotated() -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = 6
    return exif


def test_what_libspng_does_not_take_goes_through_pil(spng_calls, monkeypatch, tmp_path) -> None:
    for name, path in _variants(tmp_path).items():
        out = np.asarray(load_image(path))
        assert not spng_calls, name
        assert np.array_equal(out, pil_only(path, monkeypatch)), name


def test_a_damaged_png_gets_pils_answer(monkeypatch, tmp_path) -> None:
    pixels = np.random.default_rng(4).integers(0, 256, (40, 30, 3), np.uint8)
    whole = hand_made_png(pixels, interlaced=False)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ImageDecodeError, match="truncated"):
        load_image(truncated)
    flipped = bytearray(whole)
    flipped[len(whole) // 2] ^= 0x5A  # inside the compressed data
    damaged = tmp_path / "damaged.png"
    damaged.write_bytes(bytes(flipped))
    answers = []
    for library in (images.pyspng, None):
        monkeypatch.setattr(images, "pyspng", library)
        try:
            answers.append(np.asarray(load_image(damaged)).tobytes())
        except ImageDecodeError as exc:
            answers.append(str(exc))
    assert answers[0] == answers[1]

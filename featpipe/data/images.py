"""Decode any image file a user may have into an upright 8-bit PIL image (``L`` or ``RGB``).

Real folders contain grayscale scans, RGBA screenshots, palette GIFs, CMYK JPEGs from print
workflows, 16-bit PNGs from scientific cameras and photos whose pixels are stored sideways with
an EXIF orientation tag. torchvision's ``ImageFolder`` loader only calls ``convert("RGB")``,
which silently clips 16-bit data to white and ignores EXIF. This module gets each of those right
and turns every failure into a short reason string that the cache records.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

try:  # libspng: wheels for x86-64 Linux, Apple silicon and Windows (pyproject's marker)
    import pyspng
except ImportError:  # elsewhere PIL decodes every PNG: the same pixels, more slowly
    pyspng = None

# Images above this many pixels are refused as likely decompression bombs (PIL's own default).
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
)


class ImageDecodeError(Exception):
    """Raised with a short reason when a file cannot be used as an image."""


def is_image_name(path: str | Path) -> bool:
    """Whether the name has an image extension: ``Path.suffix``'s rule, without making a
    ``Path`` (the scan asks this of every file)."""
    name = os.fspath(path).rpartition("/")[2]
    dot = name.rfind(".")
    return 0 < dot < len(name) - 1 and name[dot:].lower() in IMAGE_EXTENSIONS


def _to_8bit(img: Image.Image) -> Image.Image:
    """Scale high-bit-depth single-channel images to 8 bits instead of clipping them."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img)
        top = 65535 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255
        arr = np.clip(arr.astype(np.float64) * (255.0 / top), 0, 255).round().astype(np.uint8)
        return Image.fromarray(arr, mode="L")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        return Image.fromarray(((arr - lo) * scale).astype(np.uint8), mode="L")
    if img.mode == "1":
        return img.convert("L")
    return img


def _flatten_alpha(img: Image.Image) -> Image.Image:
    """Composite transparent images on white, the way a viewer shows them."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img


# Chunks that make PIL's answer more than the IDAT pixels: orientation, transparency, animation.
_PNG_EXTRAS = frozenset({b"eXIf", b"tRNS", b"acTL"})


def _intact_chunk_types(data: bytes) -> set[bytes] | None:
    """The chunk types of a PNG whose every chunk up to IEND is whole and matches its CRC, or
    None. libspng, as pyspng sets it up, checks neither CRCs nor zlib's checksum and would
    decode a damaged file that PIL refuses; walking the chunks first (0.05 ms for 100 kB)
    leaves those files to PIL."""
    view = memoryview(data)
    types = set()
    pos = 8
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        end = pos + 12 + length
        if end > len(data):
            return None
        (stored,) = struct.unpack_from(">I", data, end - 4)
        if zlib.crc32(view[pos + 4 : end - 4]) != stored:
            return None
        kind = bytes(view[pos + 4 : pos + 8])
        if kind == b"IEND":
            return types
        types.add(kind)
        pos = end
    return None


def _spng_pixels(img: Image.Image, data: bytes | None) -> Image.Image | None:
    """The pixels of an 8-bit RGB PNG decoded by libspng, or None to let PIL decode.

    PIL has parsed the header chunks (size, mode); libspng only replaces its inflate and
    unfiltering of the image data. On the 3,000 colour PNGs of the engine benchmark that made
    ``load_image`` 1.4× faster (README, "Decoding PNGs"); on ELPV's grey cells it was not faster
    (0.97×), so grey PNGs stay with PIL. PNG is lossless, so the pixels are PIL's to the bit
    (tests compare them on real files from other encoders and on hand-made ones). Whatever it
    does not take, or fails on, and every file with a damaged chunk, PIL decodes as before, so
    a damaged file gets PIL's reason. (One case differs: an encoder that wrote a wrong zlib
    checksum under correct CRCs; PIL refuses such a file, libspng decodes it.)
    """
    if pyspng is None or data is None or img.format != "PNG" or img.mode != "RGB":
        return None
    if data[24] != 8:  # the bit depth in IHDR, the first chunk: 16-bit RGB
        return None
    types = _intact_chunk_types(data)
    if types is None or types & _PNG_EXTRAS:
        return None
    try:
        pixels = pyspng.load(data)
    except RuntimeError:
        return None
    return Image.fromarray(pixels) if pixels.shape == (img.height, img.width, 3) else None


def load_image(path: str | Path, draft_size: int | None = None) -> Image.Image:
    """Open ``path`` as an upright 8-bit ``L`` or ``RGB`` image, or raise :class:`ImageDecodeError`.

    Grayscale stays one channel: resizing one band instead of three identical ones gives the
    same pixels for a third of the work, and the three channels are made at tensor level
    (:func:`gray_to_rgb`).

    ``draft_size`` lets the JPEG decoder downscale by a power of two while decoding (DCT
    scaling), never below ``draft_size`` on the short side. It is opt-in (extract's ``draft``,
    ``--jpeg-draft``) because the pixels are no longer the model's own preprocessing: on real
    512 px photos it halved decode time but moved Lite0 embeddings to a cosine of 0.985 (min)
    to the exact pipeline (``benchmarks/bench_fidelity.py``); the transform fingerprint, so the
    cache key, records it.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageDecodeError("zero-byte file")
        # A PNG is read whole, for libspng; PIL parses its header from the same bytes.
        data = path.read_bytes() if pyspng and path.suffix.lower() == ".png" else None
        source: Path | IO[bytes] = io.BytesIO(data) if data is not None else path
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise ImageDecodeError(
                        f"{img.width}x{img.height} pixels exceeds the decompression-bomb limit "
                        f"of {MAX_PIXELS} pixels"
                    )
                fast = _spng_pixels(img, data)
                if fast is not None:
                    return fast
                if draft_size and img.format == "JPEG":
                    # PIL keeps both sides >= the requested size, so the short side stays
                    # >= draft_size and the resize that follows only ever downsamples.
                    img.draft(img.mode, (draft_size, draft_size))
                img.load()
                img = ImageOps.exif_transpose(img)
                img = _flatten_alpha(_to_8bit(img))
                return img if img.mode == "L" else img.convert("RGB")
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image PIL can identify") from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"decompression bomb: {exc}") from None
    except Image.DecompressionBombWarning as exc:
        raise ImageDecodeError(f"decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "truncated" in reason.lower():
            reason = f"truncated image: {reason}"
        raise ImageDecodeError(reason) from None


def load_rgb(path: str | Path, draft_size: int | None = None) -> Image.Image:
    """:func:`load_image`, always as RGB (for code that hands the image to other libraries)."""
    return load_image(path, draft_size).convert("RGB")


# Never let PIL pad a truncated file with grey: a truncated image is an error, not data.
ImageFile.LOAD_TRUNCATED_IMAGES = False

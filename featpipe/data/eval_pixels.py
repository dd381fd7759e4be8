"""The eval transform's pixels, computed with PIL and numpy alone.

timm's eval transform (``create_transform(is_training=False)``) resizes the short side to
``floor(size / crop_pct)`` and crops the centre, with torchvision's ``Resize`` and
``CenterCrop``. Both are thin rules over PIL: torchvision computes the output size and the crop
box in Python and calls ``Image.resize`` and ``Image.crop``. Using them costs importing torch,
torchvision and timm, 2.4 s on a 2-core Xeon (``python -X importtime``: torchvision alone pulls
in ``torch._dynamo``, 0.9 s), which a warm OpenVINO extraction otherwise never needs
(:mod:`featpipe.extraction.settle`'s ``runs_without_torch``).

:class:`EvalPixels` applies the same two rules, with the same arithmetic, to the same PIL
image, so the pixels are the same bytes; every extraction's eval transform goes through it
(:class:`featpipe.data.transforms.ImageToUint8` wraps it), and a test compares it with timm's
transform byte for byte over sizes, aspect ratios, crop fractions, interpolations and both
image modes. Transforms it does not reproduce (timm's ``border`` crop mode, a non-square
resize target, a crop larger than the resized image) report :meth:`EvalPixels.covers` False;
their callers use timm's transform itself.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image

from featpipe.data.images import load_image

# timm's interpolation names, as torchvision maps them to PIL's filters.
FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}
DEFAULT_CROP_PCT = 0.875  # timm's, for a config without one


def scale_size(data_config: dict[str, Any]) -> tuple[int, int]:
    """The (height, width) the resize aims at before the centre crop (timm's rule)."""
    crop_pct = data_config.get("crop_pct") or DEFAULT_CROP_PCT
    height, width = data_config["input_size"][-2:]
    return math.floor(height / crop_pct), math.floor(width / crop_pct)


class EvalPixels:
    """Path → upright image → resize → centre crop → ``uint8`` H×W×C array (C is 1 for a
    grayscale image, 3 otherwise). Picklable for loader workers."""

    def __init__(self, data_config: dict[str, Any], draft: bool) -> None:
        self.crop = tuple(data_config["input_size"][-2:])
        self.scale = scale_size(data_config)
        self.mode = data_config.get("crop_mode") or "center"
        self.filter = FILTERS[data_config["interpolation"]]
        self.draft_size = self.scale[1] if draft else None  # the short side's floor

    @staticmethod
    def covers(data_config: dict[str, Any]) -> bool:
        """Whether timm's eval transform for ``data_config`` is the resize-and-crop this class
        computes: ``center`` with a square target (torchvision's short-side ``Resize``) or
        ``squash``, never cropping beyond the resized image (torchvision would pad)."""
        height, width = data_config["input_size"][-2:]
        scale_h, scale_w = scale_size(data_config)
        mode = data_config.get("crop_mode") or "center"
        square = mode == "center" and scale_h == scale_w
        return (
            (square or mode == "squash")
            and data_config.get("interpolation") in FILTERS
            and scale_h >= height
            and scale_w >= width
        )

    def resized(self, width: int, height: int) -> tuple[int, int]:
        """torchvision's output size (``_compute_resized_output_size``) as PIL's (w, h)."""
        if self.mode == "squash":
            return self.scale[1], self.scale[0]
        size = self.scale[0]
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(size * long / short)
        return (size, new_long) if width <= height else (new_long, size)

    def __call__(self, path: str) -> np.ndarray:
        img = load_image(path, self.draft_size)
        size = self.resized(*img.size)
        if size != img.size:  # torchvision returns an image of the right size untouched
            img = img.resize(size, self.filter)
        crop_h, crop_w = self.crop
        # torchvision's center_crop: offsets rounded half to even, as Python's round does
        top = round((size[1] - crop_h) / 2.0)
        left = round((size[0] - crop_w) / 2.0)
        pixels = np.array(img.crop((left, top, left + crop_w, top + crop_h)))
        return pixels[:, :, None] if pixels.ndim == 2 else pixels

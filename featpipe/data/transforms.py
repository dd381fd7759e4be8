"""The eval transform, split where it is cheapest.

Workers do the PIL part (decode, resize, centre crop) and hand over ``uint8`` tensors, four
times smaller than float32 ones. Conversion to float and normalisation happen in one fused
multiply-add on the compute device, the way timm's ``PrefetchLoader`` does it. The fingerprint
lists every setting that changes the pixels, and goes into the cache key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from PIL import Image
from timm.data import create_transform

from featpipe.data.eval_pixels import EvalPixels
from featpipe.data.images import load_image


def fingerprint(data_config: dict[str, Any], draft: bool) -> dict[str, Any]:
    return {
        "input_size": list(data_config["input_size"]),
        "interpolation": data_config["interpolation"],
        "crop_pct": round(float(data_config["crop_pct"]), 6),
        "crop_mode": data_config.get("crop_mode", "center"),
        "mean": [round(float(v), 6) for v in data_config["mean"]],
        "std": [round(float(v), 6) for v in data_config["std"]],
        "jpeg_draft": draft,
    }


class ImageToUint8:
    """Path → upright image → resize → crop → ``uint8`` 3×H×W tensor. Picklable for workers.

    The pixels are :class:`~featpipe.data.eval_pixels.EvalPixels`' (timm's eval transform's
    rules without torch), or timm's transform itself for a config it does not cover.
    Grayscale images are resized as one band and expanded to three channels afterwards: the
    same numbers as resizing an RGB copy (a test checks it), at a third of the cost.
    """

    def __init__(self, data_config: dict[str, Any], draft: bool) -> None:
        # timm's own transform: the fallback here, and the geometry the tensor decoder copies
        self.pil_transform: Callable[[Image.Image], torch.Tensor] = create_transform(
            **data_config, is_training=False, use_prefetcher=True
        )
        self.pixels = EvalPixels(data_config, draft)
        self.covered = EvalPixels.covers(data_config)

    def __call__(self, path: str) -> torch.Tensor:
        if self.covered:
            tensor = torch.from_numpy(self.pixels(path)).permute(2, 0, 1)
        else:
            tensor = self.pil_transform(load_image(path, self.pixels.draft_size))
        return tensor.expand(3, -1, -1) if tensor.shape[0] == 1 else tensor


class Normalize(torch.nn.Module):
    """``uint8`` NCHW → normalised float, as one multiply-add on the device."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        std_t = torch.tensor(std).view(1, -1, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std_t))
        self.register_buffer("shift", -torch.tensor(mean).view(1, -1, 1, 1) / std_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, x.float(), self.scale)

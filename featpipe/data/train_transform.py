"""The model's own training transform, ``uint8`` out, and reproducible augmented views.

Fine-tuning draws a fresh augmentation at every step; the view cache (``extract --views K``)
stores K augmented views of every training image instead. Both use timm's
``create_transform(is_training=True)`` from the model's resolved data config (random resized
crop with the model's interpolation, horizontal flip, optional colour jitter), with the final
conversion to a ``uint8`` tensor so that normalisation happens on the device, as for the eval
transform (:mod:`featpipe.data.transforms`).

timm's crop draws from Python's ``random`` and torchvision's flip and jitter from torch's
generator, so a view seeds both (from :func:`~featpipe.data.augment.view_seed`) and restores
them afterwards. Fine-tuning may add an automatic augmentation policy (timm's RandAugment,
AugMix or AutoAugment, or torchvision's TrivialAugment; these draw from ``random`` and numpy as
well) and the random symmetries of :mod:`featpipe.data.dihedral`; its trainer seeds every
generator per epoch.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from timm.data import create_transform
from torchvision.transforms import Compose, InterpolationMode, TrivialAugmentWide

from featpipe.choices import TRIVIAL_AUGMENT
from featpipe.data.augment import Augment, parse_source, view_seed
from featpipe.data.dihedral import RandomDihedral
from featpipe.data.images import load_image
from featpipe.data.transforms import ImageToUint8


class TrainImages(ImageToUint8):
    """Path → upright image → timm training transform → ``uint8`` 3×H×W tensor. Picklable.

    ``auto_augment``: a policy string as timm writes it (``rand-m9-mstd0.5-inc1``), or
    :data:`~featpipe.choices.TRIVIAL_AUGMENT` for torchvision's TrivialAugmentWide;
    like timm, a policy replaces the colour jitter. Policies fill uncovered pixels with an RGB
    colour (the model's mean), so a grayscale image goes through them as RGB.
    """

    def __init__(
        self,
        data_config: dict[str, Any],
        color_jitter: float,
        crop_scale: float,
        hflip: float = 0.5,
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        auto_augment: str | None = None,
    ) -> None:
        trivial = auto_augment == TRIVIAL_AUGMENT
        stages = create_transform(
            **data_config,
            is_training=True,
            use_prefetcher=True,
            scale=(crop_scale, 1.0),
            ratio=ratio,
            hflip=hflip,
            color_jitter=None if trivial else color_jitter or None,
            auto_augment=None if trivial else auto_augment,
            separate=True,
        )
        primary, secondary, final = (list(stage.transforms) for stage in stages)
        if trivial:
            secondary = [TrivialAugmentWide(interpolation=_interpolation(data_config))]
        self.pil_transform = Compose(primary + secondary + final)
        self.as_rgb = auto_augment is not None
        self.draft_size = None  # training pixels are the full decode

    def __call__(self, path: str) -> torch.Tensor:
        image = load_image(path)
        if self.as_rgb and image.mode != "RGB":
            image = image.convert("RGB")
        tensor = self.pil_transform(image)
        return tensor.expand(3, -1, -1) if tensor.shape[0] == 1 else tensor


def _interpolation(data_config: dict[str, Any]) -> InterpolationMode:
    """The model's resampling filter in torchvision's terms (TrivialAugment's rotations)."""
    return InterpolationMode(data_config["interpolation"])


class RandomSymmetries:
    """``images`` (path → ``uint8`` tensor), then one of the 8 symmetries of the square at
    random (:class:`~featpipe.data.dihedral.RandomDihedral`). Picklable."""

    def __init__(self, images: ImageToUint8) -> None:
        self.images = images
        self.symmetry = RandomDihedral()

    def __call__(self, path: str) -> torch.Tensor:
        return self.symmetry(self.images(path))


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Python's and torch's generators seeded for one view, and restored afterwards."""
    py_state, torch_state = random.getstate(), torch.get_rng_state()
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        torch.set_rng_state(torch_state)


class ViewImages(TrainImages):
    """One reproducible augmented view per :func:`view_source` string, ``uint8`` out."""

    def __init__(self, data_config: dict[str, Any], augment: Augment) -> None:
        super().__init__(
            data_config, augment.color_jitter, augment.crop_scale, augment.hflip, augment.ratio
        )
        self.seed = augment.seed

    def __call__(self, source: str) -> torch.Tensor:
        path, relpath, view = parse_source(source)
        image = load_image(path)  # decoding draws nothing: only the transform is seeded
        with seeded(view_seed(self.seed, relpath, view)):
            tensor = self.pil_transform(image)
        return tensor.expand(3, -1, -1) if tensor.shape[0] == 1 else tensor

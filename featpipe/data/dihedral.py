"""The eight symmetries of a square image: drawn at random for training, averaged at test time.

Many images have no "up": solar cells, micrographs, satellite tiles. A 90° rotation or a flip of
one is another valid image of the same class, so training may draw any of the eight symmetries of
the square (the dihedral group: four rotations, each with or without a flip), and evaluation may
average the predictions over them (test-time augmentation). Both work on ``uint8`` or float
tensors ``[..., H, W]`` of square images (every transform here crops to the model's square input)
and are exact: a rotation by 90° or a flip only moves pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

# A symmetry: (quarter turns counter-clockwise, then a vertical flip or not).
Symmetry = tuple[int, bool]
DIHEDRAL: tuple[Symmetry, ...] = tuple((k, flip) for flip in (False, True) for k in range(4))
# The views each --tta name (featpipe.choices.TTA) averages over; a horizontal flip is a vertical
# flip after a half turn.
TTA_VIEWS: dict[str, tuple[Symmetry, ...]] = {
    "none": ((0, False),),
    "hflip": ((0, False), (2, True)),
    "dihedral": DIHEDRAL,
}

Out = TypeVar("Out")


def apply(images: torch.Tensor, symmetry: Symmetry) -> torch.Tensor:
    """``images`` [..., H, W] turned ``k`` quarter turns, then flipped top to bottom if asked."""
    k, flip = symmetry
    out = torch.rot90(images, k, dims=(-2, -1)) if k % 4 else images
    return torch.flip(out, dims=(-2,)) if flip else out


class RandomDihedral:
    """One of the eight symmetries, uniformly, per image (torch's generator: seeded like
    torchvision's flips, in the worker that decodes the image). Picklable."""

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        index = int(torch.randint(len(DIHEDRAL), ()))
        return apply(image, DIHEDRAL[index])


def averaged(predict: Callable[[torch.Tensor], Out], images: torch.Tensor, tta: str) -> Out:
    """The mean of ``predict`` over the ``tta`` views of ``images`` (softmax outputs for a
    classifier, values for a regression); ``predict`` may return tensors or numpy arrays."""
    views = TTA_VIEWS[tta]
    total = predict(apply(images, views[0]))
    for view in views[1:]:
        total = total + predict(apply(images, view))
    return total / len(views)

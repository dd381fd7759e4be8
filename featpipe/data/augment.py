"""Augmentation recipes and the seeds of augmented views (no torch: a cache hit needs neither).

The transforms themselves are in :mod:`featpipe.data.train_transform`. A cached view must be the
same whoever computes it (a rerun, a resumed run, any torchrun rank, any DataLoader worker): its
randomness is seeded from (seed, image, view index) alone, never from a process's random state.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from featpipe.errors import ArgumentError

# Joins the parts of a view's source string for the loader (no path holds a NUL byte).
_SEP = "\0"


@dataclass(frozen=True)
class Augment:
    """An augmentation recipe: what decides a view's pixels besides the image and the model.

    ``crop_scale``: RandomResizedCrop keeps this share of the image area up to all of it
    (timm's default 0.08); ``ratio``: the aspect-ratio range of the crop; ``hflip``: the flip
    probability; ``color_jitter``: brightness, contrast and saturation strength (0: off);
    ``seed``: with the image and the view index, seeds every view.
    """

    crop_scale: float = 0.08
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    color_jitter: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.crop_scale <= 1:
            raise ArgumentError("crop_scale", f"{self.crop_scale}: use a share in (0, 1]")
        low, high = self.ratio
        if not 0 < low <= high:
            raise ArgumentError("ratio", f"{self.ratio}: use 0 < low <= high, e.g. 0.75,1.333")
        if not 0 <= self.hflip <= 1:
            raise ArgumentError("hflip", f"{self.hflip}: use a probability in [0, 1]")
        if self.color_jitter < 0:
            raise ArgumentError("color_jitter", f"{self.color_jitter}: use 0 (off) or more")

    def key(self) -> dict[str, Any]:
        """The recipe as it enters the cache key of the views (rounded: stable JSON)."""
        return {
            "transform": "timm-train-rrc",
            "scale": [round(self.crop_scale, 6), 1.0],
            "ratio": [round(v, 6) for v in self.ratio],
            "hflip": round(self.hflip, 6),
            "color_jitter": round(self.color_jitter, 6),
            "seed": self.seed,
        }


def view_seed(seed: int, relpath: str, view: int) -> int:
    """The seed of one view: a hash of (seed, image, view index), the same in every process."""
    digest = hashlib.sha256(f"{seed}{_SEP}{relpath}{_SEP}{view}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # torch seeds are below 2**63


def view_source(path: str, relpath: str, view: int) -> str:
    """What the loader hands :class:`ViewImages` for one view: file, identity, index."""
    return _SEP.join((path, relpath, str(view)))


def parse_source(source: str) -> tuple[str, str, int]:
    """:func:`view_source`'s parts: file path, image identity, view index."""
    path, relpath, view = source.split(_SEP)
    return path, relpath, int(view)

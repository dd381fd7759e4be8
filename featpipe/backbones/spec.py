"""A backbone as the user names it: one value from the command line to the cache and back.

``MODEL[:LAYER][@WEIGHTS]`` names one backbone (any timm name, ``hf-hub:timm/NAME``, or
``tv/NAME`` for torchvision), optionally one of its intermediate layers
(``vit_small_patch16_224:-2``, ``resnet50:layer3``; a comma list concatenates several, as
``--layer`` does), and ``a+b`` joins several whose embeddings are concatenated. The layer goes
before the weights because a weights value may hold a colon (``@hub:TAG``) and a model name
holds none (``hf-hub:`` aside, which is read as a prefix). The string is parsed
here once, at the edge; every stage after it takes :class:`BackboneSpec` values. A spec also
comes back from a cache entry's recorded key (:meth:`BackboneSpec.from_key_fields`), so that
``predict`` and fine-tuning rebuild exactly the network and preprocessing the features came from.

This module imports neither torch nor timm: the cache's fast path parses specs too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from featpipe.errors import ArgumentError
from featpipe.options import Interval

TV_PREFIX = "tv/"
HF_HUB_PREFIX = "hf-hub:"
# ``--weights`` values that only say where the default weights come from: not part of a label.
_DEFAULT_SOURCES = ("auto", "offline", "hub")
_UNSAFE = re.compile(r"[^\w.+@-]")
# timm's crop_pct: the centre crop's share of the resized short side
CROP_PCT = Interval(0, 1, closed="right", what="a fraction in (0, 1]; 1 keeps the whole image")
CROP_PCT_HELP = (
    "Centre crop as a fraction of the resized image (timm's crop_pct; default: the weights' "
    "own, 0.875 for most). 1 keeps the whole image, for images whose edges matter."
)


def slugify(text: str) -> str:
    """A file-name-safe label: every character but letters, digits and ``_ . + @ -`` becomes ``_``.

    The one rule for cache entry names (``tv_resnet18-1a2b3c4d.h5``) and run folders.
    """
    return _UNSAFE.sub("_", text)


@dataclass(frozen=True)
class BackboneSpec:
    """Everything about a backbone that a user chooses and that changes its embeddings.

    ``weights`` is the ``--weights`` value as typed; :func:`featpipe.backbones.weights.resolve`
    turns it into one concrete source, once per run. ``draft`` opts into JPEG draft decoding
    (faster, but the pixels are not the model's own preprocessing; see
    :func:`featpipe.data.images.load_image`). ``decode`` chooses the decoder: ``pil`` (exact)
    or ``tensor`` (JPEGs decoded on the device; see :mod:`featpipe.data.tensor_decode`).
    ``image_size`` and ``crop_pct`` override the weights' own input size and centre-crop
    fraction (timm's ``crop_pct``: the crop's share of the resized short side; 1.0 keeps the
    whole image, which matters where an image's edges hold what is looked for).
    """

    model: str
    weights: str = "auto"
    pool: str = "avg"
    layer: str | None = None
    image_size: int | None = None
    crop_pct: float | None = None
    draft: bool = False
    decode: str = "pil"

    @classmethod
    def parse(cls, text: str, weights: str = "auto", **options: Any) -> list[BackboneSpec]:
        """``"a@none+tv/b:-2"`` → two specs; weights and a layer named in the text win over
        ``weights`` and ``options["layer"]``.

        ``options`` (pool, layer, image_size, crop_pct, draft, decode) apply to every part.
        """
        specs = []
        for part in text.split("+"):
            name, _, own = part.strip().partition("@")
            model, layer = _layer_of(name, text)
            specs.append(
                cls(model, own or weights, **(options | ({"layer": layer} if layer else {})))
            )
        return specs

    @classmethod
    def from_key_fields(
        cls, model: str, weights: str, key_fields: Mapping[str, Any]
    ) -> BackboneSpec:
        """The spec that produced a cache entry, from its recorded key fields.

        ``weights`` is the ``--weights`` value the entry was extracted with (runs record it);
        the key itself holds the weights' identity, which callers compare after building.
        """
        transform = key_fields["transform"]
        return cls(
            model,
            weights,
            pool=key_fields["pool"],
            layer=key_fields["layer"],
            image_size=int(transform["input_size"][-1]),
            crop_pct=float(transform["crop_pct"]),
            draft=bool(transform.get("jpeg_draft", False)),
            decode="tensor" if "decode" in transform else "pil",
        )

    @property
    def is_torchvision(self) -> bool:
        return self.model.startswith(TV_PREFIX)

    @property
    def arch(self) -> str:
        """The name inside its library: ``resnet18`` for ``tv/resnet18`` and for
        ``hf-hub:timm/resnet18.a1_in1k`` → ``resnet18.a1_in1k`` (timm's own name for that repo).
        """
        if self.is_torchvision:
            return self.model[len(TV_PREFIX) :]
        if self.model.startswith(HF_HUB_PREFIX + "timm/"):
            return self.model[len(HF_HUB_PREFIX + "timm/") :]
        return self.model

    @property
    def slug(self) -> str:
        """A file-name-safe label (``tv_resnet18``)."""
        return slugify(self.model)

    @property
    def label(self) -> str:
        """``MODEL[:LAYER][@WEIGHTS]``: the weights when they are not the default source, the
        layer when there is one (two layers of one model are two feature sets); it parses back
        to this spec's model, layer and weights."""
        name = self.model if self.layer is None else f"{self.model}:{self.layer}"
        return name if self.weights in _DEFAULT_SOURCES else f"{name}@{self.weights}"

    def without_layer(self) -> BackboneSpec:
        """This spec with no layer: what several of its layers share (one forward pass)."""
        return replace(self, layer=None)


def _layer_of(name: str, text: str) -> tuple[str, str | None]:
    """``"vit_small_patch16_224:-2"`` → (model, ``"-2"``); ``hf-hub:`` is a prefix, not a layer."""
    prefix = HF_HUB_PREFIX if name.startswith(HF_HUB_PREFIX) else ""
    model, colon, layer = name[len(prefix) :].rpartition(":")
    if not colon:
        model, layer = model or layer, ""
    if not model:
        raise ArgumentError("backbone", f"{text}: empty model name; use MODEL[:LAYER][@WEIGHTS]+…")
    if colon and not layer.strip(", "):
        raise ArgumentError(
            "backbone", f"{text}: empty layer after ':'; use MODEL:LAYER (an index or a name)"
        )
    return prefix + model, layer or None


def label(specs: list[BackboneSpec]) -> str:
    """The label of a feature set (``a+tv/b@none``), as runs and leaderboards show it."""
    return "+".join(s.label for s in specs)

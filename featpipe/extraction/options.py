"""The options of an extraction, declared once.

:class:`ExtractOptions` is every option that shapes an extraction: the cache key's (weights,
pool, layer, image size, precision, dtype, JPEG draft, decoder) and how the run goes (engine,
device, batch size, workers, cache directory, bad files, content checks). ``extract()`` takes one
(or its fields as keywords); ``featpipe extract`` and every command that may extract (fit,
compare, advise) generate their "Extraction options" from these fields
(:func:`cli.options.with_options`), so a new option is written here once.

Everything is checked on construction, without torch: an explicit request can be a cache hit
that never reaches the probe's own checks, and a typo costs a fraction of a second.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from featpipe.backbones.spec import CROP_PCT, CROP_PCT_HELP, BackboneSpec
from featpipe.backbones.weights import WEIGHTS_HELP
from featpipe.cache.catalog import DEFAULT_CACHE_DIR
from featpipe.choices import DECODERS, DTYPES, ENGINES, ON_ERROR, POOLS, PRECISIONS
from featpipe.errors import ArgumentError
from featpipe.options import Interval, OneOf, auto_int, check, option

# The options a BackboneSpec carries (the network and its pixels); the rest are the run's.
SPEC_FIELDS = ("weights", "pool", "layer", "image_size", "crop_pct", "draft", "decode")


@dataclass(frozen=True)
class ExtractOptions:
    """Every extraction option, typed and checked once (see the module docstring)."""

    weights: str = option("auto", flag="--weights", short="-w", help=WEIGHTS_HELP)
    pool: str = option(
        "avg",
        constraint=OneOf(POOLS),
        help="avg | max | avgmax (concatenated) | cls (ViT) | cls+avg (ViT: the CLS token and "
        "the mean patch token, concatenated).",
    )
    layer: str | None = option(
        None,
        help="Intermediate feature layer: index or module name (timm); several, comma-separated "
        "(e.g. -4,-3,-2,-1), are read from one forward pass and concatenated in that order.",
    )
    image_size: int | None = option(
        None, constraint=Interval(1), help="Override the model's input size (px)."
    )
    crop_pct: float | None = option(None, constraint=CROP_PCT, help=CROP_PCT_HELP)
    precision: str = option(
        "auto", constraint=OneOf(PRECISIONS), help="auto (probe) | fp32 | bf16 | fp16 (CUDA)."
    )
    engine: str = option(
        "auto",
        constraint=OneOf(ENGINES),
        help="auto (probe) | torch | onnxruntime (CPU, fp32) | openvino (CPU, fp32; bf16 with "
        "--precision bf16 on CPUs that have it). Converted networks are kept in the cache "
        "directory.",
    )
    dtype: str = option(
        "float32", constraint=OneOf(DTYPES), help="Stored dtype: float32 | float16."
    )
    device: str = option(
        "auto", help="auto | cpu | cuda | cuda:N (fit: also where the torch heads train)."
    )
    batch_size: int | None = option(
        None,
        constraint=Interval(1, what="a positive number or auto"),
        help="Images per batch, or auto (probe).",
        cli_type=str,
        cli_default="auto",
        parse=auto_int,
    )
    workers: int | None = option(
        None,
        constraint=Interval(0, what="0 or more"),
        help="DataLoader worker processes, or auto.",
        cli_type=str,
        cli_default="auto",
        parse=auto_int,
    )
    cache_dir: Path = option(DEFAULT_CACHE_DIR, help="Cache root directory.")
    on_error: str = option(
        "skip", constraint=OneOf(ON_ERROR), help="skip (record and go on) | fail."
    )
    draft: bool = option(
        False,
        flag="--jpeg-draft",
        help="Decode JPEGs at reduced scale (faster; the pixels, so the embeddings, differ from "
        "the model's own preprocessing). Recorded in the cache key.",
    )
    decode: str = option(
        "pil",
        constraint=OneOf(DECODERS),
        help="pil: the model's exact PIL preprocessing in workers | tensor: JPEGs decoded in "
        "batches on the device (CUDA or CPU) and resized there, antialiased (faster on a GPU; "
        "the embeddings differ slightly). Recorded in the cache key.",
    )
    allow_outside: bool = option(
        False,
        flag="--allow-outside",
        help="Let a CSV manifest list files outside its own folder (refused by default).",
    )
    verify_content: bool = option(
        False,
        flag="--verify-content",
        help="Reuse a cached row only if its file's full SHA-256 matches (reads every file; by "
        "default size, mtime and the first and last 64 KiB are compared).",
    )
    shard_rows: int = option(
        8192, constraint=Interval(1), cli=False, help="Rows per sealed shard (tests, tuning)."
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "cache_dir", Path(self.cache_dir))
        check(self)
        if self.engine == "onnxruntime" and self.precision not in ("auto", "fp32"):
            raise ArgumentError("engine", f"onnxruntime runs fp32, not {self.precision}: use fp32")
        if self.engine == "openvino" and self.precision == "fp16":
            raise ArgumentError("engine", "openvino runs fp32 or bf16, not fp16 (CUDA): use fp32")

    def spec(self, backbone: str | BackboneSpec) -> BackboneSpec:
        """The one backbone spec of a call: parsed from its text (``MODEL[:LAYER][@WEIGHTS]``)
        with these options, or given
        (then these options must leave the spec's own fields at their defaults: a spec carries
        them, and two answers to one question would be a silent choice)."""
        if not isinstance(backbone, BackboneSpec):
            specs = BackboneSpec.parse(backbone, **self.spec_options())  # MODEL[:LAYER][@WEIGHTS]
            if len(specs) > 1:
                raise ArgumentError(
                    "backbone",
                    f"{backbone}: one extraction makes one backbone's entry; extract each part "
                    "of a '+' concatenation on its own (fit reads them joined)",
                )
            return specs[0]
        if self.spec_options() != ExtractOptions().spec_options():
            raise ArgumentError(
                "backbone",
                f"{backbone.label}: a BackboneSpec carries its weights, pool, layer, image size, "
                "draft and decode; set them on the spec, not as options",
            )
        return backbone

    def spec_options(self) -> dict[str, Any]:
        """The options a :class:`BackboneSpec` carries, as its keyword arguments."""
        return {name: getattr(self, name) for name in SPEC_FIELDS}

    def without_spec(self) -> ExtractOptions:
        """These options with the spec's own left at their defaults: what goes with a
        :class:`BackboneSpec` that carries them (a concatenation's parts, say)."""
        return replace(self, **ExtractOptions().spec_options())

    def merged(self, overrides: Mapping[str, Any]) -> ExtractOptions:
        """These options with ``overrides`` (keyword arguments of ``extract()``) on top; an
        unknown name is an error naming it."""
        unknown = sorted(set(overrides) - {f.name for f in fields(self)})
        if unknown:
            known = ", ".join(f.name for f in fields(self))
            raise ArgumentError(unknown[0], f"is not an extract option; use one of {known}")
        return replace(self, **overrides) if overrides else self


def as_extract_options(value: ExtractOptions | Mapping[str, Any] | None) -> ExtractOptions:
    """Extract options from what a Python caller or a file gave: the type itself, its fields as
    a mapping (an experiment file's ``[extract]`` table), or nothing (the defaults)."""
    if isinstance(value, ExtractOptions):
        return value
    return ExtractOptions().merged(value or {})

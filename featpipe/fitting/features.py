"""Feature sets: the cached embeddings of one dataset under one or more backbones.

A feature spec names backbones the way the CLI takes them: ``MODEL[@WEIGHTS]``, joined by
``+`` to concatenate embeddings (``tf_efficientnet_lite0+tv/mobilenet_v2``), with ``@none`` for
the random-init control (``tf_efficientnet_lite0@none``). Rows are aligned by relative path;
a file skipped under one backbone is dropped from the set.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from featpipe.cache.entry import Features
from featpipe.errors import FeatpipeError
from featpipe.extraction.stage import ExtractResult, extract


def parse_spec(spec: str, default_weights: str = "auto") -> list[tuple[str, str]]:
    """``"a@none+tv/b"`` → ``[("a", "none"), ("tv/b", default)]``."""
    parts = []
    for part in spec.split("+"):
        model, _, weights = part.strip().partition("@")
        if not model:
            raise FeatpipeError(f"backbone spec '{spec}': empty model name; use MODEL[@WEIGHTS]+…")
        parts.append((model, weights or default_weights))
    return parts


def spec_label(parts: list[tuple[str, str]]) -> str:
    return "+".join(m if w in ("auto", "offline", "hub") else f"{m}@{w}" for m, w in parts)


def concatenate(sets: list[Features], names: list[str]) -> Features:
    """Join several backbones' features of one dataset, aligned by path."""
    first = sets[0]
    for other, name in zip(sets[1:], names[1:], strict=True):
        if other.class_names != first.class_names or other.task != first.task:
            raise FeatpipeError(
                f"caches with different label sets: {names[0]} has classes "
                f"{first.class_names}, {name} has {other.class_names}; extract both from "
                "the same dataset"
            )
    common = set(first.relpath)
    for other in sets[1:]:
        common &= set(other.relpath)
    order = [p for p in first.relpath if p in common]
    blocks = []
    for f in sets:
        where = {p: i for i, p in enumerate(f.relpath)}
        rows = np.array([where[p] for p in order], dtype=np.int64)
        blocks.append(f.X[rows].astype(np.float32, copy=False))
    rows0 = np.array([{p: i for i, p in enumerate(first.relpath)}[p] for p in order], np.int64)
    meta = dict(first.meta)
    meta["parts"] = [f.meta for f in sets]
    return Features(
        np.concatenate(blocks, axis=1),
        first.labels[rows0],
        first.targets[rows0],
        first.split[rows0],
        first.relpath[rows0],
        first.class_names,
        first.task,
        meta,
    )


def load_feature_set(
    data: str | Path,
    spec: str,
    options: dict[str, Any] | None = None,
    progress: Callable[[str], Callable | None] | None = None,
) -> tuple[Features, list[ExtractResult]]:
    """Extract what is missing for every backbone of ``spec`` and return the joined features.

    ``options`` are :func:`featpipe.extract` keyword arguments (weights in the spec win).
    ``progress(model)`` may return a per-backbone progress callback.
    """
    options = dict(options or {})
    default_weights = options.pop("weights", "auto")
    parts = parse_spec(spec, default_weights)
    results = [
        extract(
            data, model, weights=weights, progress=progress(model) if progress else None, **options
        )
        for model, weights in parts
    ]
    sets = [r.load() for r in results]
    if len(sets) == 1:
        return sets[0], results
    return concatenate(sets, [m for m, _ in parts]), results

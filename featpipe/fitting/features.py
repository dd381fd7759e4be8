"""Feature sets: the cached embeddings of one dataset under one or more backbones.

A feature spec names backbones the way the CLI takes them: ``MODEL[:LAYER][@WEIGHTS]``, joined
by ``+`` to concatenate embeddings (``tf_efficientnet_lite0+tv/mobilenet_v2``), with ``@none``
for the random-init control (``tf_efficientnet_lite0@none``) and ``:LAYER`` for an intermediate
layer's features (``vit_small_patch16_224:-2``; layers of one backbone are read from one forward
pass, :mod:`featpipe.extraction.layers`). Rows are aligned by relative path;
a file skipped under one backbone is dropped from the set.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from featpipe.backbones.spec import BackboneSpec
from featpipe.cache.entry import Features, FeatureSet, read_meta
from featpipe.data.augment import Augment
from featpipe.data.datasets import Dataset, scan
from featpipe.errors import FeatpipeError
from featpipe.extraction.layers import extract_each
from featpipe.extraction.options import ExtractOptions
from featpipe.extraction.stage import ExtractResult
from featpipe.fitting.streaming import open_streamed
from featpipe.progress import Phase


def parse_feature_spec(spec: str, options: ExtractOptions | None = None) -> list[BackboneSpec]:
    """``"a@none+tv/b"`` with extract options → one :class:`BackboneSpec` per part.

    Weights named in the text win over ``options.weights``; pool, layer, image size, draft and
    decode apply to every part.
    """
    return BackboneSpec.parse(spec, **(options or ExtractOptions()).spec_options())


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
    data: str | Path | Dataset,
    specs: str | list[BackboneSpec],
    options: ExtractOptions | None = None,
    progress: Callable[[str], Callable | None] | None = None,
    status: Callable[[Phase], None] | None = None,
    memory_budget: int | None = None,
    views: int = 0,
    augment: Augment | None = None,
) -> tuple[FeatureSet, list[ExtractResult]]:
    """Extract what is missing for every backbone of ``specs`` and return the joined features.

    ``specs``: a feature spec string, or its parts already parsed by
    :func:`parse_feature_spec`; ``options`` are the extract options (the per-backbone ones
    only shape a spec string); ``views`` and ``augment`` are extract's. ``progress(model)``
    may return a per-backbone progress callback; ``status`` hears the steps before the first
    batch.
    An entry whose train features exceed ``memory_budget`` bytes is not loaded but streamed
    (:mod:`featpipe.fitting.streaming`); without a budget it is loaded.
    """
    options = options or ExtractOptions()
    if isinstance(specs, str):
        specs = parse_feature_spec(specs, options)
    if len(specs) > 1 and not isinstance(data, Dataset):  # one scan serves every backbone
        data = scan(data, allow_outside=options.allow_outside)
    results = extract_each(  # layers of one backbone from one forward pass
        data,
        specs,
        options.without_spec(),  # each spec carries its own
        progress=progress,
        status=status,
        views=views,
        augment=augment,
    )
    if memory_budget is not None and len(results) == 1:
        streamed = open_streamed(results[0].entry, memory_budget)
        if streamed is not None:
            return streamed, results
    sets = [r.load() for r in results]
    if len(sets) == 1:
        return sets[0], results
    return concatenate(sets, [s.model for s in specs]), results


def entry_records(
    specs: list[BackboneSpec], results: list[ExtractResult]
) -> tuple[list[dict[str, Any]], float]:
    """What a run records of its feature set: one entry per backbone (model, weights, the cache
    entry, its key and the settings it was extracted with), and the seconds extraction took."""
    metas = [read_meta(r.entry) for r in results]
    entries = [
        {
            "model": spec.model,
            "weights": spec.weights,
            "entry": str(r.entry),
            "key": meta["key"],
            "key_fields": meta["key_fields"],
            "settings": r.settings,
        }
        for spec, r, meta in zip(specs, results, metas, strict=True)
    ]
    seconds = sum(meta["provenance"].get("timings_s", {}).get("extract_s", 0.0) for meta in metas)
    return entries, seconds

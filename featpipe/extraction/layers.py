"""Several layers of one backbone from one forward pass, each layer its own cache entry.

"Which depth transfers best to my data?" is a compare across layers of one network
(``-b vit_small_patch16_224:-4 -b vit_small_patch16_224:-1``): feature sets that differ only in
the layer read. Extracted one by one they cost one forward pass each; :func:`extract_layers`
runs the network once (timm's ``forward_intermediates`` over every layer asked, as ``--layer
a,b`` does) and writes each layer's columns to that layer's own entry
(:func:`~featpipe.extraction.fill.fill_parts`).

Why an entry per layer rather than one entry with a layer axis: a layer's entry is the entry a
single-layer extraction of it makes, under the same key (model, weights, pixels, pool, layer,
precision, dtype): an earlier ``--layer -2`` extraction is a cache hit here and this pass's
``-2`` one there, ``fit``/``compare``/``retrieve`` read a layer as any other feature set, and
``cache ls``/``verify``/``rm`` list, check and remove it on its own. Layers of a CNN have
different widths, which one array with a layer axis would have to pad. What it costs: the row
keys (paths, sizes, fingerprints) are stored once per layer, a few hundred bytes an image.

The concatenated multi-layer entry (``--layer -4,-3,-2,-1``, DINOv2's linear evaluation) is
unchanged: it is one feature set, one entry; it can also come from the same pass as single
layers (``-b m:-4,-3,-2,-1 -b m:-1``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from featpipe.backbones.spec import BackboneSpec
from featpipe.backbones.weights import WeightsChoice, resolve_weights
from featpipe.cache.catalog import Request, entry_path, recall, remember
from featpipe.data.augment import Augment
from featpipe.data.datasets import Dataset, Task
from featpipe.errors import ArgumentError
from featpipe.extraction.fill import Part, fill_parts
from featpipe.extraction.options import ExtractOptions
from featpipe.extraction.settle import ExtractRun, build, network_request
from featpipe.extraction.stage import (
    ExtractResult,
    cache_hit,
    check_ranks,
    computed,
    extract,
    fingerprinted,
    request_for,
    scanned,
    settled,
)
from featpipe.progress import Phase, Progress, quiet
from featpipe.runtime import distributed


def layers_of(spec: BackboneSpec) -> list[str]:
    """The layers a spec reads, in its order (``"-4, -1"`` → ``["-4", "-1"]``)."""
    return [part.strip() for part in (spec.layer or "").split(",") if part.strip()]


def one_pass_groups(specs: Sequence[BackboneSpec]) -> list[list[BackboneSpec]]:
    """The specs that one forward pass can serve together: the same network and pixels (every
    field but the layer), each naming a layer, at least two different ones. Specs without a
    layer, and a layer alone, are left out (an ordinary extraction)."""
    groups: dict[BackboneSpec, list[BackboneSpec]] = {}
    for spec in specs:
        if spec.layer is not None:
            group = groups.setdefault(spec.without_layer(), [])
            if spec not in group:
                group.append(spec)
    return [group for group in groups.values() if len(group) > 1]


def extract_layers(
    data: str | Path | Dataset,
    specs: Sequence[BackboneSpec],
    options: ExtractOptions | None = None,
    *,
    name: str | None = None,
    task: Task | None = None,
    progress: Callable[[Progress], None] | None = None,
    status: Callable[[Phase], None] | None = None,
) -> list[ExtractResult]:
    """Extract (or find in the cache) every spec of ``specs`` from one forward pass.

    ``specs`` differ only in their layer (``BackboneSpec.parse("m:-4+m:-1")``, or one spec
    per depth); each is an entry of its own, under the key a single-layer extraction of it
    would have, so the results are those of :func:`~featpipe.extraction.stage.extract` for each
    spec, in order. Specs whose entry is complete are cache hits; the pass reads only the
    layers of the others. ``options`` are the run's (the specs carry their own weights, pool,
    layer, image size, draft and decode).
    """
    start = time.perf_counter()
    say = status or quiet
    options = options or ExtractOptions()
    specs = list(dict.fromkeys(options.spec(s) for s in specs))
    network = _one_network(specs)
    dataset = scanned(data, name, task, options, say)
    cache_dir = options.cache_dir
    choice = resolve_weights(network.model, network.weights)
    requests = [request_for(s, choice, options) for s in specs]
    dist = distributed.current()
    every = list(dict.fromkeys(layer for s in specs for layer in layers_of(s)))
    check_ranks(
        dist,
        request_for(replace(network, layer=",".join(every)), choice, options),
        dataset,
        cache_dir,
    )
    say(Phase("cache", f"looking up {len(dataset)} files in {cache_dir} for {len(specs)} layers"))
    hits = distributed.on_leader(
        dist,
        lambda: [cache_hit(cache_dir, r, dataset, options.verify_content) for r in requests],
    )
    missing = [i for i, hit in enumerate(hits) if hit is None]
    if len(missing) <= 1:  # nothing to share: each is a hit, or one ordinary extraction
        found = [
            hit
            if hit is not None
            else extract(dataset, specs[i], options, progress=progress, status=status)
            for i, hit in enumerate(hits)
        ]
        for result in found:
            result.seconds = time.perf_counter() - start
        return found
    read = list(dict.fromkeys(layer for i in missing for layer in layers_of(specs[i])))
    combined = request_for(replace(network, layer=",".join(read)), choice, options)
    run = settled(dataset, combined, choice, options, dist, say)
    parts = _parts(run, [specs[i] for i in missing], read, combined, choice, say)
    distributed.on_leader(
        dist, lambda: _remember(run, combined, parts, [requests[i] for i in missing])
    )
    # any entry's stat record vouches for the files (a file's content is no entry's own)
    contents = fingerprinted(parts[0].run, options, say)
    filled = fill_parts(run, parts, contents, combined.spec, choice, dist, start, say, progress)
    for i, part, done in zip(missing, parts, filled, strict=True):
        own = replace(part.run, settings=run.settings | part.run.settings)
        hits[i] = computed(own, specs[i].label, done, start)
    return hits


def _one_network(specs: list[BackboneSpec]) -> BackboneSpec:
    """The spec every one of ``specs`` reads layers of (one forward pass serves them)."""
    networks = {s.without_layer() for s in specs}
    unlayered = [s.label for s in specs if s.layer is None]
    if unlayered or len(networks) != 1:
        what = f"{unlayered[0]} names no layer" if unlayered else "they differ in more"
        raise ArgumentError(
            "backbone",
            f"{', '.join(s.label for s in specs)}: one forward pass serves layers of one "
            f"backbone (MODEL:LAYER, the same weights, pool and input); {what}",
        )
    for spec in specs:  # as a build of the spec alone would say
        if len(set(layers_of(spec))) < len(layers_of(spec)):
            raise ArgumentError("layer", f"{spec.layer}: names a layer twice")
    return networks.pop()


def _parts(
    run: ExtractRun,
    specs: list[BackboneSpec],
    read: list[str],
    combined: Request,
    choice: WeightsChoice,
    say: Callable[[Phase], None],
) -> list[Part]:
    """Each spec's entry as a part of the pass: its key (the pass's, with its own layer), its
    columns of the pass's output, its entry path, its settings."""
    dims = run.settings.get("layer_dims")
    if dims is None:  # a memo written before layer widths were recorded: the model says
        run.backbone = run.backbone or build(combined.spec, choice, run.timings, say)
        dims = list(run.backbone.layer_dims)
    offsets = np.cumsum([0, *dims])
    columns = {layer: np.arange(offsets[j], offsets[j + 1]) for j, layer in enumerate(read)}
    parts = []
    for spec in specs:
        mine = layers_of(spec)
        fields = replace(run.fields, layer=spec.layer)
        settings = run.settings | {
            "dim": int(sum(len(columns[layer]) for layer in mine)),
            "layer_dims": [len(columns[layer]) for layer in mine],
            "one_pass_layers": combined.spec.layer,  # the provenance says which pass made it
        }
        entry = entry_path(run.options.cache_dir, run.dataset.name, spec.slug, fields.digest)
        own = replace(run, fields=fields, settings=settings, entry=entry)
        parts.append(Part(own, np.concatenate([columns[layer] for layer in mine])))
    return parts


def _remember(
    run: ExtractRun, combined: Request, parts: list[Part], requests: list[Request]
) -> None:
    """Memoise each layer's request as its own extraction would, so that a later extraction
    of one layer finds its entry without building the model: its network (always), and its
    settled key where the pass's own request was memoised (by a probe, or every setting given)."""
    cache_dir = run.options.cache_dir
    network = recall(cache_dir, network_request(combined))
    memoised = recall(cache_dir, combined) is not None
    for part, request in zip(parts, requests, strict=True):
        own = {k: part.run.settings[k] for k in ("dim", "layer_dims")}
        if network is not None:
            base, described = network
            remember(
                cache_dir,
                network_request(request),
                replace(base, layer=request.spec.layer),
                described | own,
            )
        if memoised:
            remember(cache_dir, request, part.run.fields, run.settings | own)


def extract_shared(
    data: str | Path | Dataset,
    specs: Sequence[BackboneSpec],
    options: ExtractOptions,
    *,
    progress: Callable[[str], Callable[[Progress], None] | None] | None = None,
    status: Callable[[Phase], None] | None = None,
) -> dict[BackboneSpec, ExtractResult]:
    """The specs that share a forward pass with another (:func:`one_pass_groups`), each group
    extracted in one pass; ``progress(model)`` may return a progress callback per pass. Commands
    that read many feature sets (``compare``, ``retrieve``) call it first: their per-set
    extractions are then cache hits."""
    found: dict[BackboneSpec, ExtractResult] = {}
    for group in one_pass_groups(specs):
        watch = progress(group[0].model) if progress else None
        results = extract_layers(data, group, options, progress=watch, status=status)
        found.update(zip(group, results, strict=True))
    return found


def extract_each(
    data: str | Path | Dataset,
    specs: Sequence[BackboneSpec],
    options: ExtractOptions,
    *,
    progress: Callable[[str], Callable[[Progress], None] | None] | None = None,
    status: Callable[[Phase], None] | None = None,
    views: int = 0,
    augment: Augment | None = None,
) -> list[ExtractResult]:
    """Every spec's extraction, in order; layers of one backbone come from one forward pass
    (:func:`extract_shared`), the others one by one (with ``views``, which only a spec on its
    own takes)."""
    found = extract_shared(data, specs, options, progress=progress, status=status)
    if views and found:
        raise ArgumentError("views", "are extracted for one backbone at a time, not for layers")
    return [
        found[spec]
        if spec in found
        else extract(
            data,
            spec,
            options,
            progress=progress(spec.model) if progress else None,
            status=status,
            views=views,
            augment=augment,
        )
        for spec in specs
    ]

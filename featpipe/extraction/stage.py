"""The extract stage: run a frozen backbone once over a dataset and cache pooled embeddings.

The order of work is chosen so that the cheap answer comes first:

1. scan the dataset (``stat`` only), check the arguments and look the request up in the memo:
   if the entry already describes this exact scan, return at once, without importing torch
   (:mod:`featpipe.extraction.settle`);
2. otherwise settle the key (building the backbone and probing speed only if needed), recover
   any journal a killed run left behind, and find the rows no shard holds yet
   (:mod:`featpipe.extraction.fill`, over the cache's :mod:`~featpipe.cache.transaction`);
3. extract only those rows, streaming batch by batch into a crash-safe journal
   (:mod:`featpipe.extraction.rows`);
4. commit the entry: one atomic rename.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featpipe.backbones.spec import BackboneSpec
from featpipe.backbones.weights import WeightsChoice, resolve_weights
from featpipe.cache.catalog import Request, ensure_writable, recall
from featpipe.cache.entry import Features, entry_header, load_features, parts_dir
from featpipe.cache.fingerprints import Contents
from featpipe.cache.statrecord import read_record
from featpipe.data.augment import Augment
from featpipe.data.datasets import Dataset, Task, scan
from featpipe.extraction.fill import Filled, fill
from featpipe.extraction.options import ExtractOptions
from featpipe.extraction.settle import (
    ExtractRun,
    cached,
    leader_then_all,
    resolve,
    runs_without_torch,
    settled_without_torch,
)
from featpipe.extraction.views import check_views, extract_views
from featpipe.progress import Phase, Progress, quiet
from featpipe.runtime import distributed
from featpipe.runtime.allocator import keep_freed_memory

if TYPE_CHECKING:
    from featpipe.extraction.views import ViewsResult


@dataclass
class ExtractResult:
    """What one extract call did, and where its features are.

    ``seconds`` is the whole call and ``images_per_second`` is ``n_new / seconds``, over the same
    interval; ``timings`` holds its parts (``import_s``, ``model_s``, ``probe_s``, ``copy_s``,
    ``extract_s``).
    """

    entry: Path
    dataset: str
    backbone: str
    n: int
    dim: int
    n_new: int
    n_skipped: int
    seconds: float
    hit: bool
    images_per_second: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)
    ranks: list[dict[str, Any]] = field(default_factory=list)
    n_copied: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    views: ViewsResult | None = None  # with ``views=K``: the augmented views of train images

    def __repr__(self) -> str:
        done = "cache hit" if self.hit else f"{self.n_new} new, {self.n_skipped} skipped"
        return (
            f"ExtractResult({self.dataset!r}, {self.backbone!r}, N={self.n}, D={self.dim}, "
            f"{done}, {self.seconds:.1f} s, entry={str(self.entry)!r})"
        )

    def load(self, split: str | list[str] | None = None) -> Features:
        return load_features(self.entry, split)

    def summary(self) -> str:
        s = self.settings
        draft = ", JPEG draft decoding" if s.get("jpeg_draft") else ""  # opt-in, changes pixels
        draft += ", tensor decoding" if s.get("decode") == "tensor" else ""  # likewise
        thread = " + decoding thread" if s.get("prefetch") else ""  # the next batch, meanwhile
        thread += ", torch not loaded" if s.get("torch_loaded") is False else ""  # settle's
        if self.hit:
            return (
                f"cache hit: {self.entry}  N={self.n} D={self.dim}  "
                f"({self.seconds:.2f} s, nothing to extract{draft})"
            )
        per_s = self.images_per_second
        rate = f", {per_s:.1f} images/s" if per_s >= 10 else f", {per_s:.2f} images/s"
        rate = rate if self.n_new else ""
        copied = f", {self.n_copied} copied from other datasets' entries" if self.n_copied else ""
        skipped = f", {self.n_skipped} skipped" if self.n_skipped else ""
        phases = ", ".join(
            f"{label} {self.timings[key]:.1f} s"
            for key, label in (
                ("import_s", "loading torch and timm"),
                ("model_s", "model build"),
                ("probe_s", "speed probe"),
            )
            if key in self.timings
        )
        phases = f" (of which {phases})" if phases else ""
        how = (
            f"  [{s['engine']} {s['precision']}, batch {s['batch_size']}, "
            f"{s.get('workers', 0)} workers{thread}{draft}]"
            if self.n_new
            else ""
        )
        note = f"\nnote: {s['probe_note']}" if self.n_new and s.get("probe_note") else ""
        return (
            f"{self.entry}  N={self.n} D={self.dim}  {self.n_new} extracted{copied} in "
            f"{self.seconds:.1f} s{rate}{phases}{skipped}{how}{note}"
        )


def extract(
    data: str | Path | Dataset,
    backbone: str | BackboneSpec = "tf_efficientnet_lite0",
    options: ExtractOptions | None = None,
    *,
    name: str | None = None,
    task: Task | None = None,
    progress: Callable[[Progress], None] | None = None,
    status: Callable[[Phase], None] | None = None,
    views: int = 0,
    augment: Augment | None = None,
    **overrides: Any,
) -> ExtractResult:
    """Extract (or find in the cache) pooled embeddings of ``data`` under ``backbone``.

    ``data`` is an ImageFolder tree, a CSV manifest, an unlabelled folder or a scanned
    :class:`~featpipe.data.datasets.Dataset` (``name`` and ``task`` shape the scan).
    ``backbone`` is a model name or a :class:`~featpipe.backbones.spec.BackboneSpec`.
    ``options`` are the :class:`~featpipe.extraction.options.ExtractOptions` (weights, pool,
    layer, image size, precision, engine, dtype, device, batch size, workers, cache directory,
    on_error, JPEG draft, decoder, allow_outside, verify_content); any of them may also be given
    as a keyword (``extract(data, "resnet50", weights="offline")``), on top of ``options``.
    Only rows that no shard holds yet are computed; the result's :meth:`ExtractResult.load`
    reads them back. A stored row is reused when its file's path, size, mtime and content
    fingerprint (first and last 64 KiB) match; ``verify_content`` compares every file's full
    SHA-256 too. The same files under another dataset name are copied from that dataset's entry
    (see :mod:`featpipe.extraction.reuse`). ``progress`` is called after every batch, ``status``
    at every step before the first (see :class:`~featpipe.progress.Phase`).

    ``views``: also cache K augmented views of every training image, made with the model's
    training transform under ``augment`` (default :class:`~featpipe.data.augment.Augment`);
    the result's ``views`` holds them (see :mod:`featpipe.extraction.views`).
    """
    start = time.perf_counter()
    say = status or quiet
    options = (options or ExtractOptions()).merged(overrides)  # every check, before any work
    check_views(views)
    dataset = scanned(data, name, task, options, say)
    cache_dir = options.cache_dir
    spec = options.spec(backbone)
    choice = resolve_weights(spec.model, spec.weights)  # once per run, passed down
    request = request_for(spec, choice, options)
    dist = distributed.current()
    check_ranks(dist, request, dataset, cache_dir)
    say(Phase("cache", f"looking up {len(dataset)} files in {cache_dir}"))
    hit = distributed.on_leader(
        dist, lambda: cache_hit(cache_dir, request, dataset, options.verify_content)
    )

    def with_views(result: ExtractResult) -> ExtractResult:
        if views:
            result.views = extract_views(
                result.entry,
                result.settings,
                dataset,
                spec,
                choice,
                views,
                augment or Augment(),
                options,
                progress=progress,
                say=say,
            )
        return result

    if hit is not None:
        hit.seconds = time.perf_counter() - start
        return with_views(hit)
    memo = recall(cache_dir, request) if dist is None and not views else None
    if memo is not None and runs_without_torch(memo, request, options, len(dataset)):
        prepare_to_compute(cache_dir, say, load_torch=False)
        run = settled_without_torch(dataset, request, memo, options)
    else:
        run = settled(dataset, request, choice, options, dist, say)
    contents = fingerprinted(run, options, say)
    filled = fill(run, contents, spec, choice, dist, start, say, progress)
    return with_views(computed(run, backbone, filled, start))


def scanned(
    data: str | Path | Dataset,
    name: str | None,
    task: Task | None,
    options: ExtractOptions,
    say: Callable[[Phase], None],
) -> Dataset:
    """``data`` scanned (``stat`` only), or as given when it is a scan already."""
    if isinstance(data, Dataset):
        return data
    say(Phase("scanning", f"scanning {data}"))
    return scan(data, name=name, task=task, allow_outside=options.allow_outside)


def request_for(spec: BackboneSpec, choice: WeightsChoice, options: ExtractOptions) -> Request:
    """The request memos and cache hits are looked up by: the spec and the run's options."""
    return Request(
        spec=spec,
        weights_detail=choice.detail,
        precision=options.precision,
        engine=options.engine,
        batch_size=options.batch_size,
        dtype=options.dtype,
        device=options.device,
    )


def check_ranks(
    dist: distributed.Dist | None, request: Request, dataset: Dataset, cache_dir: Path
) -> None:
    """Under torchrun: every rank asks the same of the same data, in a cache they all share."""
    if dist is not None:
        distributed.check_same(
            asdict(request) | {"data": str(dataset.root), "dataset": dataset.digest()}
        )
        distributed.check_shared(ensure_writable(cache_dir))  # ranks prove it by writing there


def prepare_to_compute(
    cache_dir: Path, say: Callable[[Phase], None], load_torch: bool = True
) -> float:
    """What a run that computes rows does first (after the cache hit: a complete entry needs
    no write access): check the cache is writable, keep freed memory, load torch, timm and
    torchvision (unless the run goes without them). Returns the seconds they took to load (0
    when they were loaded or not needed): 2.3 s on a 2-core Xeon, of which timm and torchvision
    1.3 s, more than building most models, so the summary line counts them here rather than
    leave them inside whichever step imports first."""
    ensure_writable(cache_dir)
    keep_freed_memory()  # before the probe, so that it times what the run will see
    if not load_torch or "featpipe.backbones.build" in sys.modules:
        return 0.0
    say(Phase("building", "loading torch and timm"))  # seconds on a loaded machine: say so
    t0 = time.perf_counter()
    import featpipe.backbones.build  # noqa: F401  (torch, timm, torchvision)

    return time.perf_counter() - t0


def settled(
    dataset: Dataset,
    request: Request,
    choice: WeightsChoice,
    options: ExtractOptions,
    dist: distributed.Dist | None,
    say: Callable[[Phase], None],
) -> ExtractRun:
    """The run of a request on the torch path: torch loaded (its seconds counted), then rank 0
    resolves the key and speed settings and the other ranks read its memo."""
    import_s = prepare_to_compute(options.cache_dir, say)
    run = leader_then_all(
        dist,
        lambda memo: resolve(dataset, request, choice, memo, options, say),
        lambda: recall(options.cache_dir, request),
    )
    if import_s:
        run.timings["import_s"] = import_s
    return run


def fingerprinted(
    run: ExtractRun, options: ExtractOptions, say: Callable[[Phase], None]
) -> Contents:
    """The dataset's file contents as this run compares them (the stat record saves reads)."""
    say(Phase("cache", f"reading the cache and fingerprinting {len(run.dataset)} files"))
    record = read_record(parts_dir(run.entry))
    return Contents(run.dataset, full=options.verify_content, record=record)


def computed(
    run: ExtractRun, backbone: str | BackboneSpec, filled: Filled, start: float
) -> ExtractResult:
    """The result of a run that filled its entry (``start``: when the call began)."""
    n, dim, n_skipped = filled.header or entry_header(run.entry)  # torchrun's other ranks
    seconds = time.perf_counter() - start  # the whole call: the rate is over the same interval
    return ExtractResult(
        run.entry,
        run.dataset.name,
        backbone,
        n,
        dim,
        filled.extracted,
        n_skipped,
        seconds,
        hit=False,
        images_per_second=filled.extracted / seconds if seconds > 0 else 0.0,
        settings=run.settings,
        ranks=filled.ranks,
        n_copied=filled.copied.rows,
        timings=run.timings,
    )


def cache_hit(
    cache_dir: Path, request: Request, dataset: Dataset, verify_content: bool
) -> ExtractResult | None:
    """The result of a request whose entry already describes this scan, if there is one."""
    found = cached(cache_dir, request, dataset, verify_content)
    if found is None:
        return None
    entry, settings = found
    n, dim, n_skipped = entry_header(entry)
    return ExtractResult(
        entry,
        dataset.name,
        request.spec.model,
        n,
        dim,
        0,
        n_skipped,
        0.0,
        hit=True,
        settings=settings,
    )

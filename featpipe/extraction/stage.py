"""The extract stage: run a frozen backbone once over a dataset and cache pooled embeddings.

The order of work is chosen so that the cheap answer comes first:

1. scan the dataset (``stat`` only) and look the request up in the memo: if the entry already
   describes this exact scan, return at once, without importing torch;
2. otherwise resolve the key (building the backbone and probing speed only if needed), recover
   any journal a killed run left behind, and find the rows no shard holds yet;
3. extract only those rows, streaming batch by batch into a crash-safe journal;
4. commit the entry: one atomic rename.
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featpipe.backbones.spec import BackboneSpec
from featpipe.backbones.weights import WeightsChoice, resolve_weights
from featpipe.cache.catalog import (
    DEFAULT_CACHE_DIR,
    Request,
    ensure_writable,
    entry_path,
    recall,
    remember,
)
from featpipe.cache.entry import Features, entry_header, load_features, matches
from featpipe.cache.fingerprints import Contents
from featpipe.cache.journals import ShardWriter
from featpipe.cache.key import KeyFields
from featpipe.cache.transaction import Transaction
from featpipe.choices import DECODERS, DTYPES, ENGINES, ON_ERROR, PRECISIONS
from featpipe.data.datasets import Dataset, Item, RowId, Task, scan
from featpipe.errors import ArgumentError, FeatpipeError
from featpipe.extraction import provenance, reuse
from featpipe.extraction.views import check_views
from featpipe.progress import Phase, Progress, quiet
from featpipe.runtime import distributed
from featpipe.runtime.allocator import keep_freed_memory
from featpipe.runtime.workers import default_workers

if TYPE_CHECKING:
    from featpipe.backbones.build import Backbone
    from featpipe.data.augment import Augment
    from featpipe.extraction.views import ViewsResult

FLOAT16_MAX = 65504.0


# A dataset of at most this many images is not worth a speed probe: exact fp32 on plain torch at
# the default batch. The probe's floor is the fp32 baseline's two single-image forwards (for
# Lite0 on 2 cores: 8.7 s at load 13, where the whole run went at 1.6 img/s), and beyond that it
# may spend 5% of the run; the most it can save is ~60% (bf16 or ONNX Runtime at 1.5-2.8x), and
# only a run of minutes leaves the 5% share room to compare a second candidate. Below 256 images
# the floor alone is a sizeable share of the run and the share leaves nothing to compare.
PROBE_MIN_IMAGES = 256


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
                ("import_s", "loading torch"),
                ("model_s", "model build"),
                ("probe_s", "speed probe"),
            )
            if key in self.timings
        )
        phases = f" (of which {phases})" if phases else ""
        how = (
            f"  [{s['engine']} {s['precision']}, batch {s['batch_size']}, "
            f"{s.get('workers', 0)} workers{draft}]"
            if self.n_new
            else ""
        )
        note = f"\nnote: {s['probe_note']}" if self.n_new and s.get("probe_note") else ""
        return (
            f"{self.entry}  N={self.n} D={self.dim}  {self.n_new} extracted{copied} in "
            f"{self.seconds:.1f} s{rate}{phases}{skipped}{how}{note}"
        )


def _check_options(
    dtype: str,
    on_error: str,
    batch_size: int | None,
    workers: int | None,
    engine: str,
    precision: str,
    decode: str = "pil",
) -> None:
    """Every check that needs no torch, before anything else: an explicit request can be a
    cache hit that never reaches the probe's own checks."""
    if engine not in ENGINES:
        raise ArgumentError("engine", f"{engine}: choose one of {', '.join(ENGINES)}")
    if precision not in PRECISIONS:
        raise ArgumentError("precision", f"{precision}: choose one of {', '.join(PRECISIONS)}")
    if engine == "onnxruntime" and precision not in ("auto", "fp32"):
        raise ArgumentError("engine", f"onnxruntime runs fp32, not {precision}: use fp32")
    if dtype not in DTYPES:
        raise ArgumentError("dtype", f"{dtype}: choose one of {', '.join(DTYPES)}")
    if on_error not in ON_ERROR:
        raise ArgumentError("on_error", f"{on_error}: choose one of {', '.join(ON_ERROR)}")
    if batch_size is not None and batch_size < 1:
        raise ArgumentError("batch_size", f"{batch_size}: use a positive number or auto")
    if workers is not None and workers < 0:
        raise ArgumentError("workers", f"{workers}: use 0 or more")
    if decode not in DECODERS:
        raise ArgumentError("decode", f"{decode}: choose one of {', '.join(DECODERS)}")


@dataclass
class _Run:
    """The resolved state of one extract call."""

    dataset: Dataset
    fields: KeyFields
    settings: dict[str, Any]
    entry: Path
    device: Any
    backbone: Backbone | None
    timings: dict[str, float]
    cache_dir: Path
    # pending items → (loader sources, picklable source → uint8 image); None: the eval view
    images: Callable[[list[Item]], tuple[list[str], Callable[[str], Any]]] | None = None


def extract(
    data: str | Path | Dataset,
    backbone: str | BackboneSpec = "tf_efficientnet_lite0",
    *,
    weights: str = "auto",
    pool: str = "avg",
    layer: str | None = None,
    image_size: int | None = None,
    precision: str = "auto",
    engine: str = "auto",
    dtype: str = "float32",
    device: str = "auto",
    batch_size: int | None = None,
    workers: int | None = None,
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
    on_error: str = "skip",
    name: str | None = None,
    task: Task | None = None,
    draft: bool = False,
    decode: str = "pil",
    allow_outside: bool = False,
    shard_rows: int = 8192,
    verify_content: bool = False,
    progress: Callable[[Progress], None] | None = None,
    status: Callable[[Phase], None] | None = None,
    views: int = 0,
    augment: Augment | None = None,
) -> ExtractResult:
    """Extract (or find in the cache) pooled embeddings of ``data`` under ``backbone``.

    ``data`` is an ImageFolder tree, a CSV manifest, an unlabelled folder or a scanned
    :class:`~featpipe.data.datasets.Dataset`. ``backbone`` is a model name (with ``weights``,
    ``pool``, ``layer``, ``image_size`` and ``draft``, JPEG draft decoding: faster, not the
    model's own pixels; ``decode``, ``pil`` or ``tensor``: JPEGs decoded in batches on the
    device, see :mod:`featpipe.data.tensor_decode`) or a
    :class:`~featpipe.backbones.spec.BackboneSpec` that carries them.
    Only rows that no shard holds yet are computed; the result's :meth:`ExtractResult.load`
    reads them back. A stored row is reused when its file's path, size, mtime and content
    fingerprint (first and last 64 KiB) match; ``verify_content`` compares every file's full
    SHA-256 too. The same files under another dataset name are copied from that dataset's entry
    (see :mod:`featpipe.extraction.reuse`). ``progress`` is called after every batch, ``status``
    at every step before the first (see :class:`Phase`). ``allow_outside`` lets a CSV manifest
    name files outside its own folder (refused by default).

    ``views``: also cache K augmented views of every training image, made with the model's
    training transform under ``augment`` (default :class:`~featpipe.data.augment.Augment`);
    the result's ``views`` holds them (see :mod:`featpipe.extraction.views`).
    """
    start = time.perf_counter()
    say = status or quiet
    own_decode = backbone.decode if isinstance(backbone, BackboneSpec) else decode
    _check_options(dtype, on_error, batch_size, workers, engine, precision, own_decode)
    check_views(views)
    if not isinstance(data, Dataset):
        say(Phase("scanning", f"scanning {data}"))
    dataset = (
        data
        if isinstance(data, Dataset)
        else scan(data, name=name, task=task, allow_outside=allow_outside)
    )
    cache_dir = Path(cache_dir)
    spec = _as_spec(backbone, weights, pool, layer, image_size, draft, decode)
    choice = resolve_weights(spec.model, spec.weights)  # once per run, passed down
    request = Request(
        spec=spec,
        weights_detail=choice.detail,
        precision=precision,
        engine=engine,
        batch_size=batch_size,
        dtype=dtype,
        device=device,
    )
    dist = distributed.current()
    if dist is not None:
        distributed.check_same(
            asdict(request) | {"data": str(dataset.root), "dataset": dataset.digest()}
        )
        distributed.check_shared(ensure_writable(cache_dir))  # ranks prove it by writing there
    say(Phase("cache", f"looking up {len(dataset)} files in {cache_dir}"))
    hit = distributed.on_leader(
        dist, lambda: _cache_hit(cache_dir, request, dataset, verify_content)
    )

    def with_views(result: ExtractResult) -> ExtractResult:
        if views:
            from featpipe.data.augment import Augment
            from featpipe.extraction.views import extract_views

            result.views = extract_views(
                result,
                dataset,
                spec,
                choice,
                views,
                augment or Augment(),
                device=device,
                engine=engine,
                batch_size=batch_size,
                workers=workers,
                cache_dir=cache_dir,
                on_error=on_error,
                shard_rows=shard_rows,
                verify_content=verify_content,
                progress=progress,
                say=say,
            )
        return result

    if hit is not None:
        hit.seconds = time.perf_counter() - start
        return with_views(hit)
    ensure_writable(cache_dir)  # after the hit: a complete entry needs no write access
    keep_freed_memory()  # before the probe, so that it times what the run will see
    import_s = 0.0
    if "torch" not in sys.modules:  # seconds on a loaded machine: say so, and count them
        say(Phase("building", "loading torch"))
        t0 = time.perf_counter()
        import torch  # noqa: F401

        import_s = time.perf_counter() - t0
    run = _leader_then_all(
        dist,
        lambda memo: _resolve(dataset, request, choice, memo, cache_dir, say),
        lambda: recall(cache_dir, request),
    )
    if import_s:
        run.timings["import_s"] = import_s
    say(Phase("cache", f"reading the cache and fingerprinting {len(dataset)} files"))
    contents = Contents(dataset.root, [i.relpath for i in dataset.items], full=verify_content)
    n_new, copied, ranks = fill(
        run, contents, spec, choice, dist, start, say, on_error, workers, shard_rows, progress
    )
    n, dim, n_skipped = entry_header(run.entry)
    seconds = time.perf_counter() - start  # the whole call: the rate is over the same interval
    result = ExtractResult(
        run.entry,
        dataset.name,
        backbone,
        n,
        dim,
        n_new,
        n_skipped,
        seconds,
        hit=False,
        images_per_second=n_new / seconds if seconds > 0 else 0.0,
        settings=run.settings,
        ranks=ranks,
        n_copied=copied.rows,
        timings=run.timings,
    )
    return with_views(result)


def fill(
    run: _Run,
    contents: Contents,
    spec: BackboneSpec,
    choice: WeightsChoice,
    dist: distributed.Dist | None,
    start: float,
    say: Callable[[Phase], None],
    on_error: str,
    workers: int | None,
    shard_rows: int,
    progress: Callable[[Progress], None] | None,
    copy: bool = True,
) -> tuple[int, reuse.Reused, list[dict[str, Any]]]:
    """Compute the rows of ``run.dataset`` that no shard holds and commit its entry.

    Recovers killed runs' journals, copies rows from other datasets' entries (``copy``), splits
    the rest among torchrun ranks, claims them against concurrent extracts, extracts them into
    journals and shards, and (rank 0) commits the entry. Returns the rows extracted, the rows
    copied and every rank's record. The view cache (:mod:`featpipe.extraction.views`) runs
    its view rows through here too, with the same guarantees.
    """
    write = Transaction(run.entry, run.dataset, run.fields, int(run.settings["dim"]), contents)
    distributed.on_leader(dist, write.recover)
    pending = write.pending()
    copied = (
        distributed.on_leader(dist, lambda: _reuse(run, write, pending, say))
        if copy
        else reuse.Reused()
    )
    if copied.rows:
        pending = write.pending()
    mine = pending[distributed.part(len(pending), dist.rank, dist.world)] if dist else pending
    # Rows a concurrent extract is computing are left to it (torchrun ranks split theirs above).
    mine, claim = write.claim(mine, skip_claimed=dist is None)

    def work(items: list[Item]) -> tuple[int, float]:
        if not items:
            return 0, 0.0
        if run.backbone is None:
            run.backbone = _build(spec, choice, run.timings, say)
        from featpipe.runtime.devices import host_threads

        t0 = time.perf_counter()
        rank, world = (dist.rank, dist.world) if dist else (0, 1)
        with host_threads(run.device), write.writer(rank, shard_rows) as writer:
            rows = _extract_rows(run, items, writer, on_error, workers, progress, world)
        run.timings["extract_s"] = time.perf_counter() - t0
        return rows, len(items) / run.timings["extract_s"]

    try:
        n_new, rate = distributed.everyone(dist, lambda: work(mine))
    finally:
        claim.release()
    if claim.elsewhere:  # then finish what the other writer left (it may have been killed)
        say(Phase("waiting", f"waiting for another extract computing {claim.elsewhere} rows"))
        claim.wait()
        write.recover()
        n_new += work(write.pending())[0]
    ranks = [{"rank": 0, "rows": n_new, "images_per_s": round(rate, 2), "host": platform.node()}]
    if dist is not None:
        ranks = distributed.gather(
            {
                "rank": dist.rank,
                "rows": n_new,
                "images_per_s": round(rate, 2),
                "seconds": round(run.timings.get("extract_s", 0.0), 2),
                "host": platform.node(),
            }
        )
        run.timings["extract_s"] = max(r["seconds"] for r in ranks)  # the slowest rank's loop
        n_new = sum(r["rows"] for r in ranks)

    def finish() -> None:
        record = provenance.run_record(
            device=run.device,
            settings=run.settings,
            timings=run.timings,
            extracted=n_new,
            copied=copied.rows,
            copied_from=copied.sources,
            pending=len(pending),
            wall_s=time.perf_counter() - start,
            ranks=ranks,
        )
        write.commit(provenance.merge(provenance.previous(run.entry), record))

    distributed.on_leader(dist, finish)
    return n_new, copied, ranks


def _reuse(
    run: _Run, write: Transaction, pending: list[Item], say: Callable[[Phase], None]
) -> reuse.Reused:
    """Copy the rows of pending files that another dataset's entry holds (same key, same
    content), through a journal like extracted rows."""
    others = reuse.siblings(run.entry, run.fields.digest) if pending else []
    if not others:
        return reuse.Reused()
    say(Phase("copying", f"looking for {len(pending)} files in {len(others)} other entries"))
    t0 = time.perf_counter()
    with write.writer() as writer:
        copied = reuse.copy_rows(others, pending, write.contents, writer)
    run.timings["copy_s"] = time.perf_counter() - t0
    return copied


def _cache_hit(
    cache_dir: Path, request: Request, dataset: Dataset, verify_content: bool
) -> ExtractResult | None:
    """The result of a request whose entry already describes this scan, if there is one."""
    memo = recall(cache_dir, request) or _network_memo(cache_dir, request, len(dataset))
    if memo is None:
        return None
    fields, settings = memo
    entry = entry_path(cache_dir, dataset.name, request.spec.slug, fields.digest)
    if matches(entry, dataset, verify_content) is None:
        return None
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


def _leader_then_all(
    dist: distributed.Dist | None, resolve: Callable[[Any], _Run], memo: Callable[[], Any]
) -> _Run:
    """Rank 0 resolves (builds, probes, memoises); then the others read its memo."""
    if dist is None:
        return resolve(memo())
    runs: list[_Run | None] = [None]
    for turn in (True, False):  # first the leader, then everyone else; all ranks settle twice
        error = None
        if dist.leader == turn:
            try:
                runs[0] = resolve(memo())
            except Exception as exc:
                error = exc
        distributed.settle(error)
    assert runs[0] is not None
    return runs[0]


def _as_spec(
    backbone: str | BackboneSpec,
    weights: str,
    pool: str,
    layer: str | None,
    image_size: int | None,
    draft: bool,
    decode: str,
) -> BackboneSpec:
    """The one spec of this call: given, or made from the model name and its options."""
    if not isinstance(backbone, BackboneSpec):
        return BackboneSpec(backbone, weights, pool, layer, image_size, draft, decode)
    given = (weights, pool, layer, image_size, draft, decode)
    if given != ("auto", "avg", None, None, False, "pil"):
        raise ArgumentError(
            "backbone",
            f"{backbone.label}: a BackboneSpec carries its weights, pool, layer, image size, "
            "draft and decode; set them on the spec, not as arguments",
        )
    return backbone


def _build(
    spec: BackboneSpec,
    choice: WeightsChoice,
    timings: dict[str, float],
    say: Callable[[Phase], None],
) -> Backbone:
    from featpipe.backbones.build import build_backbone

    say(Phase("building", f"building {spec.label}"))
    t0 = time.perf_counter()
    backbone = build_backbone(spec, choice)
    timings["model_s"] = time.perf_counter() - t0
    return backbone


def _onnx_path(cache_dir: Path, fields: KeyFields) -> Path:
    """One ONNX export per network (model, weights, transform, pool, layer), shared by dtypes."""
    network = replace(fields, precision="fp32", dtype="float32")
    slug = BackboneSpec(fields.model).slug
    return cache_dir / ".onnx" / f"{slug}-{network.digest[:16]}.onnx"


def _network(request: Request) -> Request:
    """The request reduced to what the key's network part (weights identity, transform) depends
    on. Its memo answers an explicit precision without building the model: ``--precision fp32
    --engine torch`` over an entry made by ``auto`` is a cache hit, not a model build."""
    return replace(request, precision="", engine="", batch_size=0, device="")


def _untimed_precision(request: Request, n_images: int) -> str | None:
    """The key's precision when no probe decides it: as requested, or exact fp32 for a dataset
    too small to probe; None when the probe decides."""
    if request.precision != "auto":
        return request.precision
    return "fp32" if n_images <= PROBE_MIN_IMAGES else None


def _network_memo(
    cache_dir: Path, request: Request, n_images: int
) -> tuple[KeyFields, dict[str, Any]] | None:
    """Key fields and settings of a request that needs no probe to settle its key."""
    precision = _untimed_precision(request, n_images)
    network = recall(cache_dir, _network(request))
    if precision is None or network is None:
        return None
    fields, settings = network
    return replace(fields, precision=precision), settings | {"precision": precision}


def _resolve(
    dataset: Dataset,
    request: Request,
    choice: WeightsChoice,
    memo: tuple[KeyFields, dict[str, Any]] | None,
    cache_dir: Path,
    say: Callable[[Phase], None],
) -> _Run:
    """Key fields and speed settings: from the memo, or by building and probing the model."""
    from featpipe.runtime import devices

    device = devices.resolve_device(request.device)
    devices.check_precision(device, request.precision)
    timings: dict[str, float] = {}
    backbone = None
    if memo is None:
        memo, backbone = _settle(dataset, request, choice, cache_dir, device, timings, say)
    fields, settings = memo
    entry = entry_path(cache_dir, dataset.name, request.spec.slug, fields.digest)
    return _Run(dataset, fields, settings, entry, device, backbone, timings, cache_dir)


def _settle(
    dataset: Dataset,
    request: Request,
    choice: WeightsChoice,
    cache_dir: Path,
    device: Any,
    timings: dict[str, float],
    say: Callable[[Phase], None],
) -> tuple[tuple[KeyFields, dict[str, Any]], Backbone | None]:
    """Key fields and settings of a request new to this machine, and the model if it was built.

    The model is built only when something must be measured or the network is not memoised
    yet. The probe runs for datasets above ``PROBE_MIN_IMAGES`` with a setting left to choose,
    under its budget; only its answer is memoised per request (a small dataset's untimed fp32
    must not stop a large one from being probed). An explicit reduced precision is timed
    against fp32 on one image each, for the warning.
    """
    from featpipe.data import tensor_decode, transforms
    from featpipe.runtime import tuning
    from featpipe.runtime.engines import Normalized

    n = len(dataset)
    choose = "auto" in (request.precision, request.engine) or request.batch_size is None
    timed = choose and n > PROBE_MIN_IMAGES
    check_speed = request.precision not in ("auto", "fp32")
    network = recall(cache_dir, _network(request))
    backbone = None
    if network is None or timed or check_speed:
        spec = request.spec
        backbone = _build(spec, choice, timings, say)
        base = KeyFields(
            model=spec.model,
            weights=backbone.weights_identity,
            transform=transforms.fingerprint(backbone.data_config, spec.draft)
            | tensor_decode.fingerprint(spec.decode),
            pool=spec.pool,
            layer=spec.layer,
            precision="fp32",
            dtype=request.dtype,
        )
        described = {
            "dim": backbone.num_features,
            "data_config": backbone.data_config,
            "weights": backbone.weights.describe(),
            "jpeg_draft": spec.draft,
            "decode": spec.decode,
            "is_conv": backbone.is_conv,
        }
        remember(cache_dir, _network(request), base, described)
    else:
        base, described = network
    if backbone is not None and (timed or check_speed):
        budget = tuning.PROBE_BUDGET_S if timed else 0.0
        say(
            Phase("probing", f"probing speed (at most {budget:.0f} s)")
            if timed
            else Phase("probing", f"timing {request.precision} against fp32 on one image")
        )
        t0 = time.perf_counter()
        chosen = tuning.probe(
            Normalized(backbone.module, backbone.data_config),
            device,
            backbone.is_conv,
            _onnx_path(cache_dir, base),
            request.precision,
            request.batch_size,
            request.engine,
            images=n,
            budget_s=budget,
        )
        timings["probe_s"] = time.perf_counter() - t0
        if chosen.note:
            say(Phase("warning", chosen.note))
    else:
        chosen = tuning.untimed(
            device, described["is_conv"], request.precision, request.batch_size, request.engine
        )
    if not timed:
        why = f"{n} images <= {PROBE_MIN_IMAGES}" if choose else "every setting given"
        chosen.probe = chosen.probe | {"skipped": why}
    fields = replace(base, precision=chosen.precision)
    settings = chosen.as_dict() | described
    if timed:
        remember(cache_dir, request, fields, settings)
    return (fields, settings), backbone


def _extract_rows(
    run: _Run,
    pending: list[Item],
    writer: ShardWriter,
    on_error: str,
    workers: int | None,
    progress: Callable[[Progress], None] | None,
    world: int = 1,
) -> int:
    """The hot loop: decode in workers (or, with the tensor decoder, read bytes there and decode
    on the device), forward ``uint8`` batches, journal into ``writer``. Returns rows."""
    from featpipe.data.loader import make_loader
    from featpipe.data.tensor_decode import pipeline
    from featpipe.data.transforms import ImageToUint8
    from featpipe.runtime.engines import Normalized
    from featpipe.runtime.tuning import build_engine

    assert run.backbone is not None
    settings, fields, device = run.settings, run.fields, run.device
    batch_size = int(settings["batch_size"])
    gpu = device.type == "cuda"
    n_workers = (
        default_workers(len(pending), batch_size, world, gpu) if workers is None else workers
    )
    settings["workers"] = n_workers
    config = run.backbone.data_config
    engine = build_engine(
        settings,
        Normalized(run.backbone.module, config),
        device,
        _onnx_path(run.cache_dir, fields),
    )
    if run.images is not None:  # augmented views: their PIL training transform, in the workers
        paths, own = run.images(pending)
        decode = "pil"
    else:
        paths = [str(run.dataset.root / i.relpath) for i in pending]
        own = ImageToUint8(config, fields.transform["jpeg_draft"])
        decode = "tensor" if "decode" in fields.transform else "pil"
    transform, collate, finish = pipeline(decode, paths, own, device)
    loader = make_loader(
        paths, transform, batch_size, n_workers, device.type == "cuda", collate_fn=collate
    )
    dim = int(settings["dim"])
    done = skipped_total = 0
    t0 = time.perf_counter()
    for batch in map(finish, loader):
        skipped = [(*pending[i].row_id, reason) for i, reason in batch.failed]
        feats = engine(batch.images) if batch.index else np.empty((0, dim), np.float32)
        rows, feats, bad = _screen(pending, batch.index, feats, fields.dtype)
        skipped += bad
        writer.append(rows, feats, skipped)
        done += len(batch.index) + len(batch.failed)
        skipped_total += len(skipped)
        if skipped and on_error == "fail":
            path = run.dataset.root / skipped[0][0]
            raise FeatpipeError(
                f"{path}: {skipped[0][3]}; fix or remove the file, or pass "
                "--on-error skip to record it and go on"
            )
        if progress is not None:
            progress(Progress(done, len(pending), skipped_total, time.perf_counter() - t0))
    return done - skipped_total


def _screen(
    pending: list[Item], index: list[int], feats: np.ndarray, dtype: str
) -> tuple[list[RowId], np.ndarray, list[tuple[str, int, int, str]]]:
    """Keep finite rows (that also fit float16 when stored so); the rest become skipped."""
    limit = FLOAT16_MAX if dtype == "float16" else np.inf
    good = np.isfinite(feats).all(axis=1) & (np.abs(feats).max(axis=1, initial=0) <= limit)
    rows, bad = [], []
    for i, ok in zip(index, good, strict=True):
        item = pending[i]
        if ok:
            rows.append(item.row_id)
        else:
            reason = (
                "backbone output is not finite"
                if dtype == "float32"
                else ("features exceed the float16 range: use --dtype float32")
            )
            bad.append((*item.row_id, reason))
    return rows, feats[good], bad

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

import os
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
from featpipe.cache.entry import (
    Features,
    commit,
    entry_header,
    load_features,
    matches,
    parts_dir,
)
from featpipe.cache.key import KeyFields
from featpipe.cache.shards import (
    DiskError,
    ShardIndex,
    ShardWriter,
    read_index,
    recover_orphans,
)
from featpipe.choices import DTYPES, ENGINES, ON_ERROR
from featpipe.data.datasets import Dataset, Item, Task, scan
from featpipe.errors import ArgumentError, FeatpipeError
from featpipe.runtime import distributed
from featpipe.runtime.allocator import keep_freed_memory
from featpipe.runtime.workers import default_workers

if TYPE_CHECKING:
    from featpipe.backbones.build import Backbone

FLOAT16_MAX = 65504.0


@dataclass
class Progress:
    """What a progress display needs after each batch."""

    done: int
    total: int
    skipped: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0


@dataclass
class ExtractResult:
    """What one extract call did, and where its features are."""

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

    def load(self, split: str | list[str] | None = None) -> Features:
        return load_features(self.entry, split)

    def summary(self) -> str:
        s = self.settings
        draft = ", JPEG draft decoding" if s.get("jpeg_draft") else ""  # opt-in, changes pixels
        if self.hit:
            return (
                f"cache hit: {self.entry}  N={self.n} D={self.dim}  "
                f"({self.seconds:.2f} s, nothing to extract{draft})"
            )
        rate = f", {self.images_per_second:.1f} images/s" if self.n_new else ""
        skipped = f", {self.n_skipped} skipped" if self.n_skipped else ""
        how = (
            f"  [{s['engine']} {s['precision']}, batch {s['batch_size']}, "
            f"{s.get('workers', 0)} workers{draft}]"
            if self.n_new
            else ""
        )
        note = f"\nnote: {s['probe_note']}" if self.n_new and s.get("probe_note") else ""
        return (
            f"{self.entry}  N={self.n} D={self.dim}  {self.n_new} extracted in "
            f"{self.seconds:.1f} s{rate}{skipped}{how}{note}"
        )


def _check_options(
    dtype: str, on_error: str, batch_size: int | None, workers: int | None, engine: str
) -> None:
    if engine not in ENGINES:
        raise FeatpipeError(f"--engine {engine}: choose one of {', '.join(ENGINES)}")
    if dtype not in DTYPES:
        raise FeatpipeError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    if on_error not in ON_ERROR:
        raise FeatpipeError(f"--on-error {on_error}: choose one of {', '.join(ON_ERROR)}")
    if batch_size is not None and batch_size < 1:
        raise FeatpipeError(f"--batch-size {batch_size}: use a positive number or auto")
    if workers is not None and workers < 0:
        raise FeatpipeError(f"--workers {workers}: use 0 or more")


def _versions() -> dict[str, str]:
    import h5py
    import PIL
    import timm
    import torch
    import torchvision

    from featpipe import __version__

    return {
        "featpipe": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "python": sys.version.split()[0],
    }


def _device_name(device: Any) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from featpipe.cache.catalog import machine_signature

    return machine_signature().split("|")[1] + f" ({os.cpu_count()} cores)"


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
    allow_outside: bool = False,
    shard_rows: int = 8192,
    progress: Callable[[Progress], None] | None = None,
) -> ExtractResult:
    """Extract (or find in the cache) pooled embeddings of ``data`` under ``backbone``.

    ``data`` is an ImageFolder tree, a CSV manifest, an unlabelled folder or a scanned
    :class:`~featpipe.data.datasets.Dataset`. ``backbone`` is a model name (with ``weights``,
    ``pool``, ``layer``, ``image_size`` and ``draft``, JPEG draft decoding: faster, not the
    model's own pixels) or a :class:`~featpipe.backbones.spec.BackboneSpec` that carries them.
    Only rows that no shard holds yet are computed; the result's :meth:`ExtractResult.load`
    reads them back. ``allow_outside`` lets a CSV manifest name files outside its own folder
    (refused by default).
    """
    start = time.perf_counter()
    _check_options(dtype, on_error, batch_size, workers, engine)
    dataset = (
        data
        if isinstance(data, Dataset)
        else scan(data, name=name, task=task, allow_outside=allow_outside)
    )
    cache_dir = ensure_writable(Path(cache_dir))
    spec = _as_spec(backbone, weights, pool, layer, image_size, draft)
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
        distributed.check_shared(cache_dir)
    hit = distributed.on_leader(dist, lambda: _cache_hit(cache_dir, request, dataset))
    if hit is not None:
        hit.seconds = time.perf_counter() - start
        return hit
    keep_freed_memory()  # before the probe, so that it times what the run will see
    run = _leader_then_all(
        dist,
        lambda memo: _resolve(dataset, request, choice, memo, cache_dir),
        lambda: recall(cache_dir, request),
    )
    parts = parts_dir(run.entry)
    parts.mkdir(parents=True, exist_ok=True)
    distributed.on_leader(dist, lambda: recover_orphans(parts))
    pending = _pending(dataset.items, read_index(parts))
    mine = pending[distributed.part(len(pending), dist.rank, dist.world)] if dist else pending

    def work() -> tuple[int, float]:
        if not mine:
            return 0, 0.0
        if run.backbone is None:
            run.backbone = _build(spec, choice, run.timings)
        from featpipe.runtime.devices import host_threads

        t0 = time.perf_counter()
        with host_threads(run.device):
            rows = _extract_rows(
                run,
                mine,
                parts,
                on_error,
                workers,
                shard_rows,
                progress,
                rank=dist.rank if dist else 0,
                world=dist.world if dist else 1,
            )
        run.timings["extract_s"] = time.perf_counter() - t0
        return rows, len(mine) / run.timings["extract_s"]

    n_new, rate = distributed.everyone(dist, work)
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
        total_seconds = max(r["seconds"] for r in ranks)
        n_new = sum(r["rows"] for r in ranks)
        rate = len(pending) / total_seconds if total_seconds else 0.0

    def finish() -> None:
        provenance = _provenance(run, workers, n_new, rate, len(pending))
        provenance["ranks"] = ranks
        commit(run.entry, dataset, run.fields, read_index(parts), provenance)

    distributed.on_leader(dist, finish)
    n, dim, n_skipped = entry_header(run.entry)
    return ExtractResult(
        run.entry,
        dataset.name,
        backbone,
        n,
        dim,
        n_new,
        n_skipped,
        time.perf_counter() - start,
        hit=False,
        images_per_second=rate,
        settings=run.settings,
        ranks=ranks,
    )


def _cache_hit(cache_dir: Path, request: Request, dataset: Dataset) -> ExtractResult | None:
    """The result of a request whose entry already describes this scan, if there is one."""
    memo = recall(cache_dir, request)
    if memo is None:
        return None
    fields, settings = memo
    entry = entry_path(cache_dir, dataset.name, request.spec.slug, fields.digest)
    if not matches(entry, dataset):
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


def _pending(items: list[Item], index: ShardIndex) -> list[Item]:
    return [
        i
        for i in items
        if (key := (i.relpath, i.size, i.mtime_ns)) not in index.rows and key not in index.skipped
    ]


def _as_spec(
    backbone: str | BackboneSpec,
    weights: str,
    pool: str,
    layer: str | None,
    image_size: int | None,
    draft: bool,
) -> BackboneSpec:
    """The one spec of this call: given, or made from the model name and its options."""
    if not isinstance(backbone, BackboneSpec):
        return BackboneSpec(backbone, weights, pool, layer, image_size, draft)
    if (weights, pool, layer, image_size, draft) != ("auto", "avg", None, None, False):
        raise ArgumentError(
            "backbone",
            f"{backbone.label}: a BackboneSpec carries its weights, pool, layer, image size "
            "and draft; set them on the spec, not as arguments",
        )
    return backbone


def _build(spec: BackboneSpec, choice: WeightsChoice, timings: dict[str, float]) -> Backbone:
    from featpipe.backbones.build import build_backbone

    t0 = time.perf_counter()
    backbone = build_backbone(spec, choice)
    timings["model_s"] = time.perf_counter() - t0
    return backbone


def _onnx_path(cache_dir: Path, fields: KeyFields) -> Path:
    """One ONNX export per network (model, weights, transform, pool, layer), shared by dtypes."""
    network = replace(fields, precision="fp32", dtype="float32")
    slug = BackboneSpec(fields.model).slug
    return cache_dir / ".onnx" / f"{slug}-{network.digest[:16]}.onnx"


def _resolve(
    dataset: Dataset,
    request: Request,
    choice: WeightsChoice,
    memo: tuple[KeyFields, dict[str, Any]] | None,
    cache_dir: Path,
) -> _Run:
    """Key fields and speed settings: from the memo, or by building and probing the model."""
    from featpipe.data import transforms
    from featpipe.runtime import devices, tuning
    from featpipe.runtime.engines import Normalized

    device = devices.resolve_device(request.device)
    devices.check_precision(device, request.precision)
    timings: dict[str, float] = {}
    backbone = None
    if memo is None:
        spec = request.spec
        backbone = _build(spec, choice, timings)
        t0 = time.perf_counter()
        fields = KeyFields(
            model=spec.model,
            weights=backbone.weights_identity,
            transform=transforms.fingerprint(backbone.data_config, spec.draft),
            pool=spec.pool,
            layer=spec.layer,
            precision="fp32",
            dtype=request.dtype,
        )
        chosen = tuning.probe(
            Normalized(backbone.module, backbone.data_config),
            device,
            backbone.is_conv,
            _onnx_path(cache_dir, fields),
            request.precision,
            request.batch_size,
            request.engine,
        )
        timings["probe_s"] = time.perf_counter() - t0
        fields = replace(fields, precision=chosen.precision)
        settings = chosen.as_dict() | {
            "dim": backbone.num_features,
            "data_config": backbone.data_config,
            "weights": backbone.weights.describe(),
            "jpeg_draft": spec.draft,
        }
        remember(cache_dir, request, fields, settings)
    else:
        fields, settings = memo
    entry = entry_path(cache_dir, dataset.name, request.spec.slug, fields.digest)
    return _Run(dataset, fields, settings, entry, device, backbone, timings, cache_dir)


def _extract_rows(
    run: _Run,
    pending: list[Item],
    parts: Path,
    on_error: str,
    workers: int | None,
    shard_rows: int,
    progress: Callable[[Progress], None] | None,
    rank: int = 0,
    world: int = 1,
) -> int:
    """The hot loop: decode in workers, forward ``uint8`` batches, journal. Returns rows."""
    from featpipe.data.loader import make_loader
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
    loader = make_loader(
        [str(run.dataset.root / i.relpath) for i in pending],
        ImageToUint8(config, fields.transform["jpeg_draft"]),
        batch_size,
        n_workers,
        pin_memory=device.type == "cuda",
    )
    dim = int(settings["dim"])
    writer = ShardWriter(parts, dim, fields.dtype, fields.digest, rank=rank, shard_rows=shard_rows)
    done = skipped_total = 0
    t0 = time.perf_counter()
    try:
        for batch in loader:
            skipped = [
                (pending[i].relpath, pending[i].size, pending[i].mtime_ns, reason)
                for i, reason in batch.failed
            ]
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
    except DiskError:
        writer.abandon()  # the disk is the problem: leave the journal for recovery
        raise
    except BaseException:
        writer.flush()  # keep every finished batch, whatever stopped us
        raise
    writer.flush()
    return done - skipped_total


def _screen(
    pending: list[Item], index: list[int], feats: np.ndarray, dtype: str
) -> tuple[list[tuple[str, int, int]], np.ndarray, list[tuple[str, int, int, str]]]:
    """Keep finite rows (that also fit float16 when stored so); the rest become skipped."""
    limit = FLOAT16_MAX if dtype == "float16" else np.inf
    good = np.isfinite(feats).all(axis=1) & (np.abs(feats).max(axis=1, initial=0) <= limit)
    rows, bad = [], []
    for i, ok in zip(index, good, strict=True):
        item = pending[i]
        if ok:
            rows.append((item.relpath, item.size, item.mtime_ns))
        else:
            reason = (
                "backbone output is not finite"
                if dtype == "float32"
                else ("features exceed the float16 range: use --dtype float32")
            )
            bad.append((item.relpath, item.size, item.mtime_ns, reason))
    return rows, feats[good], bad


def _provenance(
    run: _Run, workers: int | None, n_new: int, rate: float, n_pending: int
) -> dict[str, Any]:
    return {
        "versions": _versions(),
        "device": _device_name(run.device),
        "host": platform.node(),
        "settings": run.settings,
        "timings_s": {k: round(v, 3) for k, v in run.timings.items()},
        "last_run": {"rows_extracted": n_new, "pending": n_pending, "images_per_s": round(rate, 2)},
    }

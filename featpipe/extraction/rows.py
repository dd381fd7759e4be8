"""Computing rows: the hot loop of an extract run, and the screen between the model and the disk.

The loop decodes images in loader workers (or, with the tensor decoder, reads their bytes there
and decodes batches on the device; or, in a run without torch, in a thread of this process),
forwards ``uint8`` batches through the engine the probe chose (``Engine.map``: OpenVINO's
streams take the next batches while one runs), and appends every batch to a journal
(:class:`~featpipe.cache.journals.ShardWriter`, one per entry the pass fills: :class:`Parts`):
a killed run loses at most the batches in flight. A file that cannot be decoded, or whose
features are not finite (or do not fit float16 when stored so), becomes a
skipped row with its reason, never a row of NaN.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from typing import Any

import numpy as np

from featpipe.cache.journals import ShardWriter
from featpipe.data.datasets import Item, RowId
from featpipe.data.eval_pixels import EvalPixels
from featpipe.data.loader import Batch, in_order, make_loader, prefetched
from featpipe.errors import FeatpipeError
from featpipe.extraction.settle import ExtractRun, conversions
from featpipe.progress import Progress
from featpipe.runtime.openvino_engine import OpenVinoEngine, Rows, cpu_threads
from featpipe.runtime.workers import decode_ahead, default_workers

FLOAT16_MAX = 65504.0


def extract_rows(
    run: ExtractRun,
    pending: list[Item],
    sink: Parts,
    progress: Callable[[Progress], None] | None,
    world: int = 1,
) -> None:
    """Compute the rows of ``pending`` into ``sink`` (which counts what each entry kept).

    ``world``: how many processes share the machine's cores (torchrun ranks), for the default
    worker count.
    """
    if run.without_torch:  # settle.runs_without_torch
        _loop(run, pending, sink, progress, *_numpy_source(run, pending))
        return
    from featpipe.runtime.devices import host_threads  # torch: a run without it never gets here

    with host_threads(run.device):  # a CUDA loop leaves the cores to the workers
        _loop(run, pending, sink, progress, *_torch_source(run, pending, world))


Compute = Callable[[Iterable[tuple[Batch, Any]]], Iterator[tuple[Batch, Rows]]]


def _numpy_source(run: ExtractRun, pending: list[Item]) -> tuple[Compute, Iterable[Batch]]:
    """A run without torch: EvalPixels' arrays, batched in this process, into the compiled IR."""
    settings = run.settings
    paths = [str(run.dataset.root / i.relpath) for i in pending]
    own = EvalPixels(settings["data_config"], run.fields.transform["jpeg_draft"])
    files = conversions(run.options.cache_dir, run.fields)
    engine = OpenVinoEngine(files, settings["precision"], cpu_threads())
    settings |= {"workers": 0, "torch_loaded": False}
    return engine.map, in_order(paths, own, int(settings["batch_size"]))


def _torch_source(
    run: ExtractRun, pending: list[Item], world: int
) -> tuple[Compute, Iterable[Batch]]:
    """The engine the settings name, fed by a DataLoader (workers, tensor decoding, views)."""
    from featpipe.data.tensor_decode import pipeline
    from featpipe.data.transforms import ImageToUint8
    from featpipe.runtime.engines import Normalized
    from featpipe.runtime.tuning import build_engine

    assert run.backbone is not None
    settings, fields, device = run.settings, run.fields, run.device
    batch_size = int(settings["batch_size"])
    gpu = device.type == "cuda"
    workers = run.options.workers
    n_workers = (
        default_workers(len(pending), batch_size, world, gpu) if workers is None else workers
    )
    settings["workers"] = n_workers
    config = run.backbone.data_config
    engine = build_engine(
        settings,
        Normalized(run.backbone.module, config),
        device,
        conversions(run.options.cache_dir, fields),
    )
    if run.images is not None:  # augmented views: their PIL training transform, in the workers
        paths, own = run.images(pending)
        decode = "pil"
    else:
        paths = [str(run.dataset.root / i.relpath) for i in pending]
        own = ImageToUint8(config, fields.transform["jpeg_draft"])
        decode = "tensor" if "decode" in fields.transform else "pil"
    transform, collate, finish = pipeline(decode, paths, own, device)
    loader = make_loader(paths, transform, batch_size, n_workers, gpu, collate_fn=collate)
    return engine.map, map(finish, loader)


def _loop(
    run: ExtractRun,
    pending: list[Item],
    sink: Parts,
    progress: Callable[[Progress], None] | None,
    compute: Compute,
    loader: Iterable[Batch],
) -> None:
    """The loop itself: batches (decoded ahead by a thread where :func:`decode_ahead` says so)
    through ``compute`` (an engine's ``map``) into the sink, screened, with progress."""
    settings = run.settings
    dim = int(settings["dim"])
    done = skipped_total = 0
    t0 = time.perf_counter()
    ahead = decode_ahead(settings["workers"], settings["engine"])
    settings["prefetch"] = ahead
    with (
        closing(prefetched(loader, ahead)) as batches,
        closing(compute((b, b.images if b.index else None) for b in batches)) as computed,
    ):
        for batch, rows in computed:
            skipped = [(*pending[i].row_id, reason) for i, reason in batch.failed]
            feats = np.empty((0, dim), np.float32) if rows is None else rows
            skipped += sink.append(pending, batch.index, feats, skipped)
            done += len(batch.index) + len(batch.failed)
            skipped_total += len(skipped)
            if skipped and run.options.on_error == "fail":
                path = run.dataset.root / skipped[0][0]
                raise FeatpipeError(
                    f"{path}: {skipped[0][3]}; fix or remove the file, or pass "
                    "--on-error skip to record it and go on"
                )
            if progress is not None:
                elapsed = time.perf_counter() - t0
                progress(Progress(done, len(pending), skipped_total, elapsed))


Skipped = tuple[str, int, int, str]


class Parts:
    """Where the rows of one forward pass go: one journal per entry it fills.

    Most passes fill one entry with every column. A pass over several layers
    (:mod:`featpipe.extraction.layers`) fills one entry per feature set: each takes its own
    ``columns`` of the pass's output, and only the rows it ``wants`` (an entry may hold rows
    another lacks). Each entry's rows are screened on its own columns, so a row that is finite
    in one layer is kept there even when another layer's is not: each entry holds what an
    extraction of its layer alone would hold.
    """

    def __init__(
        self,
        writers: list[ShardWriter],
        columns: list[np.ndarray | None],
        wants: list[set[str] | None],
        dtype: str,
    ) -> None:
        self.writers, self.columns, self.wants, self.dtype = writers, columns, wants, dtype
        self.kept = [0] * len(writers)

    def append(
        self, pending: list[Item], index: list[int], feats: np.ndarray, failed: list[Skipped]
    ) -> list[Skipped]:
        """Journal a batch: ``feats`` are the rows ``index`` of ``pending``, ``failed`` the
        files that could not be decoded. Returns the rows screened out (of any entry)."""
        screened_out: dict[str, Skipped] = {}
        for i, (writer, columns, wants) in enumerate(
            zip(self.writers, self.columns, self.wants, strict=True)
        ):
            part, rows_of, skipped = feats, index, failed
            if wants is not None:
                mine = [j for j, row in enumerate(index) if pending[row].relpath in wants]
                part, rows_of = feats[mine], [index[j] for j in mine]
                skipped = [s for s in failed if s[0] in wants]
            if columns is not None:
                part = part[:, columns]
            if not rows_of and not skipped:
                continue  # nothing of this batch is this entry's: no empty journal
            rows, part, bad = screen(pending, rows_of, part, self.dtype)
            writer.append(rows, part, skipped + bad)
            self.kept[i] += len(rows)
            screened_out.update((s[0], s) for s in bad)
        return list(screened_out.values())


def screen(
    pending: list[Item], index: list[int], feats: np.ndarray, dtype: str
) -> tuple[list[RowId], np.ndarray, list[Skipped]]:
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

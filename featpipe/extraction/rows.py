"""Computing rows: the hot loop of an extract run, and the screen between the model and the disk.

The loop decodes images in loader workers (or, with the tensor decoder, reads their bytes there
and decodes batches on the device), forwards ``uint8`` batches through the engine the probe
chose, and appends every batch to a journal (:class:`~featpipe.cache.journals.ShardWriter`):
a killed run loses at most the batch in flight. A file that cannot be decoded, or whose
features are not finite (or do not fit float16 when stored so), becomes a skipped row with its
reason, never a row of NaN.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from featpipe.cache.journals import ShardWriter
from featpipe.data.datasets import Item, RowId
from featpipe.data.loader import make_loader
from featpipe.data.tensor_decode import pipeline
from featpipe.data.transforms import ImageToUint8
from featpipe.errors import FeatpipeError
from featpipe.extraction.settle import ExtractRun, conversions
from featpipe.progress import Progress
from featpipe.runtime.devices import host_threads
from featpipe.runtime.engines import Normalized
from featpipe.runtime.tuning import build_engine
from featpipe.runtime.workers import default_workers

FLOAT16_MAX = 65504.0


def extract_rows(
    run: ExtractRun,
    pending: list[Item],
    writer: ShardWriter,
    progress: Callable[[Progress], None] | None,
    world: int = 1,
) -> int:
    """Compute the rows of ``pending`` into ``writer``; returns how many were kept.

    ``world``: how many processes share the machine's cores (torchrun ranks), for the default
    worker count.
    """
    with host_threads(run.device):  # a CUDA loop leaves the cores to the workers
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
        loader = make_loader(
            paths, transform, batch_size, n_workers, device.type == "cuda", collate_fn=collate
        )
        dim = int(settings["dim"])
        done = skipped_total = 0
        t0 = time.perf_counter()
        for batch in map(finish, loader):
            skipped = [(*pending[i].row_id, reason) for i, reason in batch.failed]
            feats = engine(batch.images) if batch.index else np.empty((0, dim), np.float32)
            rows, feats, bad = screen(pending, batch.index, feats, fields.dtype)
            skipped += bad
            writer.append(rows, feats, skipped)
            done += len(batch.index) + len(batch.failed)
            skipped_total += len(skipped)
            if skipped and run.options.on_error == "fail":
                path = run.dataset.root / skipped[0][0]
                raise FeatpipeError(
                    f"{path}: {skipped[0][3]}; fix or remove the file, or pass "
                    "--on-error skip to record it and go on"
                )
            if progress is not None:
                progress(Progress(done, len(pending), skipped_total, time.perf_counter() - t0))
        return done - skipped_total


def screen(
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

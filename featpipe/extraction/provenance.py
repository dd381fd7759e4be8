"""What an entry records about the runs that made its rows: one record per run that added rows.

An entry is rewritten at the end of every extract run (so that a removed file drops out of it),
but a run that added no row computed nothing: a rerun with ``--engine torch --batch-size 16``
over an entry that onnxruntime made at batch 32 must not make the entry claim torch, batch 16,
0 img/s. So the provenance JSON holds:

* at the top level, the record of the latest run that added rows (``versions``, ``device``,
  ``host``, ``settings``, ``timings_s``, ``last_run``, ``ranks``: the keys readers already use);
* ``history``: the records of every run that added rows, oldest first.

A run that adds no row leaves the provenance exactly as it was. An entry written before the
history existed holds one record at the top level: it becomes the first item of the history.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from featpipe import __version__
from featpipe.cache.catalog import machine_signature


def versions() -> dict[str, str]:
    """The libraries a run's numbers depend on. torch, torchvision and timm are named by their
    installed distributions' metadata (as the cache's memos are), not imported: a run without
    torch (:func:`featpipe.extraction.settle.runs_without_torch`) must not load them to say
    which it did not use. Their metadata leaves out a local build tag such as ``+cu130``."""
    import h5py
    import PIL

    return {
        "featpipe": __version__,
        **{name: importlib.metadata.version(name) for name in ("torch", "torchvision", "timm")},
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "python": sys.version.split()[0],
        # The engines that run converted networks, from their metadata (not imported here).
        **{name: importlib.metadata.version(name) for name in ("onnxruntime", "openvino")},
    }


def device_name(device: Any) -> str:
    """The GPU's name, or the CPU's (``device`` None: a run without torch, on the CPU)."""
    if device is not None and device.type == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    return machine_signature().split("|")[1] + f" ({os.cpu_count()} cores)"


def run_record(
    *,
    device: Any,
    settings: dict[str, Any],
    timings: dict[str, float],
    extracted: int,
    copied: int,
    copied_from: list[str],
    pending: int,
    wall_s: float,
    ranks: list[dict[str, Any]],
) -> dict[str, Any]:
    """One run's record. ``images_per_s`` is over the run's whole wall time, the same interval
    as ``wall_s``, and is computed from the recorded (rounded) ``wall_s``, so that the two agree
    exactly however short the run; the loop's own rate is ``loop_images_per_s``."""
    loop = timings.get("extract_s", 0.0)
    wall_s = round(wall_s, 6)
    return {
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": versions(),
        "device": device_name(device),
        "host": platform.node(),
        "settings": settings,
        "timings_s": {k: round(v, 3) for k, v in timings.items()} | {"wall_s": wall_s},
        "last_run": {
            "rows_extracted": extracted,
            "rows_copied": copied,
            "copied_from": copied_from,
            "pending": pending,
            "images_per_s": round(extracted / wall_s, 2) if wall_s > 0 else 0.0,
            "loop_images_per_s": round(pending / loop, 2) if loop > 0 else 0.0,
        },
        "ranks": ranks,
    }


def added_rows(record: dict[str, Any]) -> bool:
    run = record.get("last_run", {})
    return bool(run.get("rows_extracted") or run.get("rows_copied"))


def merge(previous: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """The provenance to write after a run: ``previous`` unchanged if the run added no row,
    else ``record`` on top with the history extended by it."""
    if previous and not added_rows(record):
        return previous
    history = previous.get("history")
    if history is None:  # written before histories: its one record is the first
        history = [previous] if previous.get("settings") else []
    return record | {"history": [*history, record] if added_rows(record) else history}


def previous(entry: Path) -> dict[str, Any]:
    """The provenance an entry holds now ({} when there is none, or it cannot be read).

    Read from the attribute alone, without the entry's integrity checks: a run that recomputes
    the rows of a corrupt shard must still keep the history of the runs before it.
    """
    if not entry.is_file():
        return {}
    try:
        with h5py.File(entry, "r") as f:
            return dict(json.loads(f.attrs["provenance"]))
    except (OSError, ValueError, KeyError, TypeError):
        return {}

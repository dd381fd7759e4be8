"""Committing an entry: the file that presents a dataset's rows, written from its shards.

The entry (its layout: :mod:`featpipe.cache.entry`) is built in memory and written with
:func:`~featpipe.cache.durable.atomic_write`, so a reader sees the previous complete entry or the
new one, never a half-written one. It is rewritten at the end of every extract run, so it always
describes the dataset as last scanned: a removed file drops out of it. Its features are an HDF5
virtual dataset over the shards: committing copies no feature.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from featpipe.cache.durable import atomic_write
from featpipe.cache.entry import ENTRY_FORMAT, Header, parts_dir
from featpipe.cache.fingerprints import Contents, content_digest
from featpipe.cache.hdf5 import Column, file_image, in_memory_file, seal_checksum, write_columns
from featpipe.cache.index import CORRUPT_SUFFIX, ShardIndex, Stored, transient
from featpipe.cache.key import KeyFields
from featpipe.collector import paused
from featpipe.data.datasets import Dataset
from featpipe.errors import StorageError


def _runs(sources: list[tuple[int, int]]) -> Iterator[tuple[int, int, int, int]]:
    """Group ``(shard, row)`` pairs into runs: ``(first output row, shard, first row, length)``."""
    start = 0
    while start < len(sources):
        shard, row = sources[start]
        end = start + 1
        while end < len(sources) and sources[end] == (shard, row + end - start):
            end += 1
        yield start, shard, row, end - start
        start = end


@paused()
def commit(
    entry: Path,
    dataset: Dataset,
    fields: KeyFields,
    index: ShardIndex,
    contents: Contents,
    provenance: dict[str, Any],
    found: dict[str, Stored] | None = None,
) -> Header:
    """Write the entry for ``dataset`` from the shards in ``index``; returns its header (what
    :func:`~featpipe.cache.entry.entry_header` would read back, without opening it again: a
    version this young is checksummed at every open, by the stat rule's racy window).

    A row counts when its path, size, mtime and content fingerprint (and its full hash, under
    ``contents.full``) match the file now on disk. ``found``: the stored rows of files already
    looked up in ``index`` this run (by relative path), not looked up again.
    """
    found = found or {}
    shard_names = sorted(index.shard_sizes)
    shard_id = {name: i for i, name in enumerate(shard_names)}
    kept, sources, fingerprints, hashes = [], [], [], []
    skipped = [(r.relpath, r.reason) for r in dataset.rejected]
    scanned: list[tuple[str, str]] = []  # (relpath, fingerprint) of every item, for ``content``
    n_transient = 0
    for item in dataset.items:
        stored = found.get(item.relpath)
        reason = None
        if stored is None:
            stored, reason = index.lookup(item, contents)
        if stored is not None:
            kept.append(item)
            sources.append((shard_id[stored.shard], stored.row))
            fingerprints.append(stored.fingerprint)
            hashes.append(stored.sha256)
        elif reason is not None:
            skipped.append((item.relpath, reason))
            n_transient += transient(reason)
        else:
            raise StorageError(
                f"cache entry {entry}: no stored row for {item.relpath}; its shard is missing: "
                "rerun the extract command to recompute it"
            )
        scanned.append((item.relpath, contents.quick.get(item.relpath, "")))
    dims = index.dims or {0}
    if len(dims) != 1:
        raise StorageError(f"cache entry {entry}: shards disagree on the dimension ({dims})")
    dim = dims.pop()
    previous_created = None
    if entry.exists():
        try:
            with h5py.File(entry, "r") as old:
                previous_created = old.attrs.get("created")
        except OSError:
            previous_created = None
    parts = parts_dir(entry)
    with in_memory_file() as f:
        if kept:
            layout = h5py.VirtualLayout(shape=(len(kept), dim), dtype=fields.dtype)
            vsources = [
                h5py.VirtualSource(
                    f"{parts.name}/{name}", "features", shape=(index.shard_sizes[name], dim)
                )
                for name in shard_names
            ]
            for out, shard, row, length in _runs(sources):
                layout[out : out + length] = vsources[shard][row : row + length]
            f.create_virtual_dataset("features", layout, fillvalue=np.nan)
        else:
            f.create_dataset("features", shape=(0, dim), dtype=fields.dtype)
        columns: dict[str, Column] = {
            "relpath": [i.relpath for i in kept],
            "size": np.array([i.size for i in kept], dtype=np.int64),
            "mtime_ns": np.array([i.mtime_ns for i in kept], dtype=np.int64),
            "fingerprint": fingerprints,
            "sha256": hashes,
            "label": np.array([i.label for i in kept], dtype=np.int64),
            "target": np.array([i.target for i in kept], dtype=np.float64),
            "split": [i.split for i in kept],
            "class_names": list(dataset.class_names),
            "source/shard_names": shard_names,
            "source/shard_bytes": np.array(
                [(parts / name).stat().st_size for name in shard_names], dtype=np.int64
            ),
            "source/shard": np.array([s for s, _ in sources], dtype=np.int32),
            "source/row": np.array([r for _, r in sources], dtype=np.int64),
            "skipped/relpath": [s[0] for s in skipped],
            "skipped/reason": [s[1] for s in skipped],
        }
        write_columns(f, columns)
        now = time.time()
        f.attrs.update(
            {
                "format_version": ENTRY_FORMAT,
                "complete": True,
                "key": fields.digest,
                "key_fields": fields.to_json(),
                "dataset": dataset.name,
                "dataset_root": str(dataset.root),
                "layout": dataset.layout,
                "task": dataset.task,
                "split_source": dataset.split_source,
                "backbone": fields.model,
                "dtype": fields.dtype,
                "precision": fields.precision,
                "pool": fields.pool,
                "n": len(kept),
                "dim": dim,
                "n_skipped": len(skipped),
                "n_transient": n_transient,
                "manifest": dataset.digest(),
                "content": content_digest(scanned),
                "content_full": content_digest(zip([i.relpath for i in kept], hashes, strict=True)),
                "created": previous_created if previous_created is not None else now,
                "updated": now,
                "provenance": json.dumps(provenance, sort_keys=True, default=str),
            }
        )
        seal_checksum(f, written=columns)
        image = file_image(f)
    atomic_write(entry, image)
    contents.remember(parts)
    # Shards whose rows were recomputed for this entry: an older featpipe's, and corrupt ones.
    for stale in [parts / n for n in index.legacy] + list(parts.glob(f"*{CORRUPT_SUFFIX}")):
        stale.unlink(missing_ok=True)
    return Header(len(kept), dim, len(skipped))

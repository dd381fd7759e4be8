"""One cache entry: a single HDF5 file a user can open with h5py, presenting a dataset's rows.

``cache/<dataset>/<backbone>-<key8>.h5`` holds:

``features``      N×D, an HDF5 *virtual* dataset that stitches the shards (``<stem>.parts/``)
                  into dataset order without copying a byte;
``relpath``, ``size``, ``mtime_ns``   what each row is (the row key);
``label``, ``target``, ``split``      what the dataset says about it (labels live here, not in
                  shards, so relabelling never re-extracts);
``class_names``, ``skipped/{relpath,reason}``, ``source/{shard,row}``;
attributes        the key fields, and the provenance: versions, device, precision, timings.

The file is written to a temporary name and renamed, so a reader sees the previous complete
entry or the new one, never a half-written one. It is rewritten at the end of every extract
run, so it always describes the dataset as last scanned: a removed file drops out of it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from featpipe.cache.key import FORMAT_VERSION, KeyFields
from featpipe.cache.shards import STR, ShardIndex
from featpipe.data.datasets import Dataset
from featpipe.errors import FeatpipeError


@dataclass
class Features:
    """Cached embeddings with everything needed to use them."""

    X: np.ndarray
    labels: np.ndarray
    targets: np.ndarray
    split: np.ndarray
    relpath: np.ndarray
    class_names: list[str]
    task: str
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.X)

    def where(self, split: str | list[str]) -> Features:
        """The rows of one split (or several)."""
        wanted = [split] if isinstance(split, str) else split
        mask = np.isin(self.split, wanted)
        return Features(
            self.X[mask],
            self.labels[mask],
            self.targets[mask],
            self.split[mask],
            self.relpath[mask],
            self.class_names,
            self.task,
            self.meta,
        )

    @property
    def y(self) -> np.ndarray:
        """Class indices for classification, float targets for regression."""
        return self.targets if self.task == "regression" else self.labels


def parts_dir(entry: Path) -> Path:
    return entry.with_suffix(".parts")


def _strings(f: h5py.File, name: str, values: list[str]) -> None:
    f.create_dataset(name, data=np.array(values, dtype=object), dtype=STR)


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


def commit(
    entry: Path,
    dataset: Dataset,
    fields: KeyFields,
    index: ShardIndex,
    provenance: dict[str, Any],
) -> int:
    """Write the entry for ``dataset`` from the shards in ``index``; returns its row count."""
    shard_names = sorted(index.shard_sizes)
    shard_id = {name: i for i, name in enumerate(shard_names)}
    kept, sources = [], []
    skipped = [(r.relpath, r.reason) for r in dataset.rejected]
    for item in dataset.items:
        row_id = (item.relpath, item.size, item.mtime_ns)
        if row_id in index.rows:
            shard, row = index.rows[row_id]
            kept.append(item)
            sources.append((shard_id[shard], row))
        elif row_id in index.skipped:
            skipped.append((item.relpath, index.skipped[row_id]))
        else:
            raise FeatpipeError(
                f"cache entry {entry}: no stored row for {item.relpath}; its shard is missing: "
                "rerun the extract command to recompute it"
            )
    dims = index.dims or {0}
    if len(dims) != 1:
        raise FeatpipeError(f"cache entry {entry}: shards disagree on the dimension ({dims})")
    dim = dims.pop()
    previous_created = None
    if entry.exists():
        try:
            with h5py.File(entry, "r") as old:
                previous_created = old.attrs.get("created")
        except OSError:
            previous_created = None
    tmp = entry.with_name(entry.name + f".tmp-{os.getpid()}")
    parts = parts_dir(entry).name
    try:
        with h5py.File(tmp, "w") as f:
            if kept:
                layout = h5py.VirtualLayout(shape=(len(kept), dim), dtype=fields.dtype)
                vsources = [
                    h5py.VirtualSource(
                        f"{parts}/{name}", "features", shape=(index.shard_sizes[name], dim)
                    )
                    for name in shard_names
                ]
                for out, shard, row, length in _runs(sources):
                    layout[out : out + length] = vsources[shard][row : row + length]
                f.create_virtual_dataset("features", layout, fillvalue=np.nan)
            else:
                f.create_dataset("features", shape=(0, dim), dtype=fields.dtype)
            _strings(f, "relpath", [i.relpath for i in kept])
            f["size"] = np.array([i.size for i in kept], dtype=np.int64)
            f["mtime_ns"] = np.array([i.mtime_ns for i in kept], dtype=np.int64)
            f["label"] = np.array([i.label for i in kept], dtype=np.int64)
            f["target"] = np.array([i.target for i in kept], dtype=np.float64)
            _strings(f, "split", [i.split for i in kept])
            _strings(f, "class_names", list(dataset.class_names))
            _strings(f, "source/shard_names", shard_names)
            f["source/shard"] = np.array([s for s, _ in sources], dtype=np.int32)
            f["source/row"] = np.array([r for _, r in sources], dtype=np.int64)
            _strings(f, "skipped/relpath", [s[0] for s in skipped])
            _strings(f, "skipped/reason", [s[1] for s in skipped])
            now = time.time()
            f.attrs.update(
                {
                    "format_version": FORMAT_VERSION,
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
                    "manifest": dataset.digest(),
                    "created": previous_created if previous_created is not None else now,
                    "updated": now,
                    "provenance": json.dumps(provenance, sort_keys=True, default=str),
                }
            )
        os.replace(tmp, entry)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise FeatpipeError(
            f"cannot write cache entry {entry} ({exc}); the extracted rows are kept in "
            f"{parts_dir(entry)}: free space and rerun to finish"
        ) from None
    return len(kept)


def open_entry(path: str | Path) -> h5py.File:
    """Open an entry for reading after checking it is complete, readable and not from the future."""
    path = Path(path)
    if not path.is_file():
        raise FeatpipeError(
            f"cache entry {path} does not exist: list entries with featpipe cache ls"
        )
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise FeatpipeError(
            f"cache entry {path} is not a readable HDF5 file ({exc}): remove it with "
            "featpipe cache rm and extract again"
        ) from None
    version = int(f.attrs.get("format_version", -1))
    if version > FORMAT_VERSION:
        f.close()
        raise FeatpipeError(
            f"cache entry {path} has format version {version}, newer than this featpipe reads "
            f"({FORMAT_VERSION}): upgrade featpipe, or remove the entry with featpipe cache rm"
        )
    if version < 1 or not f.attrs.get("complete", False):
        f.close()
        raise FeatpipeError(f"cache entry {path} is not a complete featpipe entry: extract again")
    missing = [
        name
        for name in f["source/shard_names"].asstr()[:]
        if not (parts_dir(path) / name).is_file()
    ]
    if missing:
        f.close()
        raise FeatpipeError(
            f"cache entry {path}: {len(missing)} shard file(s) are missing from "
            f"{parts_dir(path)} (e.g. {missing[0]}): rerun the extract command to recompute them"
        )
    return f


def entry_header(path: Path) -> tuple[int, int, int]:
    """``(rows, dimension, skipped files)`` of an entry."""
    with open_entry(path) as f:
        return int(f.attrs["n"]), int(f.attrs["dim"]), int(f.attrs["n_skipped"])


def entry_meta(f: h5py.File) -> dict[str, Any]:
    meta = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
    meta["key_fields"] = json.loads(meta["key_fields"])
    meta["provenance"] = json.loads(meta["provenance"])
    return meta


def read_meta(path: str | Path) -> dict[str, Any]:
    """An entry's attributes (key fields, provenance, …) without reading its features."""
    with open_entry(path) as f:
        return entry_meta(f)


def _columns(f: h5py.File, rows: slice | np.ndarray) -> dict[str, np.ndarray]:
    return {
        "labels": f["label"][rows],
        "targets": f["target"][rows],
        "split": f["split"].asstr()[rows],
        "relpath": f["relpath"].asstr()[rows],
    }


def load_features(path: str | Path, split: str | list[str] | None = None) -> Features:
    """Read an entry (or one split of it) into memory."""
    with open_entry(path) as f:
        features = Features(
            X=f["features"][:],
            **_columns(f, slice(None)),
            class_names=list(f["class_names"].asstr()[:]),
            task=str(f.attrs["task"]),
            meta=entry_meta(f),
        )
    return features if split is None else features.where(split)


def iter_chunks(path: str | Path, rows: int | None = None) -> Iterator[Features]:
    """Stream an entry in row blocks, so memory stays flat however large N is."""
    with open_entry(path) as f:
        n, dim = f["features"].shape
        rows = rows or max(1, (8 << 20) // max(1, dim * f["features"].dtype.itemsize))
        class_names = list(f["class_names"].asstr()[:])
        for start in range(0, n, rows):
            block = slice(start, min(n, start + rows))
            yield Features(
                f["features"][block],
                **_columns(f, block),
                class_names=class_names,
                task=str(f.attrs["task"]),
            )


def matches(path: Path, dataset: Dataset) -> bool:
    """True when the entry was committed from exactly this scan of the dataset (a cache hit)."""
    try:
        f = open_entry(path)
    except FeatpipeError:
        return False
    with f:
        return f.attrs.get("manifest") == dataset.digest()


def verify(path: Path) -> list[str]:
    """Read every byte of an entry and its shards; return the problems found (empty if sound)."""
    problems: list[str] = []
    try:
        f = open_entry(path)
    except FeatpipeError as exc:
        return [str(exc)]
    with f:
        key = f.attrs["key"]
        parts = parts_dir(path)
        for name in f["source/shard_names"].asstr()[:]:
            try:
                with h5py.File(parts / name, "r") as shard:
                    if shard.attrs["key"] != key:
                        problems.append(f"{name}: written for another key")
                    shard["features"][:]  # fletcher32 checksums are checked on read
            except OSError as exc:
                problems.append(f"{name}: unreadable or corrupt ({exc})")
        if problems:
            return problems
        n = f["features"].shape[0]
        rows = max(1, (8 << 20) // max(1, f["features"].shape[1] * 4))
        for start in range(0, n, rows):
            block = f["features"][start : start + rows]
            bad = ~np.isfinite(block).all(axis=1)
            if bad.any():
                first = start + int(np.argmax(bad))
                problems.append(
                    f"{int(bad.sum())} rows hold NaN or inf (first: {f['relpath'].asstr()[first]})"
                )
        for column in ("relpath", "label", "split", "size"):
            if f[column].shape[0] != n:
                problems.append(f"column {column} has {f[column].shape[0]} rows, features {n}")
    journals = list(parts.glob("*.rows"))
    if journals:
        problems.append(
            f"{len(journals)} unfinished run(s) in {parts}: rerun extract to resume them"
        )
    return problems


def size_on_disk(path: Path) -> int:
    total = path.stat().st_size if path.exists() else 0
    parts = parts_dir(path)
    if parts.is_dir():
        total += sum(p.stat().st_size for p in parts.iterdir() if p.is_file())
    return total

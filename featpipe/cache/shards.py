"""Crash-safe row storage: an append-only journal per writer, sealed into immutable HDF5 shards.

HDF5 itself is not crash-safe: a process killed while h5py holds a file open for writing can
leave it unreadable. So rows in flight never live in HDF5. Each writer (one process, or one
torchrun rank) appends every batch to two plain files:

``<stem>.jrnl``  raw feature bytes, row after row;
``<stem>.rows``  one JSON line per batch naming its rows (and its skipped files), written *after*
                 the batch's feature bytes.

A ``kill -9`` at any moment therefore leaves a prefix of complete batches plus at most one
partial batch, which recovery drops: at most the batch in flight is lost. Every ``shard_rows``
rows, and at the end of a run, the journal is sealed: copied into ``<stem>.h5`` under a temporary
name, fsynced, renamed, and only then deleted. A shard file that exists is complete.

A live writer holds an exclusive ``flock`` on its ``.rows`` file, so recovery never seals a
journal that another process is still writing. Each writer has its own stem, so any number of
processes can add rows to one cache entry without sharing a file.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from featpipe.errors import StorageError

RowId = tuple[str, int, int]  # relative path, size, mtime_ns
CHUNK_BYTES = 1 << 20
STR = h5py.string_dtype("utf-8")


def new_writer_stem(rank: int = 0) -> str:
    return f"w{rank:03d}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class DiskError(StorageError):
    """Writing failed (disk full, permissions): finished rows are safe, the journal is kept."""


def _disk_error(path: Path, exc: OSError) -> DiskError:
    return DiskError(
        f"cannot write {path} ({exc.strerror or exc}); rows already written are kept: "
        "free space or fix permissions, then rerun the same command to resume"
    )


class Journal:
    """The append-only log of one writer, sealed into one shard when full."""

    def __init__(self, parts: Path, stem: str, dim: int, dtype: str, key: str) -> None:
        self.parts, self.stem, self.dim, self.dtype, self.key = parts, stem, dim, dtype, key
        self.rows_path = parts / f"{stem}.rows"
        self.data_path = parts / f"{stem}.jrnl"
        self.n_rows = 0
        self.n_skipped = 0
        # Lock and write the header under a name recovery ignores, then rename: recovery can
        # never see (and seal) a journal whose writer has not yet taken its lock.
        fresh = parts / f"{stem}.rows.new"
        try:
            self._rows = fresh.open("x", encoding="utf-8")
            fcntl.flock(self._rows.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._data = self.data_path.open("xb")
            header = {"dim": dim, "dtype": dtype, "key": key, "created": time.time()}
            self._rows.write(json.dumps(header) + "\n")
            self._rows.flush()
            os.replace(fresh, self.rows_path)
        except OSError as exc:
            raise _disk_error(self.rows_path, exc) from None

    def append(self, rows: list[RowId], features: np.ndarray, skipped: list[tuple]) -> None:
        """Write one batch: features first, then the line that makes them count."""
        block = np.ascontiguousarray(features, dtype=self.dtype)
        if block.shape != (len(rows), self.dim):
            raise ValueError(f"batch of {len(rows)} rows has features {block.shape}")
        try:
            self._data.write(block.tobytes())
            self._data.flush()
            self._rows.write(json.dumps({"ok": rows, "skip": skipped}) + "\n")
            self._rows.flush()
        except OSError as exc:
            raise _disk_error(self.data_path, exc) from None
        self.n_rows += len(rows)
        self.n_skipped += len(skipped)

    def close(self) -> None:
        self._data.close()
        self._rows.close()  # releases the lock


@dataclass
class JournalContents:
    dim: int
    dtype: str
    key: str
    rows: list[RowId] = field(default_factory=list)
    skipped: list[tuple] = field(default_factory=list)
    features: np.ndarray | None = None


def read_journal(rows_path: Path) -> JournalContents:
    """Read the complete batches of a journal, dropping a torn last batch."""
    with rows_path.open("rb") as handle:
        lines = handle.read().split(b"\n")
    header = json.loads(lines[0])
    contents = JournalContents(header["dim"], header["dtype"], header["key"])
    row_bytes = header["dim"] * np.dtype(header["dtype"]).itemsize
    data_path = rows_path.with_suffix(".jrnl")
    available = data_path.stat().st_size // row_bytes if data_path.exists() else 0
    # Every line but the last was terminated by "\n"; the last piece is torn or empty.
    for raw in lines[1:-1]:
        try:
            batch = json.loads(raw)
        except json.JSONDecodeError:
            break
        if len(contents.rows) + len(batch["ok"]) > available:
            break
        contents.rows.extend(tuple(r) for r in batch["ok"])
        contents.skipped.extend(tuple(s) for s in batch["skip"])
    count = len(contents.rows) * header["dim"]
    contents.features = np.fromfile(data_path, dtype=header["dtype"], count=count).reshape(
        len(contents.rows), header["dim"]
    )
    return contents


def _write_strings(group: h5py.Group, name: str, values: list[str]) -> None:
    group.create_dataset(name, data=np.array(values, dtype=object), dtype=STR)


def write_shard(path: Path, contents: JournalContents) -> None:
    """Write a shard under a temporary name, fsync it, then rename.

    It appears complete or not at all.
    """
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    features = contents.features if contents.features is not None else np.empty((0, contents.dim))
    n = len(contents.rows)
    try:
        with h5py.File(tmp, "w") as f:
            chunk_rows = max(1, min(n, CHUNK_BYTES // (contents.dim * features.dtype.itemsize)))
            f.create_dataset(
                "features",
                data=features.astype(contents.dtype, copy=False),
                chunks=(chunk_rows, contents.dim) if n else None,
                fletcher32=bool(n),
            )
            _write_strings(f, "relpath", [r[0] for r in contents.rows])
            f["size"] = np.array([r[1] for r in contents.rows], dtype=np.int64)
            f["mtime_ns"] = np.array([r[2] for r in contents.rows], dtype=np.int64)
            skipped = f.create_group("skipped")
            _write_strings(skipped, "relpath", [s[0] for s in contents.skipped])
            skipped["size"] = np.array([s[1] for s in contents.skipped], dtype=np.int64)
            skipped["mtime_ns"] = np.array([s[2] for s in contents.skipped], dtype=np.int64)
            _write_strings(skipped, "reason", [s[3] for s in contents.skipped])
            f.attrs.update(
                {
                    "key": contents.key,
                    "dim": contents.dim,
                    "dtype": contents.dtype,
                    "n": n,
                    "sealed": time.time(),
                }
            )
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _disk_error(path, exc) from None


def seal(rows_path: Path) -> Path | None:
    """Turn a finished or orphaned journal into a shard; returns the shard (None if empty)."""
    shard = rows_path.with_suffix(".h5")
    if not shard.exists():
        contents = read_journal(rows_path)
        if contents.rows or contents.skipped:
            write_shard(shard, contents)
    rows_path.with_suffix(".jrnl").unlink(missing_ok=True)
    rows_path.unlink(missing_ok=True)
    return shard if shard.exists() else None


def recover_orphans(parts: Path) -> int:
    """Seal every journal whose writer is gone (its lock is free). Returns how many."""
    recovered = 0
    for rows_path in sorted(parts.glob("*.rows")):
        try:
            handle = rows_path.open("rb")
        except FileNotFoundError:
            continue
        with handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live writer owns it
            seal(rows_path)
            recovered += 1
    return recovered


class ShardWriter:
    """Append batches for one writer, rolling to a new sealed shard every ``shard_rows`` rows."""

    def __init__(
        self, parts: Path, dim: int, dtype: str, key: str, rank: int = 0, shard_rows: int = 8192
    ) -> None:
        self.parts, self.dim, self.dtype, self.key = parts, dim, dtype, key
        self.stem = new_writer_stem(rank)
        self.shard_rows = shard_rows
        self.seq = 0
        self.journal: Journal | None = None
        self.shards: list[Path] = []

    def _open(self) -> Journal:
        if self.journal is None:
            stem = f"{self.stem}-{self.seq:04d}"
            self.journal = Journal(self.parts, stem, self.dim, self.dtype, self.key)
        return self.journal

    def append(self, rows: list[RowId], features: np.ndarray, skipped: list[tuple]) -> None:
        journal = self._open()
        journal.append(rows, features, skipped)
        if journal.n_rows >= self.shard_rows:
            self.flush()

    def flush(self) -> None:
        """Seal the current journal (if any) into a shard."""
        if self.journal is None:
            return
        self.journal.close()
        shard = seal(self.journal.rows_path)
        if shard is not None:
            self.shards.append(shard)
        self.journal = None
        self.seq += 1

    def abandon(self) -> None:
        """Close without sealing (an error path): the journal stays for the next run's recovery."""
        if self.journal is not None:
            self.journal.close()
            self.journal = None


@dataclass
class ShardIndex:
    """Where every stored row lives: ``RowId → (shard file name, row)``; skipped files too."""

    rows: dict[RowId, tuple[str, int]] = field(default_factory=dict)
    skipped: dict[RowId, str] = field(default_factory=dict)
    shard_sizes: dict[str, int] = field(default_factory=dict)
    dims: set[int] = field(default_factory=set)


def read_index(parts: Path) -> ShardIndex:
    index = ShardIndex()
    if not parts.is_dir():
        return index
    for shard in sorted(parts.glob("*.h5")):
        with h5py.File(shard, "r") as f:
            index.dims.add(int(f.attrs["dim"]))
            index.shard_sizes[shard.name] = int(f.attrs["n"])
            ids = zip(f["relpath"].asstr()[:], f["size"][:], f["mtime_ns"][:], strict=True)
            for row, (path, size, mtime) in enumerate(ids):
                index.rows.setdefault((path, int(size), int(mtime)), (shard.name, row))
            skipped = f["skipped"]
            for path, size, mtime, reason in zip(
                skipped["relpath"].asstr()[:],
                skipped["size"][:],
                skipped["mtime_ns"][:],
                skipped["reason"].asstr()[:],
                strict=True,
            ):
                index.skipped.setdefault((path, int(size), int(mtime)), reason)
    return index

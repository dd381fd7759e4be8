"""Crash-safe row storage: an append-only journal per writer, sealed into immutable HDF5 shards.

h5py never writes to disk (see :mod:`featpipe.cache.hdf5`). Rows in flight live in two plain
files per writer (one process, or one torchrun rank):

``<stem>.jrnl``  raw feature bytes, row after row;
``<stem>.rows``  one JSON line per batch naming its rows (and its skipped files), written *after*
                 the batch's feature bytes.

A ``kill -9`` at any moment therefore leaves a prefix of complete batches plus at most one
partial batch, which recovery drops: at most the batch in flight is lost. Every ``shard_rows``
rows, and at the end of a run, the journal is sealed: h5py builds the shard in memory, and
:func:`~featpipe.cache.durable.atomic_write` puts its bytes on disk under a temporary name
(after checking free space), fsyncs and renames it; only then is the journal deleted. A shard
file that exists is complete, and a failed write of any kind is one
:class:`~featpipe.cache.durable.DiskError` line with the journal kept.

A live writer holds an exclusive ``flock`` on its ``.rows`` file, so recovery never seals a
journal that another process is still writing. Each writer has its own stem, so any number of
processes can add rows to one cache entry without sharing a file.

A row is stored with its :data:`~featpipe.data.datasets.RowId` and its file's content
fingerprint and full hash (:mod:`featpipe.cache.fingerprints`); a shard carries a checksum of its
attributes and row keys, and its features have HDF5's fletcher32 checksums
(:mod:`featpipe.cache.index` reads and checks them).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featpipe.cache.durable import (
    FREE_SPACE_MARGIN,
    DiskError,
    atomic_write,
    disk_error,
    remove_stale_temporaries,
    write_all,
)
from featpipe.cache.fingerprints import Contents
from featpipe.cache.hdf5 import file_image, in_memory_file, seal_checksum, write_strings
from featpipe.data.datasets import RowId

# A stored row: RowId + quick fingerprint + sha256; a stored skip: RowId + fingerprint + reason.
Row = tuple[str, int, int, str, str]
Skip = tuple[str, int, int, str, str]
CHUNK_BYTES = 1 << 20


def new_writer_stem(rank: int = 0) -> str:
    return f"w{rank:03d}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Journal:
    """The append-only log of one writer, sealed into one shard when full.

    Both files are written with ``os.write`` on unbuffered descriptors: every batch reaches the
    kernel before the next begins, and a failing write surfaces here, as :class:`DiskError`.
    """

    def __init__(self, parts: Path, stem: str, dim: int, dtype: str, key: str) -> None:
        self.parts, self.stem, self.dim, self.dtype, self.key = parts, stem, dim, dtype, key
        self.rows_path = parts / f"{stem}.rows"
        self.data_path = parts / f"{stem}.jrnl"
        self.n_rows = 0
        self.n_skipped = 0
        self._rows = self._data = -1
        # Lock and write the header under a name recovery ignores, then rename: recovery can
        # never see (and seal) a journal whose writer has not yet taken its lock.
        fresh = parts / f"{stem}.rows.new"
        try:
            self._rows = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
            fcntl.flock(self._rows, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._data = os.open(
                self.data_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644
            )
            header = {"dim": dim, "dtype": dtype, "key": key, "created": time.time()}
            write_all(self._rows, (json.dumps(header) + "\n").encode())
            os.replace(fresh, self.rows_path)
        except OSError as exc:
            self.close()
            fresh.unlink(missing_ok=True)
            raise disk_error(self.rows_path, exc) from None

    def append(self, rows: list[Row], features: np.ndarray, skipped: list[Skip]) -> None:
        """Write one batch: features first, then the line that makes them count."""
        block = np.ascontiguousarray(features, dtype=self.dtype)
        if block.shape != (len(rows), self.dim):
            raise ValueError(f"batch of {len(rows)} rows has features {block.shape}")
        try:
            write_all(self._data, block.tobytes())
            write_all(self._rows, (json.dumps({"ok": rows, "skip": skipped}) + "\n").encode())
        except OSError as exc:
            raise disk_error(self.data_path, exc) from None
        self.n_rows += len(rows)
        self.n_skipped += len(skipped)

    def close(self) -> None:
        for fd in (self._data, self._rows):  # closing the rows file releases the lock
            if fd >= 0:
                os.close(fd)
        self._rows = self._data = -1


@dataclass
class JournalContents:
    dim: int
    dtype: str
    key: str
    rows: list[Row] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    features: np.ndarray | None = None


def _row(values: list[Any]) -> Row:
    """A row as a journal stores it; a journal of an older featpipe has no fingerprints."""
    relpath, size, mtime, *rest = values
    fp, sha = [*rest, "", ""][:2]
    return relpath, int(size), int(mtime), fp, sha


def _skip(values: list[Any]) -> Skip:
    relpath, size, mtime, *rest = values
    fp, reason = rest if len(rest) == 2 else ("", rest[-1])
    return relpath, int(size), int(mtime), fp, reason


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
        contents.rows.extend(_row(r) for r in batch["ok"])
        contents.skipped.extend(_skip(s) for s in batch["skip"])
    count = len(contents.rows) * header["dim"]
    contents.features = np.fromfile(data_path, dtype=header["dtype"], count=count).reshape(
        len(contents.rows), header["dim"]
    )
    return contents


def write_shard(path: Path, contents: JournalContents) -> None:
    """Build a shard in memory and put it on disk with :func:`atomic_write`.

    It appears complete or not at all; a full disk is one :class:`DiskError` line.
    """
    features = contents.features if contents.features is not None else np.empty((0, contents.dim))
    n = len(contents.rows)
    with in_memory_file() as f:
        chunk_rows = max(1, min(n, CHUNK_BYTES // (contents.dim * features.dtype.itemsize)))
        f.create_dataset(
            "features",
            data=features.astype(contents.dtype, copy=False),
            chunks=(chunk_rows, contents.dim) if n else None,
            fletcher32=bool(n),
        )
        rows, skipped = contents.rows, contents.skipped
        write_strings(f, "relpath", [r[0] for r in rows])
        f["size"] = np.array([r[1] for r in rows], dtype=np.int64)
        f["mtime_ns"] = np.array([r[2] for r in rows], dtype=np.int64)
        write_strings(f, "fingerprint", [r[3] for r in rows])
        write_strings(f, "sha256", [r[4] for r in rows])
        group = f.create_group("skipped")
        write_strings(group, "relpath", [s[0] for s in skipped])
        group["size"] = np.array([s[1] for s in skipped], dtype=np.int64)
        group["mtime_ns"] = np.array([s[2] for s in skipped], dtype=np.int64)
        write_strings(group, "fingerprint", [s[3] for s in skipped])
        write_strings(group, "reason", [s[4] for s in skipped])
        f.attrs.update(
            {
                "key": contents.key,
                "dim": contents.dim,
                "dtype": contents.dtype,
                "n": n,
                "sealed": time.time(),
            }
        )
        seal_checksum(f)
        image = file_image(f)
    atomic_write(path, image, reserve=FREE_SPACE_MARGIN)


def seal(rows_path: Path) -> Path | None:
    """Turn a finished or orphaned journal into a shard; returns the shard (None if empty).

    The journal is deleted only once its shard is on disk: a failed seal keeps it for the
    next run to seal.
    """
    shard = rows_path.with_suffix(".h5")
    if not shard.exists():
        contents = read_journal(rows_path)
        if contents.rows or contents.skipped:
            write_shard(shard, contents)
    rows_path.with_suffix(".jrnl").unlink(missing_ok=True)
    rows_path.unlink(missing_ok=True)
    return shard if shard.exists() else None


def recover_orphans(parts: Path) -> int:
    """Seal every journal whose writer is gone (its lock is free) and remove the temporary
    files that killed or failed runs left behind. Returns how many journals were sealed."""
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
    remove_stale_temporaries(parts)
    remove_stale_temporaries(parts.parent, prefix=parts.stem + ".h5")
    return recovered


class ShardWriter:
    """Append batches for one writer, rolling to a new sealed shard every ``shard_rows`` rows.

    Rows come in as :data:`~featpipe.data.datasets.RowId`; the writer adds each file's
    fingerprint and full hash from ``contents``. Used as a context manager, it seals every
    finished batch however the block ends, except when the disk is the problem (a
    :class:`~featpipe.cache.durable.DiskError`): then the journal stays for the next run's
    recovery.
    """

    def __init__(
        self,
        parts: Path,
        dim: int,
        dtype: str,
        key: str,
        contents: Contents,
        rank: int = 0,
        shard_rows: int = 8192,
    ) -> None:
        self.parts, self.dim, self.dtype, self.key = parts, dim, dtype, key
        self.contents = contents
        self.stem = new_writer_stem(rank)
        self.shard_rows = shard_rows
        self.seq = 0
        self.journal: Journal | None = None
        self.shards: list[Path] = []

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _: Any) -> None:
        if isinstance(exc, DiskError):
            self.abandon()
        else:
            self.flush()  # keep every finished batch, whatever stopped us

    def _open(self) -> Journal:
        if self.journal is None:
            stem = f"{self.stem}-{self.seq:04d}"
            self.journal = Journal(self.parts, stem, self.dim, self.dtype, self.key)
        return self.journal

    def append(
        self, rows: list[RowId], features: np.ndarray, skipped: list[tuple[str, int, int, str]]
    ) -> None:
        journal = self._open()
        quick = self.contents.quick
        hashes = self.contents.hashes([r[0] for r in rows])
        journal.append(
            [(*r, quick.get(r[0], ""), h) for r, h in zip(rows, hashes, strict=True)],
            features,
            [(p, size, mtime, quick.get(p, ""), reason) for p, size, mtime, reason in skipped],
        )
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

"""Crash-safe row storage: an append-only journal per writer, sealed into immutable HDF5 shards.

HDF5 itself is not crash-safe: a process killed while h5py holds a file open for writing can
leave it unreadable, and a full disk under h5py's writes ends in tracebacks from its destructors
(or a segfault). So h5py never writes to disk here. Rows in flight live in two plain files per
writer (one process, or one torchrun rank):

``<stem>.jrnl``  raw feature bytes, row after row;
``<stem>.rows``  one JSON line per batch naming its rows (and its skipped files), written *after*
                 the batch's feature bytes.

A ``kill -9`` at any moment therefore leaves a prefix of complete batches plus at most one
partial batch, which recovery drops: at most the batch in flight is lost. Every ``shard_rows``
rows, and at the end of a run, the journal is sealed: h5py builds the shard in memory, and
:func:`atomic_write` puts its bytes on disk under a temporary name (after checking free space),
fsyncs and renames it; only then is the journal deleted. A shard file that exists is complete,
and a failed write of any kind is one :class:`DiskError` line with the journal kept.

A live writer holds an exclusive ``flock`` on its ``.rows`` file (and on every temporary file it
writes), so recovery never seals a journal, and a sweep never removes a temporary file, that
another process is still writing. Each writer has its own stem, so any number of processes can
add rows to one cache entry without sharing a file. Before extracting, a writer *claims* the rows
it is about to compute (a locked ``.claim`` file): a concurrent writer skips claimed rows and
waits for their writer instead of computing them a second time.

Every row is keyed by its file's path, size and mtime (the quick check of make and rsync) and a
content fingerprint (a hash of the size and the first and last 64 KiB); a full SHA-256 of the
file is stored as well, for checks on request. A shard carries a checksum of its attributes and
row keys (its features have HDF5's fletcher32 checksums); a shard that fails either is moved
aside, and its rows are computed again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from featpipe.data.datasets import RowId
from featpipe.errors import StorageError

# A stored row: RowId + quick fingerprint + sha256; a stored skip: RowId + fingerprint + reason.
Row = tuple[str, int, int, str, str]
Skip = tuple[str, int, int, str, str]
CHUNK_BYTES = 1 << 20
STR = h5py.string_dtype("utf-8")
FINGERPRINT_BLOCK = 64 << 10
# Space left free on top of what a write needs, so that a seal never fills the disk to the last
# byte (other writers, and the journal's next batch, need room too).
FREE_SPACE_MARGIN = 1 << 20
CORRUPT_SUFFIX = ".corrupt"
_TEMP = re.compile(r"\.tmp-\d+$")


def new_writer_stem(rank: int = 0) -> str:
    return f"w{rank:03d}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class DiskError(StorageError):
    """Writing failed (disk full, permissions): finished rows are safe, the journal is kept."""


def _disk_error(path: Path, exc: OSError) -> DiskError:
    return DiskError(
        f"cannot write {path} ({exc.strerror or exc}); rows already written are kept: "
        "free space or fix permissions, then rerun the same command to resume"
    )


def transient(reason: str) -> bool:
    """Whether a skip reason is the operating system refusing a read (``[Errno 13] Permission
    denied``, ``[Errno 5] Input/output error``) rather than the file's content: such files are
    tried again on every run, while decode failures stay skipped until the file changes."""
    return reason.startswith("[Errno ")


# Files: every byte featpipe puts in the cache goes through these, at the OS boundary.


def _write_all(fd: int, data: bytes | memoryview) -> None:
    """``os.write`` until done: a short write (a disk filling up) is continued, not ignored."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_name(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def atomic_write(path: Path, data: bytes, reserve: int = 0) -> None:
    """Put ``data`` at ``path`` so that a reader sees the old file or the new one, never part.

    The bytes go to a locked temporary file (a sweep leaves it alone while we live), after
    checking that the disk has room for them plus ``reserve``; then fsync, rename, and fsync of
    the folder. Any failure removes the temporary file and raises :class:`DiskError`.
    """
    tmp = _temp_name(path)
    try:
        free = shutil.disk_usage(path.parent).free
        if free < len(data) + reserve:
            raise OSError(
                errno.ENOSPC,
                f"No space left on device: {len(data) + reserve} bytes needed, {free} free",
            )
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            _write_all(fd, data)
            os.fsync(fd)
            os.replace(tmp, path)
        finally:
            os.close(fd)
        _fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _disk_error(path, exc) from None


def _unlocked(path: Path) -> bool:
    """True when no process holds a lock on ``path`` (its writer is gone)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def stale_temporaries(folder: Path, prefix: str = "") -> list[Path]:
    """``*.tmp-PID`` files under ``folder`` (named ``prefix…``) whose writer is dead."""
    if not folder.is_dir():
        return []
    return [
        p
        for p in sorted(folder.glob(f"{prefix}*.tmp-*"))
        if _TEMP.search(p.name) and p.is_file() and _unlocked(p)
    ]


def remove_stale_temporaries(folder: Path, prefix: str = "") -> int:
    """Delete the temporary files that killed writers left behind; returns how many."""
    removed = 0
    for path in stale_temporaries(folder, prefix):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
    return removed


def in_memory_file() -> h5py.File:
    """An HDF5 file that lives in memory: h5py builds it, :func:`file_image` takes its bytes."""
    return h5py.File(f"featpipe-{uuid.uuid4().hex}.h5", "w", driver="core", backing_store=False)


def file_image(f: h5py.File) -> bytes:
    f.flush()
    return f.id.get_file_image()


# Checksums of what HDF5's own filters do not cover: attributes and the small datasets.


def _attr_text(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return repr(value.tolist())
    return repr(value.item() if hasattr(value, "item") else value)


def checksum(f: h5py.Group) -> str:
    """SHA-256 of a file's attributes and every dataset but ``features`` (whose chunks carry
    fletcher32 checksums): the cheap check against edited or damaged rows."""
    h = hashlib.sha256()
    for name in sorted(f.attrs):
        if name != "checksum":
            h.update(f"@{name}={_attr_text(f.attrs[name])}\n".encode())
    names: list[str] = []
    f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    for name in sorted(set(names) - {"features"}):
        ds = f[name]
        if h5py.check_string_dtype(ds.dtype) is not None:
            data = "\0".join(ds.asstr()[()].tolist() if ds.shape else [ds.asstr()[()]]).encode()
        else:
            data = np.ascontiguousarray(ds[()]).tobytes()
        h.update(f"{name}:{ds.dtype.str}:{ds.shape}:{len(data)}\n".encode())
        h.update(data)
    return h.hexdigest()


def seal_checksum(f: h5py.File) -> None:
    f.attrs["checksum"] = checksum(f)


def checksum_ok(f: h5py.File) -> bool:
    return "checksum" in f.attrs and f.attrs["checksum"] == checksum(f)


# Content fingerprints of the dataset's files.

_POOL: ThreadPoolExecutor | None = None


def _map(fn: Any, values: Iterable[Any]) -> list[Any]:
    """Reading files is I/O: a few threads hide its latency (hashlib releases the GIL)."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="featpipe-hash")
    return list(_POOL.map(fn, values))


def quick_fingerprint(path: Path) -> str:
    """BLAKE2 of the size and the first and last 64 KiB: catches a file replaced by another of
    the same size and mtime (an edited photo, a copy with ``touch -r``) for two reads per file.
    ``""`` when the file cannot be read: such a file matches no stored row."""
    h = hashlib.blake2b(digest_size=16)
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            h.update(size.to_bytes(8, "little"))
            h.update(handle.read(FINGERPRINT_BLOCK))
            if size > FINGERPRINT_BLOCK:
                handle.seek(max(FINGERPRINT_BLOCK, size - FINGERPRINT_BLOCK))
                h.update(handle.read(FINGERPRINT_BLOCK))
    except OSError:
        return ""
    return h.hexdigest()


def full_hash(path: Path) -> str:
    """SHA-256 of the whole file (``""`` when it cannot be read)."""
    try:
        with path.open("rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError:
        return ""


class Contents:
    """The current content fingerprints of a dataset's files, read once per run.

    Quick fingerprints are read for every file; full hashes for every file when ``full``
    (``verify_content``), otherwise only for the rows being written, right after the backbone
    has read them (so from the page cache).
    """

    def __init__(self, root: Path, relpaths: Sequence[str], full: bool = False) -> None:
        self.root, self.full = root, full
        quick = _map(lambda r: quick_fingerprint(root / r), relpaths)
        self.quick = dict(zip(relpaths, quick, strict=True))
        self.sha: dict[str, str] = {}
        if full:
            self.hashes(relpaths)

    def hashes(self, relpaths: Sequence[str]) -> list[str]:
        missing = [r for r in relpaths if r not in self.sha]
        found = _map(lambda r: full_hash(self.root / r), missing)
        self.sha.update(zip(missing, found, strict=True))
        return [self.sha[r] for r in relpaths]

    def digest(self, relpaths: Sequence[str], full: bool) -> str:
        """One hash of the fingerprints of ``relpaths`` in order (what a cache hit compares)."""
        values = self.hashes(relpaths) if full else [self.quick[r] for r in relpaths]
        return content_digest(zip(relpaths, values, strict=True))


def content_digest(pairs: Iterable[tuple[str, str]]) -> str:
    h = hashlib.sha256()
    for relpath, value in pairs:
        h.update(f"{relpath}\0{value}\n".encode())
    return h.hexdigest()


# The journal.


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
            _write_all(self._rows, (json.dumps(header) + "\n").encode())
            os.replace(fresh, self.rows_path)
        except OSError as exc:
            self.close()
            fresh.unlink(missing_ok=True)
            raise _disk_error(self.rows_path, exc) from None

    def append(self, rows: list[Row], features: np.ndarray, skipped: list[Skip]) -> None:
        """Write one batch: features first, then the line that makes them count."""
        block = np.ascontiguousarray(features, dtype=self.dtype)
        if block.shape != (len(rows), self.dim):
            raise ValueError(f"batch of {len(rows)} rows has features {block.shape}")
        try:
            _write_all(self._data, block.tobytes())
            _write_all(self._rows, (json.dumps({"ok": rows, "skip": skipped}) + "\n").encode())
        except OSError as exc:
            raise _disk_error(self.data_path, exc) from None
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


# Shards.


def _write_strings(group: h5py.Group, name: str, values: list[str]) -> None:
    group.create_dataset(name, data=np.array(values, dtype=object), dtype=STR)


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
        _write_strings(f, "relpath", [r[0] for r in rows])
        f["size"] = np.array([r[1] for r in rows], dtype=np.int64)
        f["mtime_ns"] = np.array([r[2] for r in rows], dtype=np.int64)
        _write_strings(f, "fingerprint", [r[3] for r in rows])
        _write_strings(f, "sha256", [r[4] for r in rows])
        group = f.create_group("skipped")
        _write_strings(group, "relpath", [s[0] for s in skipped])
        group["size"] = np.array([s[1] for s in skipped], dtype=np.int64)
        group["mtime_ns"] = np.array([s[2] for s in skipped], dtype=np.int64)
        _write_strings(group, "fingerprint", [s[3] for s in skipped])
        _write_strings(group, "reason", [s[4] for s in skipped])
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

    Rows come in as :data:`RowId`; the writer adds each file's fingerprint and full hash from
    ``contents``.
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


# Claims: which rows a live writer is computing.

CLAIMS_LOCK = ".claims.lock"


@dataclass
class Claim:
    """The rows this writer computes (``mine``), held in a locked ``<stem>.claim`` file for as
    long as it works on them, and the claim files of live writers computing the rest."""

    mine: set[str]
    others: list[Path]
    elsewhere: int
    fd: int = -1
    path: Path | None = None

    def release(self) -> None:
        """Drop the claim once its rows are sealed (a killed writer's claim drops with it)."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def wait(self) -> None:
        """Block until every writer whose rows we skipped has finished or died."""
        for path in self.others:
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)
            finally:
                os.close(fd)


def _live_claims(parts: Path) -> tuple[set[str], list[Path]]:
    """Rows claimed by live writers, and their claim files; a dead writer's claim is removed."""
    claimed: set[str] = set()
    live = []
    for path in sorted(parts.glob("*.claim")):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path.unlink(missing_ok=True)  # its writer is gone
        except BlockingIOError:
            with os.fdopen(os.dup(fd), "rb") as handle:
                claimed.update(json.loads(handle.read() or b"[]"))
            live.append(path)
        finally:
            os.close(fd)
    return claimed, live


def claim_rows(parts: Path, relpaths: Sequence[str], skip_claimed: bool = True) -> Claim:
    """Claim the rows of ``relpaths`` that no live writer has claimed (all of them when not
    ``skip_claimed``: torchrun ranks split their rows among themselves beforehand).

    Claiming runs under one lock per entry, so two writers never both see a row unclaimed.
    A claim that cannot be written (a full or read-only disk) claims nothing: the rows are
    still computed, as before claims existed.
    """
    lock = os.open(parts / CLAIMS_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        claimed, live = _live_claims(parts) if skip_claimed else (set(), [])
        mine = [r for r in relpaths if r not in claimed]
        claim = Claim(set(mine), live, len(relpaths) - len(mine))
        if not mine:
            return claim
        path = parts / f"{new_writer_stem()}.claim"
        fresh = path.with_name(path.name + ".new")
        try:
            claim.fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            fcntl.flock(claim.fd, fcntl.LOCK_EX)
            _write_all(claim.fd, json.dumps(mine).encode())
            os.replace(fresh, path)
            claim.path = path
        except OSError:
            fresh.unlink(missing_ok=True)
        return claim
    finally:
        os.close(lock)


# The index of what the shards hold.


@dataclass(frozen=True)
class Stored:
    """Where one stored row lives, and the content it was computed from."""

    shard: str
    row: int
    fingerprint: str
    sha256: str


@dataclass
class ShardIndex:
    """Every stored row and skipped file, by :data:`RowId`; shards that failed their checks.

    Several rows can share a RowId (a file replaced with the same size and mtime, then
    recomputed): :meth:`find` picks the one whose content matches.
    """

    rows: dict[RowId, list[Stored]] = field(default_factory=dict)
    skipped: dict[RowId, list[tuple[str, str]]] = field(default_factory=dict)
    shard_sizes: dict[str, int] = field(default_factory=dict)
    dims: set[int] = field(default_factory=set)
    legacy: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)

    def find(self, row_id: RowId, fingerprint: str, sha256: str | None = None) -> Stored | None:
        """The stored row of this file, if its content matches (the full hash too, if given).

        An unknown fingerprint (``""``: unreadable now, or not recorded) matches nothing.
        """
        if not fingerprint:
            return None
        for stored in self.rows.get(row_id, ()):
            if stored.fingerprint == fingerprint and sha256 in (None, stored.sha256):
                return stored
        return None

    def skip_reason(self, row_id: RowId, fingerprint: str) -> str | None:
        """Why this file was skipped, if it was (transient reasons included)."""
        if not fingerprint:
            return None
        for stored_fp, reason in self.skipped.get(row_id, ()):
            if stored_fp == fingerprint:
                return reason
        return None


def quarantine(shard: Path) -> bool:
    """Move a shard that failed its checksums aside, so that the next extract recomputes its
    rows instead of trusting them. False where that is not possible (a read-only cache)."""
    try:
        shard.rename(shard.with_name(shard.name + CORRUPT_SUFFIX))
    except OSError:
        return False
    return True


def _read_shard(shard: Path, index: ShardIndex) -> None:
    with h5py.File(shard, "r") as f:
        if "fingerprint" not in f:
            index.legacy.append(shard.name)  # an older featpipe's: its rows are recomputed
            return
        if not checksum_ok(f):
            raise OSError("its checksum does not match its rows")
        index.dims.add(int(f.attrs["dim"]))
        index.shard_sizes[shard.name] = int(f.attrs["n"])
        columns = (f[c][:] for c in ("relpath", "size", "mtime_ns", "fingerprint", "sha256"))
        for row, (path, size, mtime, fp, sha) in enumerate(zip(*columns, strict=True)):
            stored = Stored(shard.name, row, fp.decode(), sha.decode())
            index.rows.setdefault((path.decode(), int(size), int(mtime)), []).append(stored)
        skipped = f["skipped"]
        columns = (skipped[c][:] for c in ("relpath", "size", "mtime_ns", "fingerprint"))
        reasons = skipped["reason"].asstr()[:]
        for path, size, mtime, fp, reason in zip(*columns, reasons, strict=True):
            row_id = (path.decode(), int(size), int(mtime))
            index.skipped.setdefault(row_id, []).append((fp.decode(), reason))


def read_index(parts: Path) -> ShardIndex:
    """What the shards in ``parts`` hold. A shard that cannot be read or fails its checksum is
    moved aside (see :func:`quarantine`) and named in ``broken``: its rows become pending."""
    index = ShardIndex()
    if not parts.is_dir():
        return index
    for shard in sorted(parts.glob("*.h5")):
        try:
            _read_shard(shard, index)
        except (OSError, KeyError, ValueError):
            index.broken.append(shard.name)
            quarantine(shard)
    return index


def first_corrupt_shard(parts: Path, names: Iterable[str]) -> tuple[str, str] | None:
    """Read every byte of the named shards; the first that fails, with HDF5's reason."""
    for name in names:
        reason = shard_problem(parts / name)
        if reason is not None:
            return name, reason
    return None


def shard_problem(shard: Path) -> str | None:
    """Why ``shard`` is unusable (unreadable, checksum, fletcher32), or None if it is sound."""
    try:
        with h5py.File(shard, "r") as f:
            if "fingerprint" in f and not checksum_ok(f):
                return "its checksum does not match its rows"
            for block in _blocks(f["features"]):
                f["features"][block]  # fletcher32 checksums are checked on read
    except (OSError, KeyError) as exc:
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return None


def _blocks(ds: h5py.Dataset) -> Iterator[slice]:
    n = ds.shape[0]
    step = max(1, (8 << 20) // max(1, int(np.prod(ds.shape[1:])) * ds.dtype.itemsize))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))

"""One cache entry: a single HDF5 file a user can open with h5py, presenting a dataset's rows.

``cache/<dataset>/<backbone>-<key8>.h5`` holds:

``features``      N×D, an HDF5 *virtual* dataset that stitches the shards (``<stem>.parts/``)
                  into dataset order without copying a byte;
``relpath``, ``size``, ``mtime_ns``, ``fingerprint``, ``sha256``   what each row is (the
                  row key, and the content it was computed from);
``label``, ``target``, ``split``      what the dataset says about it (labels live here, not in
                  shards, so relabelling never re-extracts);
``class_names``, ``skipped/{relpath,reason}``, ``source/{shard,row,shard_names,shard_bytes}``;
attributes        the key fields, and the provenance: versions, device, precision, timings;
                  ``content`` (a digest of every file's fingerprint: what a cache hit compares)
                  and ``checksum`` (SHA-256 of every attribute and dataset but the features).

The file is written whole by :func:`featpipe.cache.commit.commit`, at the end of every extract
run; this module opens, checks and reads it.

Opening an entry checks its checksum and its shards' sizes (cheap: no feature is read); reading
features checks HDF5's fletcher32 checksums, and a shard that fails them is named, moved aside,
and recomputed by the next extract. Format 1 entries (no checksums, no fingerprints) still read;
the next extract recomputes their rows.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import h5py
import numpy as np

from featpipe.cache.durable import replace_file, stale_temporaries
from featpipe.cache.fingerprints import Contents
from featpipe.cache.hdf5 import checksum_ok
from featpipe.cache.index import CORRUPT_SUFFIX, first_corrupt_shard, quarantine
from featpipe.cache.statrecord import Trust, read_record
from featpipe.data.datasets import Dataset, FileStat
from featpipe.errors import DataError, StorageError

# The layout of an entry file; 2 adds content fingerprints, checksums and shard sizes. Not in the
# cache key: a reader accepts every format up to its own.
ENTRY_FORMAT = 2


class FeatureSet(ABC):
    """The rows of one dataset under one backbone, whichever way their features are held.

    Every feature set is a dataclass holding, per row, ``labels``, ``targets``, ``split`` and
    ``relpath`` (N values each, in memory, in row order), and ``class_names``, ``task`` and
    ``meta``. The features themselves are read through :meth:`blocks`, which an in-memory set
    (:class:`Features`) answers with its matrix and a set larger than memory
    (:class:`~featpipe.fitting.streaming.StreamedFeatures`) with blocks read from its entry. So
    code that scores or sums over a split asks the set for its blocks and runs the same on
    either; only what needs every row at once (cross-validation, few-shot draws, views) asks
    :attr:`in_memory` first.
    """

    in_memory: ClassVar[bool]  # whether the N × D matrix is held (``X``)

    def __len__(self) -> int:
        return len(self.split)

    @property
    def y(self) -> np.ndarray:
        """Class indices for classification, float targets for regression."""
        return self.targets if self.task == "regression" else self.labels

    @abstractmethod
    def blocks(self, mask: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(features, row numbers)`` of the rows in ``mask``, block by block in row order
        (no block for an empty mask)."""

    @abstractmethod
    def check_finite(self) -> None:
        """Raise :class:`DataError` when feature rows hold NaN or inf (a set that reads its
        rows later checks each block as it reads it)."""

    def _refuse_nonfinite(self, X: np.ndarray, rows: np.ndarray) -> None:
        """The one message for non-finite feature rows; ``rows``: the row numbers of ``X``."""
        bad = ~np.isfinite(X).all(axis=1)
        if bad.any():
            paths = self.relpath[rows[bad]]
            raise DataError(
                f"{len(paths)} feature rows hold NaN or inf (e.g. {paths[0]}): run featpipe "
                "cache verify, then remove the entry and extract again"
            )


@dataclass
class Features(FeatureSet):
    """Cached embeddings with everything needed to use them, in memory.

    ``X`` is N × D; for augmented views (:mod:`featpipe.cache.views`) it is N × K × D.
    """

    X: np.ndarray
    labels: np.ndarray
    targets: np.ndarray
    split: np.ndarray
    relpath: np.ndarray
    class_names: list[str]
    task: str
    meta: dict[str, Any] = field(default_factory=dict)

    in_memory = True

    def __repr__(self) -> str:
        """One line for a notebook: shape, task, splits, classes (never the arrays)."""
        names, counts = np.unique(self.split.astype(str), return_counts=True)
        splits = " ".join(f"{s}={c}" for s, c in zip(names, counts, strict=True))
        classes = self.class_names[:6] + (["…"] if len(self.class_names) > 6 else [])
        what = f"classes={classes}" if self.task == "classification" else "regression"
        views = f"K={self.X.shape[1]} views, " if self.X.ndim == 3 else ""
        return (
            f"Features(N={len(self)}, {views}D={self.X.shape[-1]}, {self.X.dtype}, {splits}, "
            f"{what})"
        )

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

    def blocks(self, mask: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The rows in ``mask`` as one block: they are in memory already."""
        if mask.any():
            yield self.X[mask], np.flatnonzero(mask)

    def check_finite(self) -> None:
        self._refuse_nonfinite(self.X, np.arange(len(self)))


def parts_dir(entry: Path) -> Path:
    return entry.with_suffix(".parts")


def _refuse(path: Path, problem: str) -> StorageError:
    return StorageError(
        f"cache entry {path} {problem}: rerun the extract command to rebuild it, or remove it "
        "with featpipe cache rm"
    )


def open_entry(path: str | Path, trust_stat: bool = True) -> h5py.File:
    """Open an entry for reading after checking it is complete, intact and not from the future.

    The checks are cheap (attributes, small columns and a ``stat`` per shard): the checksum
    refuses an entry whose labels, splits, row keys or attributes were changed after it was
    written, and the shard sizes refuse a shard that was truncated or replaced. The checksum
    is computed once per version of the entry file: a version verified before, by this process
    or by an earlier one (as its :data:`VERIFIED_NAME` records), is not read again (see
    :data:`_VERIFIED`); ``trust_stat=False`` (``cache verify``) checksums regardless.
    """
    path = Path(path)
    if not path.is_file():
        raise StorageError(
            f"cache entry {path} does not exist: list entries with featpipe cache ls"
        )
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise _refuse(path, f"is not a readable HDF5 file ({exc})") from None
    try:
        opened = FileStat.of(os.fstat(f.id.get_vfd_handle()))  # the file opened, not the path
        settled = Trust().settled(opened, time.time_ns())
        known = trust_stat and _VERIFIED.get(str(path)) == opened
        vouched = known or (trust_stat and settled and _verified_before(path) == opened)
        _check(path, f, verified=vouched)
    except BaseException:
        f.close()
        raise
    if settled:
        _VERIFIED[str(path)] = opened
        if not vouched:
            _record_verified(path, opened)
    return f


# Entries whose checksum this process verified, by the FileStat of the file it opened: a call
# opens its entry several times (the hit check, its header, the load, a fit's run record), and
# an entry is only ever replaced whole (a new inode), so each version is checksummed once. The
# stat rule's guards apply (:mod:`featpipe.cache.statrecord`): a version written within
# RACY_NS, or on a filesystem whose stats cannot vouch, is checksummed at every open.
_VERIFIED: dict[str, FileStat] = {}

# Beside the shards: the FileStat of the entry version last verified, so that the next process
# need not checksum it again (its columns are 0.2 s of a 200,000-file cache hit). By the stat
# rule an unchanged FileStat is an unchanged file: an edit in place (h5py's "r+") or a
# replacement changes its ctime or inode. ``cache verify`` checksums regardless.
VERIFIED_NAME = "entry.verified"


def _verified_before(path: Path) -> FileStat | None:
    try:
        return FileStat(*map(int, (parts_dir(path) / VERIFIED_NAME).read_text().split()))
    except (OSError, ValueError, TypeError):
        return None  # none recorded, or damaged: checksum


def _record_verified(path: Path, opened: FileStat) -> None:
    parts = parts_dir(path)
    if not parts.is_dir():
        return
    # a read-only cache fails the write: the next process checksums again, nothing worse
    with contextlib.suppress(OSError):
        replace_file(parts / VERIFIED_NAME, " ".join(map(str, opened)).encode())


def _check(path: Path, f: h5py.File, verified: bool = False) -> None:
    version = int(f.attrs.get("format_version", -1))
    if version > ENTRY_FORMAT:
        raise StorageError(
            f"cache entry {path} has format version {version}, newer than this featpipe reads "
            f"({ENTRY_FORMAT}): upgrade featpipe, or remove the entry with featpipe cache rm"
        )
    if version < 1 or not f.attrs.get("complete", False):
        raise StorageError(f"cache entry {path} is not a complete featpipe entry: extract again")
    try:
        intact = version < 2 or verified or checksum_ok(f)
    except (OSError, KeyError, ValueError) as exc:
        raise _refuse(path, f"is damaged ({exc})") from None
    if not intact:
        raise _refuse(
            path, "fails its checksum (its attributes or columns changed after it was written)"
        )
    names = list(f["source/shard_names"].asstr()[:])
    parts = parts_dir(path)
    missing = [name for name in names if not (parts / name).is_file()]
    if missing:
        raise StorageError(
            f"cache entry {path}: {len(missing)} shard file(s) are missing from "
            f"{parts} (e.g. {missing[0]}): rerun the extract command to recompute them"
        )
    if version >= 2:
        for name, size in zip(names, f["source/shard_bytes"][:], strict=True):
            if (parts / name).stat().st_size != size:
                raise StorageError(
                    f"cache entry {path}: shard {parts / name} changed size since the entry was "
                    "written: rerun the extract command to recompute its rows"
                )


class Header(NamedTuple):
    """An entry's size: rows, feature dimension, skipped files."""

    n: int
    dim: int
    n_skipped: int


def entry_header(path: Path) -> Header:
    with open_entry(path) as f:
        return Header(int(f.attrs["n"]), int(f.attrs["dim"]), int(f.attrs["n_skipped"]))


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


def _features(path: Path, f: h5py.File, rows: slice) -> np.ndarray:
    """Read feature rows; a shard that fails its fletcher32 checksums (or vanished since the
    entry was opened) is one line naming it, never a traceback and never a NaN row."""
    try:
        block = f["features"][rows]
    except OSError as exc:
        raise _unreadable(path, f, exc) from None
    if np.isnan(block).any():  # stored rows are finite: NaN is the fill of a missing source
        raise _unreadable(path, f, OSError("a shard went missing while it was read"))
    return block


def _unreadable(path: Path, f: h5py.File, exc: OSError) -> StorageError:
    parts = parts_dir(path)
    found = first_corrupt_shard(parts, f["source/shard_names"].asstr()[:])
    if found is None:
        return StorageError(
            f"cannot read cache entry {path} ({exc}): check the disk, then rerun the extract "
            "command to recompute what is lost"
        )
    name, reason = found
    action = (
        "rerun the extract command to recompute its rows"
        if quarantine(parts / name)
        else "remove it, then rerun the extract command to recompute its rows"
    )
    return StorageError(f"cache entry {path}: shard {parts / name} is corrupt ({reason}): {action}")


def load_features(path: str | Path, split: str | list[str] | None = None) -> Features:
    """Read an entry (or one split of it) into memory."""
    path = Path(path)
    with open_entry(path) as f:
        features = Features(
            X=_features(path, f, slice(None)),
            **_columns(f, slice(None)),
            class_names=list(f["class_names"].asstr()[:]),
            task=str(f.attrs["task"]),
            meta=entry_meta(f),
        )
    return features if split is None else features.where(split)


def load_columns(path: str | Path) -> Features:
    """An entry's labels, targets, splits and paths without its features (``X`` is N×0).

    What a fit streamed from disk plans with: every row's label and split, in row order.
    """
    path = Path(path)
    with open_entry(path) as f:
        columns = _columns(f, slice(None))
        return Features(
            X=np.zeros((len(columns["labels"]), 0), np.float32),
            **columns,
            class_names=list(f["class_names"].asstr()[:]),
            task=str(f.attrs["task"]),
            meta=entry_meta(f),
        )


def iter_chunks(path: str | Path, rows: int | None = None) -> Iterator[Features]:
    """Stream an entry in row blocks, so memory stays flat however large N is."""
    path = Path(path)
    with open_entry(path) as f:
        n, dim = f["features"].shape
        rows = rows or max(1, (8 << 20) // max(1, dim * f["features"].dtype.itemsize))
        class_names = list(f["class_names"].asstr()[:])
        for start in range(0, n, rows):
            block = slice(start, min(n, start + rows))
            yield Features(
                _features(path, f, block),
                **_columns(f, block),
                class_names=class_names,
                task=str(f.attrs["task"]),
            )


def read_spans(path: str | Path, spans: Sequence[tuple[int, int]]) -> Iterator[np.ndarray]:
    """The feature rows ``start:stop`` of every span, in the order given, from one open file.

    What a streamed fit reads: its columns are already in memory, and it draws the spans at
    random across the entry (:mod:`featpipe.fitting.streaming`).
    """
    path = Path(path)
    with open_entry(path) as f:
        for start, stop in spans:
            yield _features(path, f, slice(start, stop))


def matches(
    path: Path, dataset: Dataset, full: bool = False, contents: Contents | None = None
) -> Contents | None:
    """The files' fingerprints when the entry holds exactly this scan of the dataset (a cache
    hit), else None. ``contents``: the fingerprints to compare, when the rows are not files of
    their own (views: :mod:`featpipe.cache.views`); default: those of the dataset's files, read
    only where the entry's stat record does not vouch for them
    (:mod:`featpipe.cache.statrecord`).

    The rule: the scan (paths, sizes, mtimes, labels, splits) must be the one committed, no file
    may have been skipped for a reason that may pass (permissions, I/O), and every file's
    content fingerprint must be the one its row was computed from; with ``full``, every row's
    full SHA-256 too. Only the first cheap checks pass does it read files; when it had to read
    some (a copied or touched dataset), it records their stats, so that neither the next check
    nor the extract after a miss reads them again.
    """
    if _manifest(path) != dataset.digest():  # a miss: no need to checksum the entry first
        return None
    try:
        f = open_entry(path)
    except StorageError:
        return None
    with f:
        attrs = f.attrs
        if (
            attrs.get("manifest") != dataset.digest()
            or int(attrs.get("n_transient", 0))
            or "content" not in attrs
        ):
            return None
        if contents is None:
            contents = Contents(dataset, full=full, record=read_record(parts_dir(path)))
        # What the files hold now, hit or not: the extract after a miss reads none of them again.
        contents.remember(parts_dir(path))
        if contents.digest([i.relpath for i in dataset.items], full=False) != attrs["content"]:
            return None
        kept = list(f["relpath"].asstr()[:]) if full else []
        if full and contents.digest(kept, full=True) != attrs["content_full"]:
            return None
    return contents


def _manifest(path: Path) -> str | None:
    """The scan digest an entry says it holds, read without checking the entry: what decides
    a miss, which trusts nothing in the entry (the run that follows reads the shards and writes
    a new entry). A hit is decided only after :func:`open_entry` has checked it."""
    try:
        with h5py.File(path, "r") as f:
            value = f.attrs.get("manifest")
    except OSError:
        return None
    return value if isinstance(value, str) else None


def verify(path: Path) -> list[str]:
    """Read every byte of an entry and its shards; return the problems found (empty if sound).

    A shard that fails its checksums is moved aside (so that the next extract recomputes its
    rows); temporary files of dead writers and unfinished journals are reported.
    """
    problems: list[str] = []
    parts = parts_dir(path)
    try:
        f = open_entry(path, trust_stat=False)
    except StorageError as exc:
        return [str(exc), *_leftovers(path)]
    with f:
        key = f.attrs["key"]
        if int(f.attrs["format_version"]) < 2:
            problems.append(
                "format 1 entry (no checksums or content fingerprints): rerun the extract "
                "command to recompute and rewrite it"
            )
        for name in f["source/shard_names"].asstr()[:]:
            found = first_corrupt_shard(parts, [name])
            if found is not None:
                moved = "moved aside" if quarantine(parts / name) else "remove it"
                problems.append(
                    f"{name}: corrupt ({found[1]}); {moved}, then rerun the extract command "
                    "to recompute its rows"
                )
                continue
            with h5py.File(parts / name, "r") as shard:
                if shard.attrs["key"] != key:
                    problems.append(f"{name}: written for another key")
        if not problems:
            n = f["features"].shape[0]
            for start in range(0, n, 65536):
                block = f["features"][start : start + 65536]
                bad = ~np.isfinite(block).all(axis=1)
                if bad.any():
                    first = start + int(np.argmax(bad))
                    problems.append(
                        f"{int(bad.sum())} rows hold NaN or inf "
                        f"(first: {f['relpath'].asstr()[first]})"
                    )
    return problems + _leftovers(path)


def _leftovers(path: Path) -> list[str]:
    """What killed or failed runs left next to the entry."""
    parts = parts_dir(path)
    found = []
    journals = list(parts.glob("*.rows"))
    if journals:
        found.append(f"{len(journals)} unfinished run(s) in {parts}: rerun extract to resume them")
    temporaries = stale_temporaries(parts) + stale_temporaries(path.parent, prefix=path.name)
    if temporaries:
        found.append(
            f"{len(temporaries)} temporary file(s) of dead writers (e.g. {temporaries[0]}): "
            "the next extract removes them"
        )
    corrupt = list(parts.glob(f"*{CORRUPT_SUFFIX}"))
    if corrupt:
        found.append(
            f"{len(corrupt)} corrupt shard(s) moved aside (e.g. {corrupt[0].name}): the next "
            "extract recomputes their rows, then removes them"
        )
    return found


def size_on_disk(path: Path) -> int:
    total = path.stat().st_size if path.exists() else 0
    parts = parts_dir(path)
    if parts.is_dir():
        total += sum(p.stat().st_size for p in parts.iterdir() if p.is_file())
    return total

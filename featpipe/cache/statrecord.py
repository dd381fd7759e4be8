"""The stat rule: a file whose ``stat`` is unchanged since its fingerprint was read is unchanged.

Beside every entry (``<stem>.parts/files.stat``) the cache records, for each file of the
dataset, the :class:`~featpipe.data.datasets.FileStat` it had when its quick fingerprint was
read (:mod:`featpipe.cache.fingerprints`). The next run reads only the files whose FileStat
differs: a cache hit on an unchanged dataset opens none of its files, an added 1% reads that
1%, and a copied or moved dataset (new inodes) is read once, then recorded again.

Why an unchanged FileStat means unchanged content: the kernel sets a file's ctime to the
current time on every change to its data or metadata (write, truncate, ``chmod``, ``utime``,
and a rename on the filesystems Linux ships), and no system call sets it back, so ``touch -r``
or ``os.utime`` cannot hide an edit; a file replaced by another (renamed over, deleted and made
again, copied) has another inode, or a newer ctime. Size, mtime, ctime, inode and device
together change whenever the content can have.

Two guards keep that true:

* *racy files* (git's "racily clean" entries): a timestamp has a granularity (one clock tick
  on Linux, a second on ext3 or HFS+, two on FAT), so a file changed within a tick of the
  ``stat`` that recorded it could change again without its ctime moving. A FileStat is
  recorded only when the file's ctime is at least :data:`RACY_NS` older than the scan that
  saw it; a younger file is read again on the next run;
* *filesystems without a real ctime or stable inodes* are never trusted, and their files are
  fingerprinted on every run as before: FAT and exFAT (Linux shows their creation time as
  ctime, and makes inode numbers up from directory positions) and every FUSE filesystem
  (sshfs, rclone, s3fs, gcsfuse, network drives: their ctime is often the mtime and their
  inode numbers are generated), found by device in ``/proc/self/mountinfo``.

What the mount table cannot show is set with :data:`TRUST_VARIABLE`: ``no`` fingerprints every
file on every run (an NFS or SMB share of a FAT or exFAT disk, as home NAS boxes export USB
disks; a server that reuses inode numbers, such as CIFS mounted ``noserverino``; NFS clients
that another machine writes to, whose ``stat`` can be served from the attribute cache for up
to ``acregmax``, 60 s by default), ``yes`` trusts every filesystem (FUSE that passes stats
through, such as ``fuse-overlayfs`` in rootless containers), ``auto`` (the default) is the rule
above. A restored backup cannot bring an old ctime back (``cp -a``, ``rsync -a`` and ``tar``
set mtime, never ctime: only a changed system clock or a raw disk edit can), and
``--verify-content`` still reads every byte of every file for those who want that.

The record saves reads, never decides on its own: a file it vouches for is matched to its row
by path, size, mtime and the recorded fingerprint as before, and a record that is missing,
damaged or from another dataset vouches for nothing.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from itertools import compress
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np

from featpipe.cache.durable import replace_file
from featpipe.cache.hdf5 import checksum_ok, file_image, in_memory_file, seal_checksum
from featpipe.collector import paused
from featpipe.data.datasets import FileStat, Item
from featpipe.errors import DataError

RECORD_NAME = "files.stat"
# A file changed less than this before the scan that saw it is read again next time: more than
# any timestamp granularity featpipe trusts (FAT's two seconds are not trusted at all).
RACY_NS = 2_000_000_000
TRUST_VARIABLE = "FEATPIPE_TRUST_STAT"
# Filesystem types (``/proc/self/mountinfo``) whose ctime or inode numbers cannot vouch.
UNTRUSTED_TYPES = frozenset({"vfat", "msdos", "exfat", "fuse", "fuseblk"})
_FORMAT = 1
_HEX = 32  # characters of a quick fingerprint (BLAKE2b, 16 bytes, in hex)

# The record's stat columns, FileStat's fields in order: size, mtime, ctime, inode, device.
_COLUMNS = tuple(zip(FileStat._fields, (np.int64,) * 3 + (np.uint64,) * 2, strict=True))
_RELPATH, _STAT = attrgetter("relpath"), attrgetter("stat")


class Facts(NamedTuple):
    """Files as a run saw them, column by column: relative paths, the FileStats the scan saw,
    and the quick fingerprints read (or vouched for) then. Columns, not rows: at 200,000
    files a tuple per file cost more than the rest of a cache hit."""

    relpaths: list[str]
    stats: list[FileStat]
    prints: list[str]

    @classmethod
    def of(cls, items: Sequence[Item], quick: dict[str, str]) -> Facts:
        relpaths = list(map(_RELPATH, items))
        return cls(relpaths, list(map(_STAT, items)), list(map(quick.__getitem__, relpaths)))


def _stored(relpaths: list[str], stats: list[FileStat]) -> tuple[bytes, list[np.ndarray]]:
    """Relative paths and stats as the record stores them: one NUL-separated UTF-8 blob, and
    one array per stat field."""
    blob = "\0".join(relpaths).encode("utf-8", "surrogateescape")
    n = len(stats)
    return blob, [np.fromiter(map(itemgetter(k), stats), t, n) for k, (_, t) in enumerate(_COLUMNS)]


def _digest(blob: bytes, columns: list[np.ndarray]) -> str:
    """One hash of stored paths and stats: equal means every file has the recorded stat."""
    h = hashlib.sha256(blob)
    for column in columns:
        h.update(column.tobytes())
    return h.hexdigest()


def _policy() -> str:
    value = os.environ.get(TRUST_VARIABLE, "auto").strip().lower() or "auto"
    if value not in ("auto", "yes", "no"):
        raise DataError(
            f"environment variable {TRUST_VARIABLE}={value}: set it to auto (the default), "
            "yes or no"
        )
    return value


def _untrusted_devices(mountinfo: Path = Path("/proc/self/mountinfo")) -> frozenset[int]:
    """The devices of mounted filesystems whose stats cannot vouch for content."""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return frozenset()  # not Linux: trust, as the module's docstring says
    found = set()
    for line in lines:
        fields, _, rest = line.partition(" - ")
        parts = fields.split()
        fstype = rest.split(" ", 1)[0]
        if len(parts) > 2 and (fstype in UNTRUSTED_TYPES or fstype.startswith("fuse.")):
            major, _, minor = parts[2].partition(":")
            found.add(os.makedev(int(major), int(minor)))
    return frozenset(found)


class Trust:
    """Which FileStats can vouch for content: read once per run (policy and mount table)."""

    def __init__(self) -> None:
        self.policy = _policy()
        self.untrusted = _untrusted_devices() if self.policy == "auto" else frozenset()

    def device(self, device: int) -> bool:
        """Whether stats of files on ``device`` can vouch at all."""
        return self.policy == "yes" or (self.policy == "auto" and device not in self.untrusted)

    def settled(self, stat: FileStat, seen_ns: int) -> bool:
        """Whether ``stat``, seen by a ``stat`` no earlier than ``seen_ns``, may be recorded:
        a trusted device, and a ctime old enough that no later change can share it."""
        return stat.ctime_ns < seen_ns - RACY_NS and self.device(stat.device)


class StatRecord:
    """What a run recorded of a dataset's files, in its scan's order: relative paths, their
    stat columns (:data:`_COLUMNS`) and quick fingerprints, with a digest of paths and stats."""

    def __init__(
        self,
        names: list[str] | None = None,
        columns: list[np.ndarray] | None = None,
        prints: list[str] | None = None,
        digest: str = "",
    ) -> None:
        self.names, self.prints, self.digest = names or [], prints or [], digest
        self.columns = columns or [np.zeros(0, t) for _, t in _COLUMNS]

    def __len__(self) -> int:
        return len(self.names)

    def facts(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Relative path → (its stat as a plain tuple, its fingerprint)."""
        stats = zip(*(c.tolist() for c in self.columns), strict=True)
        return dict(zip(self.names, zip(stats, self.prints, strict=True), strict=True))

    def vouched(self, items: Sequence[Item]) -> dict[str, str]:
        """The recorded fingerprints of the items whose stat is the one recorded, on a trusted
        device: relative path → fingerprint. The others must be read.

        An unchanged dataset is vouched for by one digest, without a lookup per file: at
        200,000 files the lookups cost as much as the rest of the hit."""
        if not self.names:
            return {}
        trust = Trust()
        relpaths, stats = list(map(_RELPATH, items)), list(map(_STAT, items))
        trusted = all(map(trust.device, {s.device for s in stats}))
        if trusted and _digest(*_stored(relpaths, stats)) == self.digest:
            return dict(zip(relpaths, self.prints, strict=True))
        facts, out = self.facts(), {}
        for relpath, stat in zip(relpaths, stats, strict=True):
            fact = facts.get(relpath)
            if fact is not None and fact[0] == stat and trust.device(stat.device):
                out[relpath] = fact[1]
        return out


def record_path(parts: Path) -> Path:
    return parts / RECORD_NAME


@paused()
def read_record(parts: Path) -> StatRecord:
    """The record beside an entry; an empty one when there is none or it fails its checksum
    (it only ever saves reads)."""
    try:
        with h5py.File(record_path(parts), "r") as f:
            if int(f.attrs.get("format", 0)) != _FORMAT or not checksum_ok(f):
                return StatRecord()
            text = f["relpath"][()].tobytes().decode("utf-8", "surrogateescape")
            columns = [f[name][()] for name, _ in _COLUMNS]
            hexes = f["fingerprint"][()].tobytes().decode("ascii")
            digest = str(f.attrs["digest"])
    except (OSError, KeyError, ValueError):
        return StatRecord()
    names = text.split("\0") if text else []
    prints = [hexes[i : i + _HEX] for i in range(0, len(hexes), _HEX)]
    if any(len(c) != len(names) for c in columns) or len(prints) != len(names):
        return StatRecord()
    return StatRecord(names, columns, prints, digest)


@paused()
def write_record(parts: Path, facts: Facts, scanned_ns: int) -> int:
    """Record the files' stats and fingerprints, seen by a scan that began at ``scanned_ns``;
    returns how many were recorded. Unreadable files, racy ones and those on untrusted
    filesystems are left out (they are read again next time). A failed write (a read-only
    cache, a full disk) records nothing and is not an error: the record only saves reads."""
    trust = Trust()
    n = len(facts.stats)
    ctime = np.fromiter(map(attrgetter("ctime_ns"), facts.stats), np.int64, n)
    device = np.fromiter(map(attrgetter("device"), facts.stats), np.uint64, n)
    trusted = [d for d in np.unique(device).tolist() if trust.device(d)]
    keep = (
        (ctime < scanned_ns - RACY_NS)
        & np.isin(device, np.array(trusted, np.uint64))
        & (np.fromiter(map(len, facts.prints), np.int64, n) == _HEX)
    ).tolist()
    relpaths = list(compress(facts.relpaths, keep))
    blob, columns = _stored(relpaths, list(compress(facts.stats, keep)))
    hexes = "".join(compress(facts.prints, keep)).encode("ascii")
    with in_memory_file() as f:
        f["relpath"] = np.frombuffer(blob, dtype=np.uint8)
        for (name, _), column in zip(_COLUMNS, columns, strict=True):
            f[name] = column
        f["fingerprint"] = np.frombuffer(hexes, dtype=np.uint8).reshape(-1, _HEX)
        digest = _digest(blob, columns)
        f.attrs.update({"format": _FORMAT, "written": time.time(), "digest": digest})
        seal_checksum(f)
        image = file_image(f)
    try:
        replace_file(record_path(parts), image)
    except OSError:
        return 0
    return len(relpaths)

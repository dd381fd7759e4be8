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

import os
import time
from collections.abc import Iterable
from pathlib import Path

import h5py
import numpy as np

from featpipe.cache.durable import replace_file
from featpipe.cache.hdf5 import checksum_ok, file_image, in_memory_file, seal_checksum
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

# A file as the record holds it: relative path, its FileStat, its quick fingerprint.
Fact = tuple[str, FileStat, str]


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
    """What a run recorded of a dataset's files: relative path → (FileStat, fingerprint)."""

    def __init__(self, facts: dict[str, tuple[FileStat, str]] | None = None) -> None:
        self.facts = facts or {}

    def vouched(self, items: Iterable[Item]) -> dict[str, str]:
        """The recorded fingerprints of the items whose stat is the one recorded, on a trusted
        device: relative path → fingerprint. The others must be read."""
        if not self.facts:
            return {}
        trust = Trust()
        out = {}
        for item in items:
            fact = self.facts.get(item.relpath)
            if fact is not None and fact[0] == item.stat and trust.device(item.stat.device):
                out[item.relpath] = fact[1]
        return out


def record_path(parts: Path) -> Path:
    return parts / RECORD_NAME


def read_record(parts: Path) -> StatRecord:
    """The record beside an entry; an empty one when there is none or it fails its checksum
    (it only ever saves reads)."""
    try:
        with h5py.File(record_path(parts), "r") as f:
            if int(f.attrs.get("format", 0)) != _FORMAT or not checksum_ok(f):
                return StatRecord()
            text = f["relpath"][()].tobytes().decode("utf-8", "surrogateescape")
            names = text.split("\0") if text else []
            times, ids = f["times"][()].tolist(), f["ids"][()].tolist()
            prints = f["fingerprint"][()].astype(str).tolist()
    except (OSError, KeyError, ValueError):
        return StatRecord()
    if not (len(names) == len(times) == len(ids) == len(prints)):
        return StatRecord()
    return StatRecord(
        {
            name: (FileStat(size, mtime, ctime, inode, device), fp)
            for name, (size, mtime, ctime), (inode, device), fp in zip(
                names, times, ids, prints, strict=True
            )
        }
    )


def write_record(parts: Path, facts: Iterable[Fact], scanned_ns: int) -> int:
    """Record the files' stats and fingerprints, seen by a scan that began at ``scanned_ns``;
    returns how many were recorded. Unreadable files, racy ones and those on untrusted
    filesystems are left out (they are read again next time). A failed write (a read-only
    cache, a full disk) records nothing and is not an error: the record only saves reads."""
    trust = Trust()
    kept = [(r, s, fp) for r, s, fp in facts if fp and trust.settled(s, scanned_ns)]
    with in_memory_file() as f:
        blob = "\0".join(r for r, _, _ in kept).encode("utf-8", "surrogateescape")
        f["relpath"] = np.frombuffer(blob, dtype=np.uint8)
        f["times"] = np.array([s[:3] for _, s, _ in kept], dtype=np.int64).reshape(-1, 3)
        f["ids"] = np.array([s[3:] for _, s, _ in kept], dtype=np.uint64).reshape(-1, 2)
        f["fingerprint"] = np.array([fp for _, _, fp in kept], dtype="S32")
        f.attrs.update({"format": _FORMAT, "written": time.time()})
        seal_checksum(f)
        image = file_image(f)
    try:
        replace_file(record_path(parts), image)
    except OSError:
        return 0
    return len(kept)

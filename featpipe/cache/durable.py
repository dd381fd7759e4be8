"""Durable writes: every byte featpipe puts in the cache goes through these, at the OS boundary.

A file appears whole or not at all: its bytes go to a temporary name (``<name>.tmp-PID``), are
fsynced, and are renamed over the target, and the folder is fsynced so that the rename itself
survives a crash. A full disk or a refused write is one :class:`DiskError` line, never a
traceback from a library's destructor.

A writer holds an exclusive ``flock`` on every temporary file it writes, so a sweep
(:func:`remove_stale_temporaries`) removes only the temporaries of writers that are gone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
from pathlib import Path

from featpipe.errors import StorageError

# Space left free on top of what a write needs, so that a seal never fills the disk to the last
# byte (other writers, and the journal's next batch, need room too).
FREE_SPACE_MARGIN = 1 << 20
_TEMP = re.compile(r"\.tmp-\d+$")


class DiskError(StorageError):
    """Writing failed (disk full, permissions): finished rows are safe, the journal is kept."""


def disk_error(path: Path, exc: OSError) -> DiskError:
    return DiskError(
        f"cannot write {path} ({exc.strerror or exc}); rows already written are kept: "
        "free space or fix permissions, then rerun the same command to resume"
    )


def write_all(fd: int, data: bytes | memoryview) -> None:
    """``os.write`` until done: a short write (a disk filling up) is continued, not ignored."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder``, then the folder: before a rename makes the tree
    visible, so that a crash never leaves it renamed with empty files."""
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fsync_dir(folder)


def temp_name(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def replace_file(path: Path, data: bytes, reserve: int = 0) -> None:
    """Put ``data`` at ``path`` so that a reader sees the old file or the new one, never part.

    The bytes go to a locked temporary file (a sweep leaves it alone while we live), after
    checking that the disk has room for them plus ``reserve``; then fsync, rename, and fsync of
    the folder. Any failure removes the temporary file and raises the ``OSError``.
    """
    tmp = temp_name(path)
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
            write_all(fd, data)
            os.fsync(fd)
            os.replace(tmp, path)
        finally:
            os.close(fd)
        fsync_dir(path.parent)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: Path, data: bytes, reserve: int = 0) -> None:
    """:func:`replace_file` for the cache: a failure is one :class:`DiskError` line."""
    try:
        replace_file(path, data, reserve)
    except OSError as exc:
        raise disk_error(path, exc) from None


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

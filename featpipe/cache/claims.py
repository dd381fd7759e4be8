"""Claims: which rows a live writer is computing, so that a concurrent writer waits for them.

Before extracting, a writer *claims* the rows it is about to compute: it names them in a
``<stem>.claim`` file that it holds locked for as long as it works on them. A concurrent writer
skips claimed rows and waits for their writer (:meth:`Claim.wait`) instead of computing them a
second time. A killed writer's lock drops with it, so its claim counts for nothing and the next
writer removes it.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from featpipe.cache.durable import write_all
from featpipe.cache.journals import new_writer_stem

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
            write_all(claim.fd, json.dumps(mine).encode())
            os.replace(fresh, path)
            claim.path = path
        except OSError:
            fresh.unlink(missing_ok=True)
        return claim
    finally:
        os.close(lock)

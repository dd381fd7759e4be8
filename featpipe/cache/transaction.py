"""One run's write into a cache entry: the cache's steps, in the order they must happen.

A run that adds rows to an entry (an extract, or the views of one) drives a
:class:`Transaction`; the caller decides which rows to compute and how, the cache how they are
stored:

1. :meth:`~Transaction.recover` seals the journals that killed runs left behind (one process
   does it: a torchrun job's leader);
2. :meth:`~Transaction.pending` reads the index of the shards and finds the dataset's rows that
   none holds for the file's current content;
3. :meth:`~Transaction.claim` claims rows against concurrent writers, who wait for them instead
   of computing them twice (:mod:`featpipe.cache.claims`);
4. :meth:`~Transaction.writer` journals computed rows and seals them into shards
   (:mod:`featpipe.cache.journals`);
5. :meth:`~Transaction.commit` writes the entry from the shards: one atomic rename
   (:mod:`featpipe.cache.commit`).

A run killed between any two steps loses at most the batch in flight: the next run's
:meth:`~Transaction.recover` seals what its journals hold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from featpipe.cache.claims import Claim, claim_rows
from featpipe.cache.commit import commit
from featpipe.cache.entry import Header, parts_dir
from featpipe.cache.fingerprints import Contents
from featpipe.cache.index import ShardIndex, Stored, read_index, transient
from featpipe.cache.journals import ShardWriter, recover_orphans
from featpipe.cache.key import KeyFields
from featpipe.data.datasets import Dataset, Item


class Transaction:
    """The write of ``dataset``'s rows, ``dim`` features each under ``fields``, into ``entry``.

    ``contents`` holds the files' fingerprints, read once for the whole run: every step
    compares rows with the same content.
    """

    def __init__(
        self, entry: Path, dataset: Dataset, fields: KeyFields, dim: int, contents: Contents
    ) -> None:
        self.entry, self.dataset, self.fields, self.dim = entry, dataset, fields, dim
        self.contents = contents
        self.parts = parts_dir(entry)
        self.parts.mkdir(parents=True, exist_ok=True)
        # What pending() read and found, for commit() to extend rather than repeat: shards are
        # immutable, and a stored row found once is found again.
        self._index: ShardIndex | None = None
        self._found: dict[str, Stored] = {}

    def recover(self) -> int:
        """Seal the journals of writers that are gone; returns how many."""
        return recover_orphans(self.parts)

    def pending(self) -> list[Item]:
        """Items with no stored row for their current content, and no lasting skip: files
        skipped for a reason that may pass (permissions, I/O errors) are tried again on every
        run."""
        index = self._index = read_index(self.parts, self._index)
        pending = []
        items = self.dataset.items
        looked_up = index.lookup_all(items, self.contents)
        for item, (stored, reason) in zip(items, looked_up, strict=True):
            if stored is not None:
                self._found[item.relpath] = stored
            elif reason is None or transient(reason):
                pending.append(item)
        return pending

    def claim(self, items: list[Item], skip_claimed: bool = True) -> tuple[list[Item], Claim]:
        """The items this writer computes, and its claim on them (release it once they are
        sealed). Without ``skip_claimed`` it claims them all: torchrun ranks split their rows
        among themselves beforehand."""
        claim = claim_rows(self.parts, [i.relpath for i in items], skip_claimed)
        return [i for i in items if i.relpath in claim.mine], claim

    def writer(self, rank: int = 0, shard_rows: int = 8192) -> ShardWriter:
        """A journal for computed rows; use it as a context manager (it seals on the way out)."""
        return ShardWriter(
            self.parts,
            self.dim,
            self.fields.dtype,
            self.fields.digest,
            self.contents,
            rank=rank,
            shard_rows=shard_rows,
        )

    def commit(self, provenance: dict[str, Any]) -> Header:
        """Write the entry from every shard now on disk; returns its header."""
        index = read_index(self.parts, self._index)
        found = self._found if index is self._index else {}  # read again whole: look again
        return commit(
            self.entry, self.dataset, self.fields, index, self.contents, provenance, found
        )

"""Reuse rows across dataset names: a row depends on a file's content and the key, not on the
folder or manifest that named the file.

``fit data/elpv/labels.csv`` over the images already cached as the ImageFolder ``data/elpv``
has another dataset name, so another entry folder; without this it would run the backbone over
every image again. Before extracting, the pending files are looked up in every other entry of
the cache with the same key (same backbone stem and full key digest, another dataset folder):

* a candidate is a stored row with the same size and quick content fingerprint (first and last
  64 KiB) as the pending file;
* it is reused only when the file's full SHA-256, read now, equals the SHA-256 stored with the
  row: content, not path or mtime, decides. Reading a file is far cheaper than decoding it and
  running the backbone;
* the reused rows are copied (not referenced) into this entry's own journal and sealed into a
  shard like extracted rows: crash-safe by the same journal, and independent of the other
  entry, which may be removed or rebuilt at any time.

An entry that cannot be read is passed over: reuse saves time, it never fails an extract.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from featpipe.cache.entry import open_entry
from featpipe.cache.fingerprints import Contents
from featpipe.cache.journals import ShardWriter
from featpipe.data.datasets import Item
from featpipe.errors import FeatpipeError

READ_ROWS = 4096


@dataclass
class Reused:
    rows: int = 0
    sources: list[str] = field(default_factory=list)


def siblings(entry: Path, key: str) -> list[Path]:
    """Other datasets' entries with this entry's key."""
    return [
        other
        for other in sorted(entry.parent.parent.glob(f"*/{entry.name}"))
        if other.parent != entry.parent and _key(other) == key
    ]


def _key(entry: Path) -> str | None:
    try:
        with h5py.File(entry, "r") as f:
            return str(f.attrs.get("key", ""))
    except OSError:
        return None


def _matches(f: h5py.File, pending: list[Item], contents: Contents) -> list[tuple[int, Item]]:
    """``(row in f, item)`` for every pending item whose content a row of ``f`` was made from."""
    if "fingerprint" not in f or "sha256" not in f:
        return []  # an entry from before content fingerprints: nothing to prove sameness by
    stored: dict[tuple[int, str], list[tuple[int, str]]] = {}
    columns = zip(f["size"][:], f["fingerprint"].asstr()[:], f["sha256"].asstr()[:], strict=True)
    for row, (size, quick, sha) in enumerate(columns):
        if quick and sha:
            stored.setdefault((int(size), quick), []).append((row, sha))
    found = []
    for item in pending:
        candidates = stored.get((item.size, contents.quick.get(item.relpath, "")))
        if not candidates:
            continue
        sha = contents.hashes([item.relpath])[0]
        row = next((r for r, s in candidates if s == sha), None)
        if row is not None:
            found.append((row, item))
    return sorted(found, key=lambda pair: pair[0])


def copy_rows(
    others: list[Path], pending: list[Item], contents: Contents, writer: ShardWriter
) -> Reused:
    """Copy into ``writer`` the rows of ``pending`` files that the entries ``others`` hold."""
    reused = Reused()
    wanted = list(pending)
    for other in others:
        if not wanted:
            break
        try:
            with open_entry(other) as f:
                found = _matches(f, wanted, contents)
                for start in range(0, len(found), READ_ROWS):
                    block = found[start : start + READ_ROWS]
                    # h5py reads strictly increasing rows; two files may share one row.
                    rows, inverse = np.unique([row for row, _ in block], return_inverse=True)
                    feats = f["features"][rows.tolist()][inverse]
                    ok = np.isfinite(feats).all(axis=1)
                    items = [item for (_, item), good in zip(block, ok, strict=True) if good]
                    writer.append([i.row_id for i in items], feats[ok], [])
                    reused.rows += len(items)
        except (FeatpipeError, OSError, KeyError, ValueError):
            continue
        if found:
            reused.sources.append(str(other))
            done = {item.relpath for _, item in found}
            wanted = [i for i in wanted if i.relpath not in done]
    return reused

"""Augmented views as cached features: an entry of view rows, read with a view axis.

A views entry (``<backbone>-views-<key8>.h5``, beside the eval entry of the same images) is an
ordinary cache entry whose rows are views: row ``train/cat/1.png#view3`` is view 3 of
``train/cat/1.png``. Its key is the eval features' key plus the augmentation recipe, so it has
its own shards and journals, and everything the cache guarantees for rows (crash safety,
incremental extraction, torchrun, ``cache verify``) holds for views unchanged. The view count
is not in the key: growing K from 4 to 8 finds views 0–3 stored and computes 4–7.

Readers see N × K × D: :func:`load_views` and :func:`iter_views` place every image's K view
rows on a view axis. An image missing a view (its augmented pixels failed, or the entry was
written for fewer views) is left out and counted in ``meta["incomplete"]``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from featpipe.cache.entry import Features, _columns, _features, entry_meta, open_entry

# A view row's key in the cache: the image's relative path, this mark, the view index.
VIEW_MARK = "#view"


def view_name(relpath: str, view: int) -> str:
    """The cache row key of view ``view`` of the image at ``relpath``."""
    return f"{relpath}{VIEW_MARK}{view}"


def split_view_name(name: str) -> tuple[str, int]:
    """``relpath#view3`` → ``("relpath", 3)`` (the mark added last is the last one)."""
    relpath, _, view = name.rpartition(VIEW_MARK)
    return relpath, int(view)


def is_views_path(path: Path) -> bool:
    """Whether an entry file is a views entry, by its name ``<backbone>-views-<key8>.h5``."""
    parts = path.stem.rsplit("-", 2)
    return len(parts) == 3 and parts[1] == "views"


@dataclass
class _Layout:
    """Where each complete image's views are: ``rows[i, v]`` is the entry row of view v."""

    images: list[str]
    rows: np.ndarray  # [N, K] int64
    incomplete: int


def _layout(f: h5py.File, views: int | None) -> _Layout:
    names = f["relpath"].asstr()[:]
    found: dict[str, dict[int, int]] = {}
    for row, name in enumerate(names):
        relpath, view = split_view_name(name)
        found.setdefault(relpath, {})[view] = row
    k = views if views is not None else max((max(v) + 1 for v in found.values()), default=0)
    images, rows = [], []
    for relpath, by_view in found.items():
        if all(v in by_view for v in range(k)):
            images.append(relpath)
            rows.append([by_view[v] for v in range(k)])
    table = np.array(rows, dtype=np.int64).reshape(len(rows), k)
    return _Layout(images, table, len(found) - len(images))


def _read(path: Path, f: h5py.File, layout: _Layout, which: np.ndarray) -> Features:
    """The images ``which`` (ascending indices into ``layout``) as Features with a view axis."""
    rows = layout.rows[which]
    if len(which) == 0:
        dim = int(f.attrs["dim"])
        X = np.zeros((0, rows.shape[1], dim), f["features"].dtype)
        columns = _columns(f, slice(0, 0))
    else:
        first, last = int(rows.min()), int(rows.max()) + 1
        X = _features(path, f, slice(first, last))[rows - first]  # one contiguous read
        columns = _columns(f, rows[:, 0])  # an image's labels are those of its view rows
    return Features(
        X,
        **(columns | {"relpath": np.array([layout.images[i] for i in which], dtype=object)}),
        class_names=list(f["class_names"].asstr()[:]),
        task=str(f.attrs["task"]),
    )


def load_views(path: str | Path, views: int | None = None) -> Features:
    """Read a views entry into memory: ``X`` is N × K × D (K: ``views``, default all stored).

    ``relpath`` names the images (not their view rows); ``meta`` holds the entry's metadata
    plus ``views`` (K), ``augment`` (the recipe) and ``incomplete`` (images left out).
    """
    path = Path(path)
    with open_entry(path) as f:
        layout = _layout(f, views)
        features = _read(path, f, layout, np.arange(len(layout.images)))
        meta = entry_meta(f)
    meta |= {
        "views": layout.rows.shape[1],
        "augment": meta["key_fields"]["transform"]["views"],
        "incomplete": layout.incomplete,
    }
    features.meta = meta
    return features


def complete_images(path: str | Path, views: int) -> int:
    """How many images of a views entry have all ``views`` views."""
    with open_entry(path) as f:
        return len(_layout(f, views).images)


def iter_views(
    path: str | Path, images: int | None = None, views: int | None = None
) -> Iterator[Features]:
    """Stream a views entry in blocks of ``images`` images (N × K × D each): flat memory.

    Default block: about 8 MiB of features.
    """
    path = Path(path)
    with open_entry(path) as f:
        layout = _layout(f, views)
        k = max(1, layout.rows.shape[1])
        row_bytes = int(f.attrs["dim"]) * f["features"].dtype.itemsize * k
        step = images or max(1, (8 << 20) // max(1, row_bytes))
        for start in range(0, len(layout.images), step):
            which = np.arange(start, min(len(layout.images), start + step))
            yield _read(path, f, layout, which)

"""``fit --views``: the cached augmented views of the train rows, in train-row order.

The fit stage trains on views and selects and tests on the eval features, so the views must line
up with the train rows of the feature set (after ``--holdout`` moved some of them to val). They
are matched by image path. A train row whose views are missing (its augmented pixels failed to
decode, or it is new since the views were made and the entry was not refreshed) trains on its
eval features in every view slot, and the run records how many did.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from featpipe.cache.entry import Features, read_meta
from featpipe.extraction.views import ViewsResult
from featpipe.heads.views import TrainViews


def train_views(
    features: Features, result: ViewsResult, mode: str
) -> tuple[TrainViews, dict[str, Any]]:
    """The views of ``features``' train rows, and what the run records about them."""
    loaded = result.load()
    train = features.where("train")
    where = {p: i for i, p in enumerate(loaded.relpath)}
    k = loaded.X.shape[1]
    X = np.empty((len(train), k, train.X.shape[1]), np.float32)
    found = np.array([p in where for p in train.relpath], dtype=bool)
    if found.any():
        X[found] = loaded.X[[where[p] for p in train.relpath[found]]]
    X[~found] = train.X[~found, None, :]  # the eval view stands in for missing views
    record = {
        "count": k,
        "mode": mode,
        "augment": loaded.meta["augment"],
        "entry": str(result.entry),
        "key": read_meta(result.entry)["key"],
        "train_rows": len(train),
        "rows_without_views": int((~found).sum()),
    }
    return TrainViews(X, mode), record

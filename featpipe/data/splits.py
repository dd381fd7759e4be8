"""Deterministic, stratified train/val/test assignment for datasets without split folders.

Each item's place is decided by a hash of its relative path, ranked within its class. That makes
the split reproducible on any machine without a random seed to carry around, stratified (each
class gets its share), and stable as a dataset grows: adding images moves at most the one
boundary item per class instead of reshuffling everything, so an image seen in training rarely
slips into test on a rerun.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

DEFAULT_FRACTIONS: dict[str, float] = {"val": 0.15, "test": 0.15}


def _rank_key(relpath: str, salt: str = "") -> bytes:
    key = salt.encode("utf-8")  # b"": the dataset's own split, as it has always been drawn
    return hashlib.blake2b(relpath.encode("utf-8"), digest_size=8, key=key).digest()


def stratified_split(
    relpaths: Sequence[str],
    strata: Sequence[object],
    fractions: dict[str, float] | None = None,
    salt: str = "",
) -> list[str]:
    """Return ``'train'``, ``'val'`` or ``'test'`` for each path, stratified by ``strata``.

    ``strata`` is the class label for classification, or a binned target for regression.
    Classes too small to give every split one item keep the items in train first.
    ``salt`` draws another split of the same shares (repeated splits: ``--repeats``), as
    reproducibly and independently of row order as the default one.
    """
    fractions = DEFAULT_FRACTIONS if fractions is None else fractions
    if sum(fractions.values()) >= 1:
        raise ValueError("split fractions for val and test must sum to less than 1")
    groups: dict[object, list[int]] = defaultdict(list)
    for index, stratum in enumerate(strata):
        groups[stratum].append(index)
    out = ["train"] * len(relpaths)
    for members in groups.values():
        members.sort(key=lambda i: _rank_key(relpaths[i], salt))
        n = len(members)
        start = 0
        for split, fraction in fractions.items():
            count = round(n * fraction)
            if n - start - count < 1:  # never leave a class with no training example
                count = max(0, n - start - 1)
            for i in members[start : start + count]:
                out[i] = split
            start += count
    return out


HOLDOUT = 0.15


def hold_out(
    relpaths: Sequence[str], strata: Sequence[object], fraction: float = HOLDOUT, salt: str = ""
) -> list[bool]:
    """Which training items to hold out as validation data when a dataset has none.

    The fit stage (``--holdout``) and the fine-tune stage use this same rule, so a head fitted
    with a hold-out and then fine-tuned (LP-FT) is never validated on images it was trained on.
    ``salt``: another draw of the same share (see :func:`stratified_split`).
    """
    return [s == "val" for s in stratified_split(relpaths, strata, {"val": fraction}, salt)]


def regression_strata(targets: Sequence[float], bins: int = 5) -> list[int]:
    """Quantile bins of a numeric target, so that each split covers its whole range."""
    values = np.asarray(targets, dtype=np.float64)
    unique = np.unique(values)
    if len(unique) <= bins:
        return [int(np.searchsorted(unique, v)) for v in values]
    edges = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])
    return np.searchsorted(edges, values, side="right").tolist()

"""Soft labels: per-image class probabilities that replace an image's one-hot training target.

Where annotators doubt, a label is a probability, not a class: ELPV's experts gave each cell a
defect probability of 0, 1/3, 2/3 or 1, and its binary folders keep only which side of 0.5 it
fell on. Training on the probabilities (``finetune --soft-labels``) tells the network that a
1/3 cell is not as functional as a 0 cell, instead of pulling both to the same target.

The file is a CSV with a ``path`` column (relative to the dataset's root, as the dataset names
its images) and one column per class of the dataset, every class once, holding each image's
probabilities (non-negative, summing to 1). Images it does not list train on their one-hot
label; validation and test are always scored against the hard labels, which are what accuracy
counts. The file is read once, checked line by line, and identified by its SHA-256, which the
run records (so a resume with another file is refused).
"""

from __future__ import annotations

import csv
import hashlib
import math
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featpipe.data.datasets import Dataset, Item
from featpipe.errors import ArgumentError

PARAM = "soft_labels"
SUM_TOLERANCE = 1e-3  # probabilities written with 3 decimals (0.333, 0.667) still sum to 1


@dataclass(frozen=True)
class SoftLabels:
    """Parsed soft labels: each listed image's probabilities, in the dataset's class order."""

    sha256: str
    probabilities: dict[str, np.ndarray]  # relpath → float32 vector over the dataset's classes

    def targets(self, items: Sequence[Item], n_classes: int) -> np.ndarray:
        """One row of class probabilities per item: its soft label where the file lists it,
        else its one-hot label."""
        out = np.zeros((len(items), n_classes), dtype=np.float32)
        for row, item in enumerate(items):
            soft = self.probabilities.get(item.relpath)
            if soft is None:
                out[row, item.label] = 1.0
            else:
                out[row] = soft
        return out

    def covered(self, items: Sequence[Item]) -> int:
        """How many of ``items`` have a soft label."""
        return sum(item.relpath in self.probabilities for item in items)


def _refuse(path: Path, message: str) -> ArgumentError:
    return ArgumentError(PARAM, f"{path}: {message}")


def _probabilities(path: Path, line: int, values: list[str]) -> np.ndarray:
    try:
        numbers = [float(v) for v in values]
    except ValueError:
        raise _refuse(path, f"line {line}: {values} are not all numbers") from None
    if not all(math.isfinite(n) and n >= 0 for n in numbers):
        raise _refuse(path, f"line {line}: probabilities must be finite and 0 or more")
    if abs(sum(numbers) - 1.0) > SUM_TOLERANCE:
        raise _refuse(path, f"line {line}: the probabilities sum to {sum(numbers):g}, not 1")
    return np.asarray(numbers, dtype=np.float32)


def read_soft_labels(path: str | Path, dataset: Dataset) -> SoftLabels:
    """Read and check ``path`` against ``dataset``: a classification, whose every class the
    header names once, and whose images are the rows (each once)."""
    path = Path(path)
    if dataset.task != "classification":
        raise _refuse(
            path,
            f"soft labels are class probabilities, and {dataset.root} is not a "
            "classification; leave them off",
        )
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise _refuse(
            path, f"cannot read it ({exc.strerror or exc}); pass a CSV path,<class>,…"
        ) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _refuse(path, "is not UTF-8 text; pass a CSV path,<class>,…") from None
    reader = csv.reader(text.splitlines())
    header = [h.strip() for h in next(reader, [])]
    classes = header[1:]
    if not header or header[0] != "path" or sorted(classes) != sorted(dataset.class_names):
        raise _refuse(
            path,
            f"header {header}: write path, then each of the dataset's classes "
            f"{dataset.class_names} once",
        )
    order = [classes.index(name) for name in dataset.class_names]
    known = {item.relpath for item in dataset.items}
    probabilities: dict[str, np.ndarray] = {}
    for line, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise _refuse(path, f"line {line}: {len(row)} values for {len(header)} columns")
        relpath = posixpath.normpath(row[0].strip())
        if relpath not in known:
            raise _refuse(
                path,
                f"line {line}: {row[0]} is not an image of {dataset.root} (paths are relative "
                "to the dataset's root)",
            )
        if relpath in probabilities:
            raise _refuse(path, f"line {line}: {row[0]} is listed twice; keep one row per image")
        probabilities[relpath] = _probabilities(path, line, row[1:])[order]
    if not probabilities:
        raise _refuse(path, "lists no images; add rows path,<probabilities>")
    return SoftLabels(hashlib.sha256(raw).hexdigest(), probabilities)

"""Fitting on a cache entry larger than memory: statistics, training and scoring in chunks.

``fit`` loads the whole N×D matrix when the train features fit the memory budget (by default
half of the memory available when it starts). Above it, the entry stays on disk and is read in
blocks (:func:`featpipe.cache.entry.read_spans`), only the labels, splits and paths (N values
each) in memory:

* preprocessing statistics in one streaming pass over the train rows (standardise: mean and
  standard deviation merged block by block in float64; L2 normalisation is per row; PCA from the
  streamed covariance, one more pass);
* torch heads train from shuffled chunks: every epoch fills each block with runs of rows drawn
  at random (from the seed) across the entry, shuffles the rows within the block, then cuts
  minibatches of the usual size (the stacked trainer is the in-memory one, fed by
  :class:`ChunkBatches`);
* ridge from the streamed ``XᵀX`` and ``XᵀY`` (one pass, then one eigendecomposition for every
  ``alpha``: :func:`featpipe.heads.paths.ridge_path_gram`);
* k-NN with nothing to train: its bank is the entry's train rows, read block by block and
  preprocessed as they are searched (:class:`StreamedKNN`); a (k, T) grid shares one search of
  the largest k per block of queries (:func:`featpipe.heads.fitted.decision_functions`), and the
  saved head's bank is written to ``head.safetensors`` block by block;
* validation and test are scored block by block (every head in one pass per split; a k-NN head
  reads its bank once per block of queries).

scikit-learn heads that need every row at once (logreg, linearsvc) are refused before any
work, with the budget named. Selection uses the val split (cross-validation would read the entry
``k`` times per config), and few-shot curves need the features in memory.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from featpipe.cache.entry import FeatureSet, entry_header, load_columns, read_spans
from featpipe.errors import ArgumentError
from featpipe.heads.config import HeadConfig
from featpipe.heads.fitted import CosineKNN, FittedHead, linear_modules, path_groups
from featpipe.heads.paths import balanced_weights, ridge_path_gram, ridge_targets
from featpipe.heads.preprocess import Preprocessor, moments
from featpipe.heads.rows import Batch
from featpipe.heads.stacked import target_scaling, train_sources, training_targets
from featpipe.heads.tensorfile import TensorBlocks
from featpipe.protocols.knn import nearest_neighbours

# Without a budget: this share of the memory available when fit starts.
DEFAULT_SHARE = 0.5
# A streamed block is at most this share of the budget: the block, its selected rows, their
# preprocessed copy and the minibatch buffer all live at once.
BLOCK_SHARE = 0.25
# A shuffled epoch builds each block from this many runs of consecutive rows drawn at random
# from across the entry. Rows are stored in dataset order (an ImageFolder tree: class by
# class), so a block read in one piece holds one or two classes, and its minibatches are no
# sample of the data: at a 4 MiB budget on Fashion-MNIST that cost 1.2 points of accuracy
# (benchmarks/bench_streaming.py). Each run is one h5py read of the entry's virtual dataset
# (about 0.6 ms): at that 4 MiB budget runs are 3 rows and reading makes the streamed fit 9x
# slower than in memory; under budgets of GiBs runs are hundreds of rows and reads cost little.
RUNS_PER_BLOCK = 64
STREAMABLE = ("linear", "mlp", "ridge", "knn")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str | int) -> int:
    """``512M``, ``2G``, ``1.5GiB``, ``300000000`` → bytes (binary units)."""
    if isinstance(text, int):
        size = text
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", text.lower())
        if not match:
            raise ArgumentError("memory_budget", f"{text}: write a size, e.g. 512M or 8G")
        size = int(float(match[1]) * _UNITS[match[2]])
    if size <= 0:
        raise ArgumentError("memory_budget", f"{text}: must be a positive size, e.g. 512M")
    return size


def available_memory() -> int:
    """Bytes of memory available now (physical memory where the system cannot say)."""
    try:
        pages = os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError):
        pages = os.sysconf("SC_PHYS_PAGES")
    return int(pages * os.sysconf("SC_PAGE_SIZE"))


def resolve_budget(memory_budget: str | int | None) -> int:
    return (
        int(DEFAULT_SHARE * available_memory())
        if memory_budget is None
        else parse_size(memory_budget)
    )


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


@dataclass
class StreamedFeatures(FeatureSet):
    """An entry whose train features exceed the budget: columns in memory, features on disk.

    Has what :class:`~featpipe.cache.entry.Features` has but ``X``; the sweep and the fit stage
    (hold-out, run records) read only these columns, and the features through :meth:`blocks`.
    """

    entry: Path
    labels: np.ndarray
    targets: np.ndarray
    split: np.ndarray
    relpath: np.ndarray
    class_names: list[str]
    task: str
    dim: int
    budget: int
    block_rows: int
    meta: dict[str, Any] = field(default_factory=dict)

    in_memory = False

    def blocks(self, mask: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Blocks of at most ``block_rows`` rows read from the entry (those holding none of
        ``mask`` are not read)."""
        n, rows = len(self.split), self.block_rows
        spans = [(s, min(n, s + rows)) for s in range(0, n, rows) if mask[s : s + rows].any()]
        yield from self._read(spans, mask)

    def check_finite(self) -> None:
        """Nothing to check before reading: every block is checked as it is read."""

    def shuffled(
        self, mask: np.ndarray, gen: torch.Generator
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The rows in ``mask`` in blocks of at most ``block_rows``, each block made of
        :data:`RUNS_PER_BLOCK` runs of consecutive rows (fewer, of one row, for blocks smaller than
        that) drawn by ``gen`` from across the entry; a block's runs are read in file order."""
        n = len(self.split)
        runs = min(RUNS_PER_BLOCK, self.block_rows)
        run = self.block_rows // runs
        starts = [s for s in range(0, n, run) if mask[s : s + run].any()]
        order = torch.randperm(len(starts), generator=gen).tolist()
        blocks = [
            sorted(starts[i] for i in order[f : f + runs]) for f in range(0, len(order), runs)
        ]
        # one open file for the epoch: opening an entry checks its shards
        parts = self._read([(s, min(n, s + run)) for block in blocks for s in block], mask)
        for block in blocks:
            got = [next(parts) for _ in block]
            yield np.concatenate([X for X, _ in got]), np.concatenate([r for _, r in got])

    def _read(
        self, spans: list[tuple[int, int]], mask: np.ndarray
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for (start, stop), X in zip(spans, read_spans(self.entry, spans), strict=True):
            keep = mask[start:stop]
            rows = np.flatnonzero(keep) + start
            X = X[keep]
            self._refuse_nonfinite(X, rows)
            yield X, rows


def open_streamed(entry: Path, budget: int) -> StreamedFeatures | None:
    """The entry as :class:`StreamedFeatures` when its train features exceed ``budget`` bytes,
    else None (load it). Train means every row marked train (a hold-out takes val from them)."""
    columns = load_columns(entry)
    dim = entry_header(entry)[1]
    if int((columns.split == "train").sum()) * dim * 4 <= budget:
        return None
    return StreamedFeatures(
        entry,
        columns.labels,
        columns.targets,
        columns.split,
        columns.relpath,
        columns.class_names,
        columns.task,
        dim,
        budget,
        max(1, int(budget * BLOCK_SHARE) // (4 * dim)),
        columns.meta,
    )


def train_bytes(features: StreamedFeatures) -> int:
    return int((features.split == "train").sum()) * features.dim * 4


def refuse_unstreamable(features: StreamedFeatures, configs: list[HeadConfig]) -> None:
    """One line naming the budget, before any work, for heads that need every row at once."""
    bad = sorted({c.head for c in configs if c.head not in STREAMABLE})
    if bad:
        raise ArgumentError(
            "memory_budget",
            f"{human(features.budget)}: the train features ({human(train_bytes(features))}) "
            f"exceed it, and {', '.join(bad)} cannot learn from chunks; raise the budget or fit "
            f"{', '.join(STREAMABLE)}",
        )


def fit_preprocessor(
    features: StreamedFeatures, mask: np.ndarray, standardize: bool, l2norm: bool, pca: int
) -> Preprocessor:
    """:meth:`Preprocessor.fit` on the rows in ``mask``, streamed (a second pass for PCA)."""
    dim = features.dim
    mean, scale = np.zeros(dim), np.ones(dim)
    if standardize:
        mean, scale = moments((X for X, _ in features.blocks(mask)), dim)
    scale[scale < 1e-8] = 1.0
    arrays = {"mean": mean.astype(np.float32), "scale": scale.astype(np.float32)}
    pre = Preprocessor(standardize, l2norm, pca, arrays=arrays)
    if pca:
        base = Preprocessor(standardize, l2norm, 0, arrays=dict(arrays))
        total, gram, n = np.zeros(dim), np.zeros((dim, dim)), 0
        for X, _ in features.blocks(mask):
            Z = base.transform(X).astype(np.float64)
            total += Z.sum(axis=0)
            gram += Z.T @ Z
            n += len(Z)
        center = total / n
        _, vectors = np.linalg.eigh(gram - n * np.outer(center, center))
        pre.arrays["pca_center"] = center.astype(np.float32)
        pre.arrays["pca_components"] = np.ascontiguousarray(vectors[:, ::-1][:, :pca], np.float32)
    return pre


@dataclass
class ChunkBatches:
    """A split streamed for the stacked trainer (:class:`featpipe.heads.rows.Batches`)."""

    features: StreamedFeatures
    mask: np.ndarray
    pre: Preprocessor
    y: torch.Tensor  # the training targets of the rows in mask, in row order

    def __post_init__(self) -> None:
        self.position = np.cumsum(self.mask) - 1  # row number → index into y

    @property
    def dim(self) -> int:
        return self.pre.pca or self.features.dim

    def _block(self, X: np.ndarray, rows: np.ndarray) -> Batch:
        return torch.from_numpy(self.pre.transform(X)), self.y[self.position[rows]]

    def epoch(self, gen: torch.Generator, batch: int, steps: int) -> Iterator[Batch]:
        """Blocks of runs drawn by ``gen`` (:meth:`StreamedFeatures.shuffled`), rows shuffled
        within each block by ``gen``."""
        X_buf, y_buf = torch.empty(0, self.dim), self.y[:0]
        made = 0
        for X, rows in self.features.shuffled(self.mask, gen):
            within = torch.randperm(len(rows), generator=gen)
            Xb, yb = self._block(X, rows)
            X_buf, y_buf = torch.cat([X_buf, Xb[within]]), torch.cat([y_buf, yb[within]])
            while len(y_buf) >= batch and made < steps:
                yield X_buf[:batch], y_buf[:batch]
                X_buf, y_buf = X_buf[batch:], y_buf[batch:]
                made += 1
        if made < steps and len(y_buf):
            yield X_buf, y_buf

    def blocks(self) -> Iterator[Batch]:
        for X, rows in self.features.blocks(self.mask):
            yield self._block(X, rows)


def _ridge(
    configs: list[HeadConfig],
    features: StreamedFeatures,
    mask: np.ndarray,
    pre: Preprocessor,
    n_classes: int,
) -> list[nn.Module]:
    """Ridge along ``alpha`` from the streamed, weighted ``XᵀX`` and ``XᵀY``."""
    y = features.y
    weights = np.ones(len(y))
    classes = None
    if n_classes:
        classes = np.unique(y[mask])
        if configs[0].class_weight == "balanced":
            weights[mask] = balanced_weights(y[mask])
    dim = pre.pca or features.dim
    width = 1 if not n_classes or len(classes) == 2 else len(classes)
    sw, sx, sy = 0.0, np.zeros(dim), np.zeros(width)
    gram, cross = np.zeros((dim, dim)), np.zeros((dim, width))
    for X, rows in features.blocks(mask):
        Z = pre.transform(X).astype(np.float64)
        Y = ridge_targets(y[rows], classes)[0] if n_classes else y[rows][:, None]
        w = weights[rows]
        sw += w.sum()
        sx += w @ Z
        sy += w @ Y
        Zw = Z * w[:, None]
        gram += Zw.T @ Z
        cross += Zw.T @ Y
    x_mean, y_mean = sx / sw, sy / sw
    solutions = ridge_path_gram(
        gram - sw * np.outer(x_mean, x_mean),
        cross - sw * np.outer(x_mean, y_mean),
        x_mean,
        y_mean,
        [c.alpha for c in configs],
    )
    return linear_modules(solutions, classes, n_classes)


@dataclass(frozen=True)
class StreamedBank:
    """The rows in ``mask`` of a streamed entry as a k-NN bank: read block by block,
    preprocessed and scaled to unit length as :func:`~featpipe.heads.fitted.knn_modules` makes
    a bank in memory (the same rows, the same arithmetic)."""

    features: StreamedFeatures
    mask: np.ndarray
    pre: Preprocessor

    @property
    def size(self) -> int:
        return int(self.mask.sum())

    def blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(unit rows, labels)`` blocks; a regression bank's labels are zeros (the search
        reads the rows, the head their targets)."""
        classes = self.features.task == "classification"
        for X, rows in self.features.blocks(self.mask):
            Z = torch.from_numpy(self.pre.transform(X)).float()
            labels = self.features.y[rows] if classes else np.zeros(len(rows), np.int64)
            yield nn.functional.normalize(Z, dim=1).numpy(), labels


class StreamedKNN(CosineKNN):
    """A k-NN head whose bank stays on disk (:class:`StreamedBank`): it scores as the
    :class:`~featpipe.heads.fitted.CosineKNN` fitted on the same rows in memory, searching the
    bank block by block, and is saved as that head (its bank written block by block), so a run
    reads it back as an ordinary k-NN head."""

    def __init__(self, bank: StreamedBank, k: int, n_classes: int, temperature: float) -> None:
        y = bank.features.y[bank.mask]
        targets = torch.as_tensor(y, dtype=torch.long if n_classes else torch.float32)
        empty = torch.empty(0, bank.pre.pca or bank.features.dim)
        super().__init__(empty, targets, k, n_classes, temperature, normalized=True)
        self.streamed = bank

    @property
    def size(self) -> int:
        return self.streamed.size

    @property
    def source(self) -> object:
        return self.streamed

    def bank_blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return self.streamed.blocks()

    def nearest(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        found = nearest_neighbours(x.numpy(), self.bank_blocks(), self.width)
        return torch.from_numpy(found.similarities), torch.from_numpy(found.rows)

    def saved_state(self) -> dict[str, torch.Tensor | TensorBlocks]:
        dim = self.bank.shape[1]
        bank = TensorBlocks(
            (self.size, dim), np.dtype(np.float32), lambda: (Z for Z, _ in self.bank_blocks())
        )
        return {"bank": bank, "targets": self.targets}


def _knn(
    configs: list[HeadConfig],
    features: StreamedFeatures,
    mask: np.ndarray,
    pre: Preprocessor,
    n_classes: int,
) -> list[nn.Module]:
    """k-NN heads that differ in ``k`` and ``temperature``, over one bank on disk."""
    bank = StreamedBank(features, mask, pre)
    return [StreamedKNN(bank, c.k, n_classes, c.temperature) for c in configs]


def fit_heads(configs: list[HeadConfig], features: StreamedFeatures) -> list[FittedHead]:
    """:func:`featpipe.heads.fitted.fit_heads` on the train split, streamed (val for curves)."""
    refuse_unstreamable(features, configs)
    task, names = features.task, features.class_names
    n_out = len(names) if task == "classification" else 0
    train, val = features.split == "train", features.split == "val"
    y_train = features.y[train]
    fitted: list[FittedHead | None] = [None] * len(configs)
    by_pre: dict[tuple, list[int]] = {}
    for i, c in enumerate(configs):
        by_pre.setdefault(c.preprocessing(), []).append(i)
    for (standardize, l2norm, pca), members in by_pre.items():
        pre = fit_preprocessor(features, train, standardize, l2norm, pca)
        torch_ids = [i for i in members if configs[i].is_torch]
        if torch_ids:
            shift, scale = target_scaling(y_train, n_out)
            rows = ChunkBatches(
                features, train, pre, training_targets(y_train, n_out, shift, scale)
            )
            held = None
            if val.any():
                targets = training_targets(features.y[val], n_out, shift, scale)
                held = ChunkBatches(features, val, pre, targets)
            trained = train_sources(
                [configs[i] for i in torch_ids], rows, held, n_out, shift, scale
            )
            for i, t in zip(torch_ids, trained, strict=True):
                fitted[i] = FittedHead(
                    configs[i], pre, t.module, names, task, features.dim, t.history,
                    t.best_epoch, t.seconds,
                )  # fmt: skip
        others = [i for i in members if not configs[i].is_torch]
        for group in path_groups([configs[i] for i in others]):
            ids = [others[j] for j in group]
            start = time.perf_counter()
            fit = _knn if configs[ids[0]].head == "knn" else _ridge
            modules = fit([configs[i] for i in ids], features, train, pre, n_out)
            seconds = (time.perf_counter() - start) / len(ids)
            for i, module in zip(ids, modules, strict=True):
                fitted[i] = FittedHead(
                    configs[i], pre, module, names, task, features.dim, fit_seconds=seconds
                )
    return [f for f in fitted if f is not None]

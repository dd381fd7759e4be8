"""Feature preprocessing fitted on the training split only: standardise, L2-normalise, PCA.

Stored as plain arrays (mean, scale, projection), so a saved head needs no pickle, and expressed
as torch operations, so an exported model applies exactly the same arithmetic.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

# Rows are preprocessed this many float32 bytes at a time (4 MiB): each temporary is a block,
# whatever the size of the matrix, and a block is large enough for numpy's loops to run at speed.
BLOCK_BYTES = 4 << 20


@dataclass(frozen=True)
class Rows:
    """Some rows of a matrix, by index, gathered a block at a time.

    A split of an in-memory feature set is handed to the heads this way: the preprocessing reads
    it block by block and writes the one array the heads train on, so the split is never copied
    first (with a raw copy of train and val beside its transformed one, a fit held 3× its
    matrix).
    """

    matrix: np.ndarray
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index), *self.matrix.shape[1:])

    def gather(self) -> np.ndarray:
        """The rows as one array (a copy)."""
        return self.matrix[self.index]


Matrix = np.ndarray | Rows  # what a preprocessor fits on and transforms


def row_blocks(X: Matrix) -> Iterator[np.ndarray]:
    """``X`` in blocks of about :data:`BLOCK_BYTES` as float32, in order (views of an array,
    gathered copies of :class:`Rows`)."""
    step = max(1, BLOCK_BYTES // (4 * int(np.prod(X.shape[1:]))))
    for start in range(0, len(X), step):
        stop = start + step
        yield X.matrix[X.index[start:stop]] if isinstance(X, Rows) else X[start:stop]


def moments(blocks: Iterable[np.ndarray], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (float64) of rows that arrive block by block: Chan et al.'s
    pairwise merge of block means and squared deviations, so no float64 copy of all the rows is
    made (in memory or streamed from the cache alike)."""
    count, mean, m2 = 0, np.zeros(dim), np.zeros(dim)
    for X in blocks:
        block = X.astype(np.float64)
        block_mean = block.mean(axis=0)
        delta, total = block_mean - mean, count + len(block)
        mean = mean + delta * len(block) / total
        m2 += ((block - block_mean) ** 2).sum(axis=0) + delta**2 * count * len(block) / total
        count = total
    return mean, np.sqrt(m2 / count) if count else np.ones(dim)


@dataclass
class Preprocessor:
    """``x → ((x − mean) / scale) → L2-normalise? → PCA?``, with parameters from train."""

    standardize: bool = True
    l2norm: bool = False
    pca: int = 0
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def fit(self, X: Matrix) -> Preprocessor:
        """Fit the parameters on ``X`` (the training rows), block by block."""
        dim = X.shape[1]
        mean, scale = (
            moments(row_blocks(X), dim) if self.standardize else (np.zeros(dim), np.ones(dim))
        )
        scale[scale < 1e-8] = 1.0  # constant features stay constant instead of exploding
        self.arrays = {"mean": mean.astype(np.float32), "scale": scale.astype(np.float32)}
        if self.pca:
            Z = replace(self, pca=0).transform(X)
            center = Z.mean(axis=0)
            Z -= center
            _, _, vt = np.linalg.svd(Z, full_matrices=False)
            self.arrays["pca_center"] = center.astype(np.float32)
            self.arrays["pca_components"] = np.ascontiguousarray(vt[: self.pca].T, np.float32)
        return self

    def transform(self, X: Matrix) -> np.ndarray:
        """``X`` preprocessed, as one new float32 array, written block by block (the input is
        never copied whole, and no temporary is larger than a block)."""
        out = np.empty((len(X), self.pca or X.shape[1]), np.float32)
        start = 0
        for block in row_blocks(X):
            Z = (np.asarray(block, dtype=np.float32) - self.arrays["mean"]) / self.arrays["scale"]
            if self.l2norm:
                Z = Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)
            if self.pca:
                Z = (Z - self.arrays["pca_center"]) @ self.arrays["pca_components"]
            out[start : start + len(Z)] = Z
            start += len(Z)
        return out

    def to_module(self) -> nn.Module:
        return PreprocessModule(self)


class PreprocessModule(nn.Module):
    """The same arithmetic as :meth:`Preprocessor.transform`, for export."""

    def __init__(self, pre: Preprocessor) -> None:
        super().__init__()
        self.l2norm = pre.l2norm
        self.pca = bool(pre.pca)
        for name, value in pre.arrays.items():
            self.register_buffer(name, torch.from_numpy(np.ascontiguousarray(value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.mean) / self.scale
        if self.l2norm:
            z = z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)
        if self.pca:
            z = (z - self.pca_center) @ self.pca_components
        return z

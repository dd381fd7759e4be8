"""Where a stacked trainer's rows come from: the :class:`Batches` protocol and its in-memory source.

The trainer (:mod:`featpipe.heads.stacked`) draws minibatches from a :class:`Batches` source and
never asks where the rows live: tensors in memory (:class:`InMemory`), augmented views
(:class:`~featpipe.heads.views.ViewRows`), a cache entry read in chunks
(:class:`~featpipe.fitting.streaming.ChunkBatches`), or any of these copied to the training
device a minibatch at a time (:class:`~featpipe.heads.placement.Streamed`). The protocol lives
here, below both the trainer and the placement that wraps its sources, so neither imports the
other's internals.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch

EVAL_CHUNK = 8192  # rows per block when a split is evaluated

Batch = tuple[torch.Tensor, torch.Tensor]  # features [B, D], targets [B]


class Batches(Protocol):
    """Where a trainer's rows come from: arrays in memory, or a cache entry read in chunks."""

    y: torch.Tensor  # every row's target, in row order (class weights and sizes read it)
    dim: int

    def epoch(self, gen: torch.Generator, batch: int, steps: int) -> Iterator[Batch]:
        """``steps`` minibatches of ``batch`` rows (the last may be short), shuffled by ``gen``."""
        ...

    def blocks(self) -> Iterator[Batch]:
        """Every row once, in order, in blocks (for evaluation)."""
        ...


@dataclass
class InMemory:
    """Rows held as tensors: one permutation of all rows per epoch."""

    X: torch.Tensor
    y: torch.Tensor

    @property
    def dim(self) -> int:
        return self.X.shape[1]

    def epoch(self, gen: torch.Generator, batch: int, steps: int) -> Iterator[Batch]:
        order = torch.randperm(len(self.y), generator=gen).to(self.X.device)
        for s in range(steps):
            idx = order[s * batch : (s + 1) * batch]
            yield self.X[idx], self.y[idx]

    def blocks(self) -> Iterator[Batch]:
        for s in range(0, len(self.y), EVAL_CHUNK):
            yield self.X[s : s + EVAL_CHUNK], self.y[s : s + EVAL_CHUNK]

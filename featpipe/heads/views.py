"""Training rows drawn from cached augmented views (``fit --views``).

A torch head trained on views sees, in every epoch, one randomly drawn view of each training
image (``random``: the epoch has N rows, as without views), all K of them (``all``: K·N rows,
K times the steps), or view ``e mod K`` in epoch ``e`` (``epoch``: with K ≥ epochs every epoch
sees fresh augmentations, which is what live augmentation computes, since the backbone is frozen
and in eval mode: a replay of the dinov2-style probe). Selection and test stay on the eval
features. scikit-learn heads have no
epochs: they take every view as an extra row (:func:`with_view_rows`).

In ``random`` mode the minibatch order is drawn exactly as without views (the same permutation
from the trainer's generator); which view each image shows is drawn from a second generator
seeded from the trainer's state, without advancing it. So a fit whose views all equal the eval
features is the fit without views, head for head (a test holds it to that), and a fit with views
is as reproducible as one without.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from featpipe.errors import ArgumentError
from featpipe.heads.rows import EVAL_CHUNK

VIEW_MODES = ("random", "all", "epoch")


def check_view_mode(mode: str) -> None:
    if mode not in VIEW_MODES:
        raise ArgumentError("view_mode", f"{mode}: choose one of {', '.join(VIEW_MODES)}")


@dataclass
class TrainViews:
    """Augmented views of the training rows: ``X`` is N × K × D, row i of the train split."""

    X: np.ndarray
    mode: str = "random"

    def __post_init__(self) -> None:
        check_view_mode(self.mode)

    def transformed(self, transform: Callable[[np.ndarray], np.ndarray]) -> TrainViews:
        """The views through a row transform (the head's preprocessing)."""
        n, k, d = self.X.shape
        return TrainViews(transform(self.X.reshape(n * k, d)).reshape(n, k, -1), self.mode)

    def take(self, rows: np.ndarray) -> TrainViews:
        """The views of some training rows (a cross-validation fold, a few-shot draw)."""
        return TrainViews(self.X[rows], self.mode)


@dataclass
class ViewRows:
    """A :class:`~featpipe.heads.rows.Batches` source over views ``V`` [N, K, D]."""

    V: torch.Tensor
    targets: torch.Tensor  # one per image
    mode: str
    # ``epoch`` mode: the trainer's generator of the current group and the epochs it has run
    # (each group of heads trains with a generator of its own, so a new one restarts at view 0)
    _group: torch.Generator | None = None
    _epochs: int = 0

    @property
    def y(self) -> torch.Tensor:
        """Every row's target: one row per image (``random``), K per image (``all``)."""
        k = self.V.shape[1]
        return self.targets.repeat_interleave(k) if self.mode == "all" else self.targets

    @property
    def dim(self) -> int:
        return self.V.shape[2]

    def epoch(self, gen: torch.Generator, batch: int, steps: int) -> Iterator[tuple]:
        n, k = self.V.shape[:2]
        if self.mode == "all":
            flat, y = self.V.reshape(n * k, -1), self.y
            order = torch.randperm(n * k, generator=gen)
            for s in range(steps):
                idx = order[s * batch : (s + 1) * batch]
                yield flat[idx], y[idx]
            return
        if self.mode == "epoch":
            if gen is not self._group:
                self._group, self._epochs = gen, 0
            view = torch.full((n,), self._epochs % k, dtype=torch.long)
            self._epochs += 1
        else:
            draws = torch.Generator().manual_seed(_seed_of(gen))
            view = torch.randint(k, (n,), generator=draws)
        order = torch.randperm(n, generator=gen)
        for s in range(steps):
            idx = order[s * batch : (s + 1) * batch]
            yield self.V[idx, view[idx]], self.targets[idx]

    def blocks(self) -> Iterator[tuple]:
        flat, y = self.V.reshape(-1, self.dim), self.targets.repeat_interleave(self.V.shape[1])
        for s in range(0, len(y), EVAL_CHUNK):
            yield flat[s : s + EVAL_CHUNK], y[s : s + EVAL_CHUNK]


def _seed_of(gen: torch.Generator) -> int:
    """A seed that follows ``gen``'s state (new every epoch) without drawing from it."""
    state = gen.get_state().numpy().tobytes()
    return int.from_bytes(hashlib.blake2b(state, digest_size=8).digest(), "little") >> 1


def view_rows(V: np.ndarray, targets: torch.Tensor, mode: str) -> ViewRows:
    """The row source of preprocessed views ``V`` [N, K, D] and their images' targets."""
    return ViewRows(torch.from_numpy(np.ascontiguousarray(V)), targets, mode)


def with_view_rows(Z: np.ndarray, y: np.ndarray, V: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eval rows plus every view as an extra row (for heads without epochs)."""
    n, k, d = V.shape
    return np.concatenate([Z, V.reshape(n * k, d)]), np.concatenate([y, np.repeat(y, k)])

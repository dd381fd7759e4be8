"""Where the stacked torch heads train, and where their features live while they do.

``fit --device`` picks the device for a whole sweep: every torch head of every selection step
(validation split, CV folds, the refit, few-shot draws) trains there, while scikit-learn heads
stay on the CPU. The choice is held in a context variable (:func:`training_on`) rather than
passed through every layer of the sweep, the way ``torch.autocast`` holds a precision: the
trainer is the one place that reads it.

On CUDA the features go to the device once when they fit its budget (half the free device
memory), and every minibatch is then gathered there; otherwise they stay on the host and each
minibatch is copied over as it is drawn (the same rows in the same order, so the same heads).
On the CPU both are the arrays as they are: the results are today's, bit for bit.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import torch

from featpipe.heads.rows import Batch, Batches, InMemory

_DEVICE: ContextVar[torch.device | None] = ContextVar("heads_device", default=None)


@contextlib.contextmanager
def training_on(device: torch.device) -> Iterator[None]:
    """Train every stacked head inside the block on ``device``."""
    token = _DEVICE.set(device)
    try:
        yield
    finally:
        _DEVICE.reset(token)


def current() -> torch.device:
    """The device of the enclosing :func:`training_on` block; the CPU outside any."""
    return _DEVICE.get() or torch.device("cpu")


def budget(device: torch.device) -> int:
    """Bytes of features that may move to ``device``: half its free memory on CUDA (the heads,
    their optimizer state and the activations need the rest); no limit on the CPU, where the
    features already are."""
    if device.type != "cuda":
        return sys.maxsize
    free, _ = torch.cuda.mem_get_info(device)
    return free // 2


@dataclass
class Streamed:
    """Rows drawn where they live and copied to ``device`` one minibatch at a time."""

    source: Batches
    device: torch.device

    def __post_init__(self) -> None:
        self.y = self.source.y.to(self.device)  # targets are small: kept on the device

    @property
    def dim(self) -> int:
        return self.source.dim

    def _moved(self, batches: Iterator[Batch]) -> Iterator[Batch]:
        for X, y in batches:
            yield X.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def epoch(self, gen: torch.Generator, batch: int, steps: int) -> Iterator[Batch]:
        return self._moved(self.source.epoch(gen, batch, steps))

    def blocks(self) -> Iterator[Batch]:
        return self._moved(self.source.blocks())


def place(rows: Batches, device: torch.device, limit: int | None = None) -> Batches:
    """``rows`` for training on ``device``: resident there when in memory and within ``limit``
    bytes (default :func:`budget`), streamed otherwise. Placing placed rows changes nothing."""
    if isinstance(rows, Streamed):
        return rows
    if isinstance(rows, InMemory) and rows.X.device.type == device.type != "cpu":
        return rows  # placed already (a second look at the budget would count them twice)
    limit = budget(device) if limit is None else limit
    if isinstance(rows, InMemory) and rows.X.nbytes + rows.y.nbytes <= limit:
        return InMemory(rows.X.to(device), rows.y.to(device))
    return Streamed(rows, device)

"""k-NN classification on frozen features, the DINOv2 protocol: one neighbour search, every (k, T).

The definition is DINOv2's (facebookresearch/dinov2, ``dinov2/eval/knn.py``, ``KnnModule``):
features are L2-normalised, each query's ``max(k)`` most cosine-similar training rows are found
once, and for each k the score of class c is the sum, over the first k neighbours whose label is
c, of the vote weight ``exp(sim / T)`` normalised by a softmax. DINOv2's defaults are
k ∈ {10, 20, 100, 200} and T = 0.07; its few-shot variant draws ``n_per_class`` training rows per
class, seeded by the try (``filter_train``), and averages the accuracy over ``n_tries`` draws.

One difference, on purpose: DINOv2 takes the softmax over all ``max(k)`` neighbours and sums its
first k terms, so its scores for k < max(k) depend on which other k were asked for and do not sum
to one. Here the softmax runs over the k neighbours that vote, so every score row is a probability
vector (the calibration protocol can read it). The two differ by one positive factor per row:
the ranking of the classes, hence every top-1 and top-5 decision, is the same (the tests hold
both to a re-implementation of DINOv2's formula, row for row).

``T = inf`` is the uniform vote (every neighbour weighs 1/k, the rule of the ``knn`` head today
and of scikit-learn): it is the limit of ``exp(sim / T)`` as T grows (T → 0 is the other limit,
the nearest neighbour alone). Its votes are counted in whole numbers, so that two classes with
as many votes tie exactly, and the lower class index wins, as with ``argmax``.

The search runs in blocks of ``block_rows`` queries × ``block_rows`` bank rows, so memory is
bounded whatever the sizes, and the bank may arrive as an iterator of ``(features, labels)``
blocks (a streamed cache): the running top-k of every query is merged with each bank block's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from featpipe.errors import ArgumentError
from featpipe.protocols.arrays import at_least_one, features, labels, positive_ints

DINOV2_KS = (10, 20, 100, 200)
DINOV2_TEMPERATURE = 0.07
UNIFORM = math.inf  # the temperature of the uniform vote
BLOCK_ROWS = 4096  # a float32 similarity block of 4096 × 4096 is 64 MiB


@dataclass(frozen=True)
class Neighbours:
    """Each query's nearest bank rows, most similar first (arrays of shape queries × k).

    ``rows`` index the bank in the order its blocks arrived; ``labels`` are those rows' classes.
    """

    similarities: np.ndarray
    rows: np.ndarray
    labels: np.ndarray


def nearest_neighbours(
    queries: np.ndarray,
    bank: Iterable[tuple[np.ndarray, np.ndarray]],
    k: int,
    *,
    n_classes: int | None = None,
    block_rows: int = BLOCK_ROWS,
) -> Neighbours:
    """The ``k`` bank rows of highest cosine similarity to each query, in one pass over the bank.

    ``bank``: ``(features, labels)`` blocks, read once (``[(X, y)]`` for arrays in memory). The
    arithmetic runs in float64 when the queries are float64, else in float32.
    """
    q = features("queries", queries)
    k = at_least_one("k", k)
    block_rows = at_least_one("block_rows", block_rows)
    dtype = torch.float64 if q.dtype == np.float64 else torch.float32
    q_unit = _unit(q, dtype)
    best_sims = torch.full((len(q), k), -math.inf, dtype=dtype)
    best_rows = torch.full((len(q), k), -1, dtype=torch.long)
    bank_labels: list[np.ndarray] = []
    seen = 0
    for X, y in bank:
        X = features("bank", X)
        if X.shape[1] != q.shape[1]:
            raise ArgumentError("bank", f"has {X.shape[1]} dims but the queries {q.shape[1]}")
        bank_labels.append(labels("bank", y, len(X), n_classes))
        for start in range(0, len(X), block_rows):
            block = _unit(X[start : start + block_rows], dtype).T
            for first in range(0, len(q), block_rows):
                rows = slice(first, first + block_rows)
                top = (q_unit[rows] @ block).topk(min(k, block.shape[1]), dim=1)
                sims = torch.cat([best_sims[rows], top.values], dim=1)
                where = torch.cat([best_rows[rows], top.indices + (seen + start)], dim=1)
                best_sims[rows], pick = sims.topk(k, dim=1)
                best_rows[rows] = where.gather(1, pick)
        seen += len(X)
    if seen < k:
        raise ArgumentError("k", f"asks for {k} neighbours but the bank has {seen} rows")
    found = best_rows.numpy()
    return Neighbours(best_sims.numpy(), found, np.concatenate(bank_labels)[found])


def vote(
    similarities: torch.Tensor, labels: torch.Tensor, n_classes: int, temperature: float
) -> torch.Tensor:
    """Class scores (rows sum to one) from neighbours' similarities and labels (queries × k).

    Neighbour j weighs ``softmax(sim / T)_j`` (DINOv2's ``exp(sim / T)``, normalised); T = inf
    weighs each 1/k. In torch, so that a head's ``forward`` can vote the same way.
    """
    scores = similarities.new_zeros(similarities.shape[0], n_classes)
    if math.isinf(temperature):  # counted in whole numbers, so that equal counts tie exactly
        return scores.scatter_add_(1, labels, torch.ones_like(similarities)) / labels.shape[1]
    return scores.scatter_add_(1, labels, torch.softmax(similarities / temperature, dim=1))


@dataclass(frozen=True)
class KNNSweep:
    """Class scores for every (k, T) pair, from one neighbour search of width ``max(ks)``.

    Arrays indexed ``[i, j]`` are for ``ks[i]`` and ``temperatures[j]``.
    """

    neighbours: Neighbours
    n_classes: int
    ks: tuple[int, ...]
    temperatures: tuple[float, ...]

    def scores(self, k: int, temperature: float, rows: slice = slice(None)) -> np.ndarray:
        """Class scores (queries × classes, rows summing to one) of the first k neighbours."""
        if not 1 <= k <= self.neighbours.rows.shape[1]:
            raise ArgumentError("k", f"must be 1..{self.neighbours.rows.shape[1]}, got {k}")
        similarities = torch.from_numpy(self.neighbours.similarities[rows, :k])
        neighbour_labels = torch.from_numpy(self.neighbours.labels[rows, :k])
        return vote(similarities, neighbour_labels, self.n_classes, temperature).numpy()

    def ranked_classes(self, top: int = 1, block_rows: int = BLOCK_ROWS) -> np.ndarray:
        """The ``top`` highest-scoring classes of every query (ks × temperatures × queries × top).

        A tie goes to the lower class index, as ``argmax`` breaks it.
        """
        n = len(self.neighbours.rows)
        out = np.empty((len(self.ks), len(self.temperatures), n, top), dtype=np.int64)
        for first in range(0, n, block_rows):
            rows = slice(first, first + block_rows)
            for i, k in enumerate(self.ks):
                for j, temperature in enumerate(self.temperatures):
                    scores = self.scores(k, temperature, rows)
                    out[i, j, rows] = (
                        scores.argmax(axis=1)[:, None]
                        if top == 1
                        else np.argsort(-scores, axis=1, kind="stable")[:, :top]
                    )
        return out

    def predictions(self) -> np.ndarray:
        """The predicted class of every query (ks × temperatures × queries)."""
        return self.ranked_classes(1)[..., 0]

    def accuracy(self, y: np.ndarray, top: int = 1) -> np.ndarray:
        """Top-``top`` accuracy (ks × temperatures): the share of queries whose class is among
        their ``top`` best-scoring classes (DINOv2 reports top-1 and top-5)."""
        y = labels("y", y, len(self.neighbours.rows), self.n_classes)
        top = at_least_one("top", top)
        hits = (self.ranked_classes(top) == y[:, None]).any(axis=-1)
        return hits.mean(axis=-1)


def knn_sweep(
    queries: np.ndarray,
    bank: Iterable[tuple[np.ndarray, np.ndarray]],
    n_classes: int,
    ks: Sequence[int] = DINOV2_KS,
    temperatures: Sequence[float] = (DINOV2_TEMPERATURE,),
    *,
    block_rows: int = BLOCK_ROWS,
) -> KNNSweep:
    """The DINOv2 k-NN classifier for every (k, T) pair from one search of ``max(ks)`` neighbours.

    ``bank``: the training rows as ``(features, labels)`` blocks (``[(X, y)]`` for arrays in
    memory), read once; ``temperatures``: each > 0, ``UNIFORM`` (inf) for the uniform vote.
    """
    ks = positive_ints("ks", ks)
    temps = tuple(float(t) for t in temperatures)
    if not temps or not all(t > 0 for t in temps):  # also refuses NaN
        raise ArgumentError(
            "temperatures", f"must be > 0 (inf for the uniform vote), got {list(temperatures)}"
        )
    found = nearest_neighbours(queries, bank, max(ks), n_classes=n_classes, block_rows=block_rows)
    return KNNSweep(found, n_classes, ks, temps)


def few_shot_rows(y: np.ndarray, n_per_class: int, seed: int) -> np.ndarray:
    """DINOv2's few-shot draw (``filter_train``): per class, in class order, the first
    ``n_per_class`` of a random permutation of its rows (all of them if it has fewer), the
    permutation drawn by torch seeded with ``seed`` (a generator of its own: the global one is
    left alone)."""
    y = labels("y", y, len(np.asarray(y)))
    generator = torch.Generator().manual_seed(seed)
    picks = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        drawn = torch.randperm(len(members), generator=generator)[:n_per_class]
        picks.append(members[drawn.numpy()])
    return np.concatenate(picks)


@dataclass(frozen=True)
class FewShotKNN:
    """Few-shot k-NN accuracy for one ``n_per_class``: ``accuracy[t, i, j]`` is try t's top-k
    accuracy for ``ks[i]`` and ``temperatures[j]``."""

    n_per_class: int
    ks: tuple[int, ...]
    temperatures: tuple[float, ...]
    accuracy: np.ndarray

    @property
    def mean_accuracy(self) -> np.ndarray:
        """The accuracy averaged over the tries (ks × temperatures), as DINOv2 reports it."""
        return self.accuracy.mean(axis=0)


def few_shot_knn(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    queries: np.ndarray,
    query_labels: np.ndarray,
    n_classes: int,
    n_per_class: Sequence[int],
    n_tries: int = 1,
    ks: Sequence[int] = DINOV2_KS,
    temperatures: Sequence[float] = (DINOV2_TEMPERATURE,),
    *,
    top: int = 1,
    block_rows: int = BLOCK_ROWS,
) -> list[FewShotKNN]:
    """DINOv2's few-shot k-NN (``n_per_class_list``, ``n_tries``): for each ``n_per_class`` and
    try t, a bank of ``few_shot_rows(train_labels, n_per_class, seed=t)``, scored with the ks
    not above ``n_per_class`` and ``n_per_class`` itself (DINOv2's ``k_list``).

    The whole training set is :func:`knn_sweep` (DINOv2's ``n_per_class`` −1). The few-shot banks
    are small, so the training rows are taken in memory here.
    """
    X = features("train_features", train_features)
    y = labels("train_labels", train_labels, len(X), n_classes)
    n_tries = at_least_one("n_tries", n_tries)
    results = []
    for shots in positive_ints("n_per_class", n_per_class):
        k_list = tuple(sorted({k for k in positive_ints("ks", ks) if k <= shots} | {shots}))
        tries = []
        for seed in range(n_tries):
            rows = few_shot_rows(y, shots, seed)
            bank = [(X[rows], y[rows])]
            sweep = knn_sweep(queries, bank, n_classes, k_list, temperatures, block_rows=block_rows)
            tries.append(sweep.accuracy(query_labels, top))
        results.append(FewShotKNN(shots, k_list, sweep.temperatures, np.stack(tries)))
    return results


def _unit(X: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """Rows scaled to unit L2 norm (a zero row stays zero), as DINOv2's ``ModelWithNormalize``."""
    return torch.nn.functional.normalize(torch.from_numpy(X).to(dtype), dim=1)

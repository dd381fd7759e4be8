"""Class-based image retrieval on frozen features: recall@k and mAP@R.

Each query (a test image) ranks a gallery (the training rows, or the test rows themselves with
the query left out of its own gallery) by cosine similarity or L2 distance; a gallery row is a
positive when it has the query's class. The definitions are those of Musgrave, Belongie and Lim,
"A Metric Learning Reality Check" (ECCV 2020), as pytorch-metric-learning's
``AccuracyCalculator`` computes them:

* recall@k: the share of queries with at least one positive among their first k results
  (Song et al. 2016's "Recall@K", which Musgrave et al. call precision@1 for k = 1);
* mAP@R: with R the number of positives of the query in its gallery,
  ``AP@R = (1/R) Σ_{i=1..R} P(i)·rel(i)`` (P(i) the precision over the first i results, rel(i)
  whether result i is a positive), averaged over the queries.

A query without any positive in its gallery has neither, and is left out of both means (as
pytorch-metric-learning leaves out its "lone" queries); the result counts them. The result keeps
every scored query's own hit and AP@R: the means' intervals resample them, and two feature sets
are compared query by query (:mod:`featpipe.fitting.retrieval`). Equal distances
rank in gallery order, so the result does not depend on how a sort breaks ties. The queries are
scored in blocks of ``block_rows``: memory is about 16 bytes × ``block_rows`` × gallery rows.
Numpy only: no torch import.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from featpipe.errors import ArgumentError
from featpipe.protocols.arrays import at_least_one, features, labels, positive_ints

Metric = Literal["cosine", "l2"]
METRICS: tuple[Metric, ...] = ("cosine", "l2")


@dataclass(frozen=True)
class RetrievalScores:
    """Each scored query's own values and their means: ``hits[k]`` whether a positive is among
    its first k results, ``average_precision`` its AP@R; ``scored`` the scored queries' indices
    among the queries given, in order (what intervals resample and paired comparisons pair);
    ``without_positive`` the queries whose gallery holds no row of their class (not scored)."""

    hits: dict[int, np.ndarray]
    average_precision: np.ndarray
    scored: np.ndarray
    without_positive: int

    @property
    def recall(self) -> dict[int, float]:
        """recall@k for each k: the share of scored queries with a hit."""
        return {k: float(hit.mean()) for k, hit in self.hits.items()}

    @property
    def map_at_r(self) -> float:
        return float(self.average_precision.mean())

    @property
    def queries(self) -> int:
        """How many queries the scores rest on."""
        return len(self.scored)


def retrieval_scores(
    queries: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray | None = None,
    gallery_labels: np.ndarray | None = None,
    *,
    metric: Metric = "cosine",
    ks: Sequence[int] = (1, 5, 10),
    block_rows: int = 256,
) -> RetrievalScores:
    """recall@k for each k and mAP@R of ``queries`` against ``gallery``.

    Without a gallery, the gallery is the queries themselves, each query left out of its own
    (leave-one-out). ``metric``: ``cosine`` (rows L2-normalised, most similar first) or ``l2``
    (Euclidean distance, nearest first).
    """
    if metric not in METRICS:
        raise ArgumentError("metric", f"must be one of {', '.join(METRICS)}, got {metric!r}")
    block_rows = at_least_one("block_rows", block_rows)
    q = features("queries", queries)
    yq = labels("query_labels", query_labels, len(q))
    leave_one_out = gallery is None
    if leave_one_out != (gallery_labels is None):
        raise ArgumentError("gallery_labels", "gallery and gallery_labels go together")
    g = q if leave_one_out else features("gallery", gallery)
    yg = yq if leave_one_out else labels("gallery_labels", gallery_labels, len(g))
    if g.shape[1] != q.shape[1]:
        raise ArgumentError("gallery", f"has {g.shape[1]} dims but the queries {q.shape[1]}")
    ks = positive_ints("ks", ks)
    size = len(g) - leave_one_out
    if max(ks) > size:
        raise ArgumentError("ks", f"asks for {max(ks)} results of a {size}-row gallery")

    # R: the positives of each query in its gallery
    classes = int(max(yq.max(initial=0), yg.max(initial=0))) + 1
    positives = np.bincount(yg, minlength=classes)[yq] - leave_one_out
    q_keys, g_keys = (_unit(q), _unit(g)) if metric == "cosine" else (q, g)
    g_sq = (g * g).sum(axis=1)

    hits: list[list[np.ndarray]] = [[] for _ in ks]
    precisions: list[np.ndarray] = []
    for first in range(0, len(q), block_rows):
        rows = slice(first, first + block_rows)
        products = q_keys[rows] @ g_keys.T
        # what ranks: −cosine, or the squared distance less the query's own |q|² (same order)
        dist = -products if metric == "cosine" else g_sq - 2 * products
        if leave_one_out:
            dist[np.arange(len(dist)), np.arange(first, first + len(dist))] = np.inf
        r = positives[rows]
        depth = max(max(ks), int(r.max(initial=0)))
        relevant = yg[_first_ranked(dist, depth)] == yq[rows, None]
        scored = r > 0
        for i, k in enumerate(ks):
            hits[i].append(relevant[scored, :k].any(axis=1))
        # AP@R: precision at each of the first R ranks that holds a positive, over R
        precision = np.cumsum(relevant, axis=1) / np.arange(1, depth + 1)
        within_r = np.arange(depth) < r[:, None]
        ap = (precision * relevant * within_r).sum(axis=1)
        precisions.append(ap[scored] / r[scored])

    scored_rows = np.flatnonzero(positives > 0)
    if len(scored_rows) == 0:
        raise ArgumentError("query_labels", "no query has a row of its class in its gallery")
    return RetrievalScores(
        hits={k: np.concatenate(h) for k, h in zip(ks, hits, strict=True)},
        average_precision=np.concatenate(precisions),
        scored=scored_rows,
        without_positive=len(q) - len(scored_rows),
    )


def _first_ranked(dist: np.ndarray, depth: int) -> np.ndarray:
    """Each row's ``depth`` smallest columns, smallest first, equal values in column order.

    A partial sort (``argpartition``) picks the candidates in O(columns); only a row where values
    equal to the last one picked were left out (a tie across the cut) is sorted in full.
    """
    if depth >= dist.shape[1]:
        return np.argsort(dist, axis=1, kind="stable")[:, :depth]
    picked = np.argpartition(dist, depth - 1, axis=1)[:, :depth]
    values = np.take_along_axis(dist, picked, axis=1)
    order = np.lexsort((picked, values), axis=1)
    ranked = np.take_along_axis(picked, order, axis=1)
    last = np.take_along_axis(values, order[:, -1:], axis=1)
    for row in np.flatnonzero((dist <= last).sum(axis=1) > depth):
        ranked[row] = np.argsort(dist[row], kind="stable")[:depth]
    return ranked


def _unit(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (a zero row stays zero)."""
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1)

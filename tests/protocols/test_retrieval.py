"""Retrieval scores against a brute-force oracle: the full distance matrix, one argsort a query."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from featpipe.errors import ArgumentError
from featpipe.protocols.retrieval import retrieval_scores

KS = (1, 2, 5, 10)


def oracle(
    q: np.ndarray, yq: np.ndarray, g: np.ndarray, yg: np.ndarray, metric: str, loo: bool
) -> tuple[dict[int, float], float, int]:
    """recall@k, mAP@R and the queries scored (see :func:`per_query`)."""
    hits, aps, _ = per_query(q, yq, g, yg, metric, loo)
    return {k: float(np.mean(h)) for k, h in hits.items()}, float(np.mean(aps)), len(aps)


def per_query(
    q: np.ndarray, yq: np.ndarray, g: np.ndarray, yg: np.ndarray, metric: str, loo: bool
) -> tuple[dict[int, list[bool]], list[float], list[int]]:
    """Each scored query's hit at every k and its AP@R, and which queries were scored, by
    Musgrave et al.'s definitions, one query at a time over its fully sorted gallery (equal
    distances in gallery order)."""
    if metric == "cosine":
        unit = lambda X: X / np.linalg.norm(X, axis=1, keepdims=True)  # noqa: E731
        D = 1.0 - unit(q) @ unit(g).T
    else:
        D = np.sqrt(((q[:, None, :] - g[None, :, :]) ** 2).sum(axis=2))
    hits: dict[int, list[bool]] = {k: [] for k in KS}
    aps, scored = [], []
    for i in range(len(q)):
        order = np.argsort(D[i], kind="stable")
        if loo:
            order = order[order != i]
        relevant = yg[order] == yq[i]
        R = int(relevant.sum())
        if R == 0:
            continue
        scored.append(i)
        for k in KS:
            hits[k].append(bool(relevant[:k].any()))
        precision_sum = 0.0
        for rank in range(R):
            if relevant[rank]:
                precision_sum += relevant[: rank + 1].sum() / (rank + 1)
        aps.append(precision_sum / R)
    return hits, aps, scored


def data(n: int, seed: int, n_classes: int = 6, d: int = 12) -> tuple[np.ndarray, np.ndarray]:
    centres = np.random.default_rng(50).normal(size=(n_classes, d))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    return centres[y] + 1.3 * rng.normal(size=(n, d)) + 0.5, y


@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("gallery_mode", ["train", "leave-one-out"])
def test_scores_equal_the_brute_force_oracle(metric: str, gallery_mode: str) -> None:
    q, yq = data(90, seed=1)
    yq[0] = 6  # a class no other row has: no positive in either gallery
    if gallery_mode == "train":
        g, yg = data(260, seed=2)
        got = retrieval_scores(q, yq, g, yg, metric=metric, ks=KS, block_rows=16)
    else:
        g, yg = q, yq
        got = retrieval_scores(q, yq, metric=metric, ks=KS, block_rows=16)
    recall, map_at_r, n = oracle(q, yq, g, yg, metric, gallery_mode == "leave-one-out")
    assert (got.queries, got.without_positive) == (n, 1) == (89, 1)
    assert got.recall.keys() == recall.keys()
    for k in KS:
        assert got.recall[k] == pytest.approx(recall[k], abs=1e-12)
    assert got.map_at_r == pytest.approx(map_at_r, abs=1e-12)
    # neither metric is at a bound, so an off-by-one in a rank would show
    assert 0.2 < map_at_r < 0.8 and 0.3 < recall[1] < 0.95
    # and query by query: what intervals resample and comparisons pair
    hits, aps, scored = per_query(q, yq, g, yg, metric, gallery_mode == "leave-one-out")
    np.testing.assert_array_equal(got.scored, scored)
    for k in KS:
        np.testing.assert_array_equal(got.hits[k], hits[k])
    np.testing.assert_allclose(got.average_precision, aps, rtol=0, atol=1e-12)
    assert len(set(np.round(aps, 6))) > 30  # the APs differ from query to query


@pytest.mark.parametrize("loo", [False, True])
def test_equal_distances_rank_in_gallery_order(loo: bool) -> None:
    """Small integer features: many exactly equal distances, also across the partial sort's cut."""
    rng = np.random.default_rng(3)
    q = rng.integers(0, 3, (40, 3)).astype(np.float64)
    yq = rng.integers(0, 3, 40)
    if loo:
        g, yg = q, yq
        got = retrieval_scores(q, yq, metric="l2", ks=KS, block_rows=7)
    else:
        g, yg = rng.integers(0, 3, (120, 3)).astype(np.float64), rng.integers(0, 3, 120)
        got = retrieval_scores(q, yq, g, yg, metric="l2", ks=KS, block_rows=7)
    recall, map_at_r, _ = oracle(q, yq, g, yg, "l2", loo)
    assert got.recall == pytest.approx(recall, abs=1e-12)
    assert got.map_at_r == pytest.approx(map_at_r, abs=1e-12)


def test_float32_features_give_the_float64_scores() -> None:
    q, yq = data(60, seed=4)
    g, yg = data(200, seed=5)
    exact = retrieval_scores(q, yq, g, yg, ks=KS)
    single = retrieval_scores(q.astype(np.float32), yq, g.astype(np.float32), yg, ks=KS)
    assert (single.recall, single.map_at_r) == (exact.recall, exact.map_at_r)
    for k in KS:
        np.testing.assert_array_equal(single.hits[k], exact.hits[k])
    np.testing.assert_array_equal(single.average_precision, exact.average_precision)
    np.testing.assert_array_equal(single.scored, exact.scored)


def test_bad_input_names_the_parameter() -> None:
    q, yq = data(20, seed=6)
    with pytest.raises(ArgumentError, match=r"^metric must be one of cosine, l2"):
        retrieval_scores(q, yq, metric="dot")  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match=r"^ks asks for 20 results of a 19-row gallery"):
        retrieval_scores(q, yq, ks=[20])
    with pytest.raises(ArgumentError, match=r"^gallery_labels"):
        retrieval_scores(q, yq, q)
    with pytest.raises(ArgumentError, match=r"^query_labels must be 20 integer class indices"):
        retrieval_scores(q, yq[:5])
    with pytest.raises(ArgumentError, match=r"^query_labels no query has a row of its class"):
        retrieval_scores(q, np.arange(20))


def test_retrieval_and_calibration_import_without_torch() -> None:
    code = (
        "import sys, featpipe.protocols.retrieval, featpipe.protocols.calibration; "
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "NO-TORCH"

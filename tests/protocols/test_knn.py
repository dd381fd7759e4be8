"""The DINOv2 k-NN protocol against a re-implementation of ``dinov2/eval/knn.py``'s formula."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch.nn.functional import normalize, one_hot, softmax

from featpipe.errors import ArgumentError
from featpipe.heads.fitted import CosineKNN
from featpipe.protocols.knn import (
    UNIFORM,
    few_shot_knn,
    few_shot_rows,
    knn_sweep,
    nearest_neighbours,
)

N_CLASSES = 7


def clusters(n: int, seed: int, d: int = 16, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """Rows around one centre per class (the same centres for every seed): distinct
    similarities, so no top-k depends on how a tie is broken."""
    centres = np.random.default_rng(99).normal(size=(N_CLASSES, d))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, N_CLASSES, n)
    return (centres[y] + 1.5 * rng.normal(size=(n, d))).astype(dtype), y


def dinov2_knn(
    train_X: np.ndarray, train_y: np.ndarray, test_X: np.ndarray, ks: list[int], T: float
) -> dict[int, torch.Tensor]:
    """``KnnModule.forward`` of dinov2/eval/knn.py on one rank: features normalised
    (``ModelWithNormalize``), ``torch.mm``, ``topk(max_k)``, ``softmax(sims / T)`` over the
    max_k neighbours, one-hot times the weights, the first k summed."""
    train = normalize(torch.from_numpy(train_X), dim=1, p=2)
    test = normalize(torch.from_numpy(test_X), dim=1, p=2)
    candidates = torch.from_numpy(train_y).view(1, -1).expand(len(test), -1)
    similarity = torch.mm(test, train.T)
    topk_sims, indices = similarity.topk(max(ks), largest=True, sorted=True)
    neighbors_labels = torch.gather(candidates, 1, indices)
    topk_sims_transform = softmax(topk_sims / T, 1)
    matmul = torch.mul(
        one_hot(neighbors_labels, num_classes=N_CLASSES),
        topk_sims_transform.view(len(test), -1, 1),
    )
    return {k: torch.sum(matmul[:, :k, :], 1) for k in ks}


def dinov2_filter_train(labels: torch.Tensor, n_per_class: int, seed: int) -> torch.Tensor:
    """dinov2/eval/knn.py's ``create_class_indices_mapping`` and ``filter_train``, verbatim."""
    unique_labels, inverse = torch.unique(labels, return_inverse=True)
    mapping = {unique_labels[i]: (inverse == i).nonzero() for i in range(len(unique_labels))}
    torch.manual_seed(seed)
    final_indices = []
    for k in mapping:
        index = torch.randperm(len(mapping[k]))[:n_per_class]
        final_indices.append(mapping[k][index])
    return torch.cat(final_indices).squeeze()


KS = [1, 5, 20, 50]


@pytest.mark.parametrize("T", [0.07, 0.5, UNIFORM])
def test_sweep_equals_dinov2_row_for_row(T: float) -> None:
    train_X, train_y = clusters(600, seed=1)
    test_X, test_y = clusters(150, seed=2)
    oracle = dinov2_knn(train_X, train_y, test_X, KS, T)
    sweep = knn_sweep(test_X, [(train_X, train_y)], N_CLASSES, KS, [0.3, T], block_rows=64)
    for i, k in enumerate(KS):
        expected = oracle[k].numpy()
        if T == UNIFORM:  # DINOv2's sums of 1/max(k) round apart where the counts tie
            expected = np.rint(expected * max(KS)) / max(KS)
        scores = sweep.scores(k, T)
        # DINOv2 normalises over max(k) neighbours, this over k: one positive factor per row
        np.testing.assert_allclose(scores, expected / expected.sum(1, keepdims=True), rtol=1e-12)
        if k == max(KS):
            np.testing.assert_allclose(scores, expected, rtol=1e-12)
        np.testing.assert_array_equal(sweep.predictions()[i, 1], expected.argmax(1))
        top5 = torch.sort(torch.from_numpy(expected), dim=1, descending=True, stable=True)
        top5 = top5.indices[:, :5].numpy()
        np.testing.assert_array_equal(sweep.ranked_classes(5)[i, 1], top5)
        assert sweep.accuracy(test_y)[i, 1] == (expected.argmax(1) == test_y).mean()
        assert sweep.accuracy(test_y, top=5)[i, 1] == (top5 == test_y[:, None]).any(1).mean()
    # the data are not trivial: the scores separate neither perfectly nor at chance
    assert 0.3 < sweep.accuracy(test_y)[2, 1] < 0.95


def test_neighbours_are_the_brute_force_top_k() -> None:
    train_X, train_y = clusters(300, seed=3)
    test_X, _ = clusters(40, seed=4)
    found = nearest_neighbours(test_X, [(train_X, train_y)], 25, block_rows=16)
    unit = lambda X: X / np.linalg.norm(X, axis=1, keepdims=True)  # noqa: E731
    sims = unit(test_X) @ unit(train_X).T
    order = np.argsort(-sims, axis=1)[:, :25]
    np.testing.assert_array_equal(found.rows, order)
    np.testing.assert_allclose(found.similarities, np.take_along_axis(sims, order, 1), rtol=1e-12)
    np.testing.assert_array_equal(found.labels, train_y[order])


def test_streamed_bank_in_blocks_equals_one_block() -> None:
    train_X, train_y = clusters(1000, seed=5)
    test_X, test_y = clusters(120, seed=6)
    whole = knn_sweep(test_X, [(train_X, train_y)], N_CLASSES, KS, [0.07, UNIFORM])
    cuts = [0, 3, 170, 171, 480, 1000]  # uneven blocks, one of a single row
    blocks = ((train_X[a:b], train_y[a:b]) for a, b in itertools.pairwise(cuts))
    streamed = knn_sweep(test_X, blocks, N_CLASSES, KS, [0.07, UNIFORM], block_rows=50)
    np.testing.assert_array_equal(streamed.neighbours.rows, whole.neighbours.rows)
    np.testing.assert_array_equal(streamed.neighbours.labels, whole.neighbours.labels)
    np.testing.assert_allclose(
        streamed.neighbours.similarities, whole.neighbours.similarities, rtol=1e-12
    )
    np.testing.assert_array_equal(streamed.predictions(), whole.predictions())
    np.testing.assert_array_equal(streamed.accuracy(test_y), whole.accuracy(test_y))


def test_uniform_vote_is_the_knn_head_of_today() -> None:
    """T = inf gives the scores of featpipe's ``knn`` head (uniform votes, counts / k)."""
    train_X, train_y = clusters(400, seed=7, dtype=np.float32)
    test_X, _ = clusters(60, seed=8, dtype=np.float32)
    sweep = knn_sweep(test_X, [(train_X, train_y)], N_CLASSES, [10], [UNIFORM])
    head = CosineKNN(torch.from_numpy(train_X), torch.from_numpy(train_y), 10, N_CLASSES)
    with torch.no_grad():
        expected = head(torch.from_numpy(test_X)).numpy()
    np.testing.assert_allclose(sweep.scores(10, UNIFORM), expected, atol=1e-6)


def test_few_shot_draw_is_dinov2s_and_leaves_the_global_generator_alone() -> None:
    _, y = clusters(300, seed=9)
    with torch.random.fork_rng():
        for n_per_class, seed in [(1, 0), (5, 1), (60, 2)]:  # 60: more than some classes hold
            expected = dinov2_filter_train(torch.from_numpy(y), n_per_class, seed).numpy()
            np.testing.assert_array_equal(few_shot_rows(y, n_per_class, seed), expected)
        torch.manual_seed(123)
        untouched = torch.rand(3)
        torch.manual_seed(123)
        few_shot_rows(y, 5, 0)
        np.testing.assert_array_equal(torch.rand(3), untouched)


def test_few_shot_knn_is_the_sweep_on_each_draw_averaged_over_tries() -> None:
    train_X, train_y = clusters(700, seed=10)
    test_X, test_y = clusters(100, seed=11)
    results = few_shot_knn(
        train_X, train_y, test_X, test_y, N_CLASSES, [2, 30], n_tries=3, ks=(10, 20, 100)
    )
    assert [(r.n_per_class, r.ks) for r in results] == [(2, (2,)), (30, (10, 20, 30))]
    for result in results:
        assert result.accuracy.shape == (3, len(result.ks), 1)
        for seed in range(3):
            rows = dinov2_filter_train(torch.from_numpy(train_y), result.n_per_class, seed).numpy()
            oracle = dinov2_knn(train_X[rows], train_y[rows], test_X, list(result.ks), 0.07)
            for i, k in enumerate(result.ks):
                expected = (oracle[k].numpy().argmax(1) == test_y).mean()
                assert result.accuracy[seed, i, 0] == expected
        np.testing.assert_allclose(result.mean_accuracy, result.accuracy.mean(0))
    # three draws of two shots do not all score alike: the seeds differ
    assert len(set(results[0].accuracy[:, 0, 0])) > 1


def test_bad_input_names_the_parameter() -> None:
    X, y = clusters(30, seed=12)
    with pytest.raises(ArgumentError, match=r"^k asks for 50 neighbours but the bank has 30"):
        knn_sweep(X, [(X, y)], N_CLASSES, [50])
    with pytest.raises(ArgumentError, match=r"^temperatures must be > 0"):
        knn_sweep(X, [(X, y)], N_CLASSES, [5], [0.0])
    with pytest.raises(ArgumentError, match=r"^temperatures"):
        knn_sweep(X, [(X, y)], N_CLASSES, [5], [math.nan])
    with pytest.raises(ArgumentError, match=r"^ks must be distinct positive"):
        knn_sweep(X, [(X, y)], N_CLASSES, [5, 5])
    with pytest.raises(ArgumentError, match=r"^bank has 8 dims but the queries 16"):
        knn_sweep(X, [(X[:, :8], y)], N_CLASSES, [5])
    with pytest.raises(ArgumentError, match=r"^bank holds classes outside 0..2"):
        knn_sweep(X, [(X, y)], 3, [5])
    with pytest.raises(ArgumentError, match=r"^block_rows must be an integer of at least 1"):
        knn_sweep(X, [(X, y)], N_CLASSES, [5], block_rows=0)
    with pytest.raises(ArgumentError, match=r"^queries must be a 2-D float array"):
        knn_sweep(X[0], [(X, y)], N_CLASSES, [5])

"""The ``knn`` head with DINOv2's weighted vote: the formula of ``dinov2/eval/knn.py`` row for row,
one neighbour search for a sweep over k and temperature, saved and loaded, few-shot."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from featpipe.cache.entry import Features
from featpipe.errors import ArgumentError
from featpipe.fitting.sweep import sweep
from featpipe.heads import fitted
from featpipe.heads.config import HeadConfig, expand, parse_assignments
from featpipe.heads.fitted import FittedHead, fit_heads
from featpipe.heads.train_data import TrainData

N_CLASSES = 5
DINOV2_SET = ["k=20", "temperature=0.07", "standardize=false", "l2norm=true"]


def clusters(n: int, seed: int, d: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Rows around one centre per class (shared by every seed), overlapping enough that the
    vote matters."""
    centres = np.random.default_rng(7).normal(size=(N_CLASSES, d))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, N_CLASSES, n)
    return (centres[y] + 1.2 * rng.normal(size=(n, d))).astype(np.float32), y


def dinov2_scores(train_X, train_y, test_X, k: int, T: float) -> np.ndarray:
    """``KnnModule.forward`` of dinov2/eval/knn.py for one k, in float64 numpy: unit rows,
    cosine similarity, the top k, ``softmax(sims / T)`` over them, one-hot times the weights
    summed per class."""
    unit = lambda X: X / np.linalg.norm(X, axis=1, keepdims=True)  # noqa: E731
    sims = unit(test_X.astype(np.float64)) @ unit(train_X.astype(np.float64)).T
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    top_sims = np.take_along_axis(sims, top, axis=1) / T
    weights = np.exp(top_sims - top_sims.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    scores = np.zeros((len(test_X), N_CLASSES))
    np.add.at(scores, (np.arange(len(test_X))[:, None], train_y[top]), weights)
    return scores


def dataset(n: int = 600, seed: int = 0) -> Features:
    X, y = clusters(n, seed)
    split = np.array(["train", "val", "test"] * (n // 3), dtype=object)
    return Features(
        X,
        y,
        np.full(n, np.nan),
        split,
        np.array([f"{i}.png" for i in range(n)], dtype=object),
        [f"c{i}" for i in range(N_CLASSES)],
        "classification",
    )


def test_dinov2_settings_are_dinov2s_knn_row_for_row(tmp_path) -> None:
    config = HeadConfig.from_dict(parse_assignments(["head=knn", *DINOV2_SET]))
    train_X, train_y = clusters(500, seed=1)
    test_X, test_y = clusters(200, seed=2)
    data = TrainData(train_X, train_y, None, None, [str(c) for c in range(5)], "classification")
    [head] = fit_heads([config], data)
    expected = dinov2_scores(train_X, train_y, test_X, 20, 0.07)
    np.testing.assert_allclose(head.predict_proba(test_X), expected, atol=2e-5)
    np.testing.assert_array_equal(head.predict(test_X), expected.argmax(axis=1))
    # the module (what predict and export run) votes the same; so does the head saved and loaded
    with torch.no_grad():
        exported = head.to_module()(torch.from_numpy(test_X)).numpy()
    np.testing.assert_allclose(exported, expected, atol=2e-5)
    head.save(tmp_path / "h")
    assert json.loads((tmp_path / "h" / "head.json").read_text())["config"]["temperature"] == 0.07
    np.testing.assert_allclose(
        FittedHead.load(tmp_path / "h").predict_proba(test_X), expected, atol=2e-5
    )
    # the weighting matters here: the uniform vote of the same neighbours decides differently
    uniform = HeadConfig.from_dict(parse_assignments(["head=knn", "k=20", "l2norm=true"]))
    [plain] = fit_heads([uniform], data)
    assert (plain.predict(test_X) != head.predict(test_X)).any()
    assert 0.4 < head.score(test_X, test_y) < 0.98


def test_a_head_saved_before_the_temperature_loads_as_the_uniform_vote(tmp_path) -> None:
    train_X, train_y = clusters(120, seed=3)
    data = TrainData(train_X, train_y, None, None, [str(c) for c in range(5)], "classification")
    [head] = fit_heads([HeadConfig(head="knn", k=7)], data)
    head.save(tmp_path / "h")
    meta = json.loads((tmp_path / "h" / "head.json").read_text())
    meta["spec"] = [meta["spec"][0][:3]]  # the spec of older heads: no temperature
    del meta["config"]["temperature"]
    (tmp_path / "h" / "head.json").write_text(json.dumps(meta))
    old = FittedHead.load(tmp_path / "h")
    assert old.config.temperature == 0 and old.module.temperature == 0
    probs = old.predict_proba(train_X[:30])
    np.testing.assert_allclose(probs * 7, np.rint(probs * 7), atol=1e-5)  # counts of 1/k


def test_a_sweep_over_k_and_temperature_is_one_neighbour_search(monkeypatch) -> None:
    searches: list[int] = []
    real = fitted.knn_sweep

    def counted(queries, *args, **kwargs):
        searches.append(len(queries))
        return real(queries, *args, **kwargs)

    monkeypatch.setattr(fitted, "knn_sweep", counted)
    features = dataset()
    grid = expand(
        {"k": [1, 5, 20, 50], "temperature": [0.0, 0.07, 0.5]},
        HeadConfig(head="knn", standardize=False, l2norm=True),
    )
    result = sweep(features, grid, refit=False)
    n_val, n_test = (int((features.split == s).sum()) for s in ("val", "test"))
    # twelve heads scored on val from one search; the chosen one on test from another, and on
    # val once more for its calibration (the temperature is fitted on its val outputs)
    assert searches == [n_val, n_test, n_val]
    assert result.calibration is not None
    train, val = features.where("train"), features.where("val")
    for candidate in result.candidates:
        expected = dinov2_scores(
            train.X, train.y, val.X, candidate.config.k, candidate.config.temperature or np.inf
        )
        if candidate.config.temperature:
            assert candidate.val[0]["accuracy"] == pytest.approx(
                (expected.argmax(axis=1) == val.y).mean(), abs=1.5 / len(val.y)
            )
    accuracies = {c.config: c.val[0]["accuracy"] for c in result.candidates}
    assert len(set(accuracies.values())) > 3  # k and T change the answer: all were scored


def test_cross_validated_knn_grid_scores_like_each_head_alone() -> None:
    features = dataset(seed=4)
    features.split[features.split == "val"] = "train"
    grid = expand({"k": [3, 15], "temperature": [0.0, 0.1]}, HeadConfig(head="knn"))
    shared = sweep(features, grid, cv=3)
    for config, candidate in zip(grid, shared.candidates, strict=True):
        alone = sweep(features, [config], cv=3)
        assert candidate.val == alone.candidates[0].val


def test_few_shot_knn_through_shots() -> None:
    config = HeadConfig(head="knn", k=5, temperature=0.07, standardize=False, l2norm=True)
    result = sweep(dataset(seed=5), [config], shots=[1, 5, "all"], draws=3)
    assert [p.shots for p in result.few_shot] == [1, 5, "all"]
    assert [p.draws for p in result.few_shot] == [3, 3, 1]
    assert result.few_shot[0].mean < result.few_shot[-1].mean


@pytest.mark.parametrize("value", ["-0.1", "abc", "inf"])
def test_a_bad_temperature_names_the_option(value: str) -> None:
    with pytest.raises(ArgumentError, match=rf"^set temperature={value}: "):
        parse_assignments([f"temperature={value}"])


def test_the_label_shows_the_temperature_of_a_weighted_vote() -> None:
    assert HeadConfig(head="knn", temperature=0.07).label() == "knn(temperature=0.07)"
    assert HeadConfig(head="knn").label() == "knn()"
    assert "temperature" not in HeadConfig(head="linear", temperature=0.07).to_dict()

"""Retrieval through the product path: extract, rank, record a run; against brute force."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import TINY, TINY_EXTRACT, make_tree
from featpipe.errors import ArgumentError, DataError
from featpipe.extraction.options import ExtractOptions
from featpipe.fitting.features import load_feature_set
from featpipe.fitting.options import RetrievalOptions
from featpipe.fitting.retrieval import retrieve, retrieve_each, verdict_lines
from featpipe.reports.report import report
from featpipe.runs.record import load_run


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("retrieval") / "shapes"
    make_tree(root, classes=("a", "b", "c"), per_class=9, split="train", seed=0)
    return make_tree(root, classes=("a", "b", "c"), per_class=6, split="test", seed=1)


def brute_force(queries, yq, gallery, yg, metric: str, ks, leave_one_out: bool):
    """Every distance, a full stable sort per query, recall@k and AP@R written out."""
    if metric == "cosine":
        unit = lambda X: X / np.linalg.norm(X, axis=1, keepdims=True)  # noqa: E731
        dist = -(unit(queries.astype(np.float64)) @ unit(gallery.astype(np.float64)).T)
    else:
        diff = queries[:, None, :].astype(np.float64) - gallery[None, :, :].astype(np.float64)
        dist = np.sqrt((diff**2).sum(axis=2))
    hits, aps = {k: [] for k in ks}, []
    for i in range(len(queries)):
        keep = np.arange(len(gallery)) != i if leave_one_out else np.ones(len(gallery), bool)
        labels = yg[keep][np.argsort(dist[i][keep], kind="stable")]
        relevant = labels == yq[i]
        r = int(relevant.sum())
        if r == 0:
            continue
        for k in ks:
            hits[k].append(relevant[:k].any())
        precision = np.cumsum(relevant[:r]) / np.arange(1, r + 1)
        aps.append(float((precision * relevant[:r]).sum() / r))
    return {k: float(np.mean(v)) for k, v in hits.items()}, float(np.mean(aps))


@pytest.mark.parametrize(("gallery", "metric"), [("train", "cosine"), ("test", "l2")])
def test_retrieval_run_equals_brute_force(dataset, tmp_path, gallery: str, metric: str) -> None:
    options = ExtractOptions(**TINY_EXTRACT, cache_dir=tmp_path / "cache")
    searching = RetrievalOptions(gallery=gallery, metric=metric, ks=[1, 3, 10])
    run, result = retrieve(
        dataset,
        TINY["backbone"],
        searching,
        extract_options=options,
        runs_dir=tmp_path / "runs",
    )
    features, _ = load_feature_set(dataset, TINY["backbone"], options)
    test, train = features.where("test"), features.where("train")
    bank = (train.X, train.y) if gallery == "train" else (test.X, test.y)
    recall, map_at_r = brute_force(
        test.X, test.y, *bank, metric, (1, 3, 10), leave_one_out=gallery == "test"
    )
    assert result.scores.recall == pytest.approx(recall, abs=1e-12)
    assert result.scores.map_at_r == pytest.approx(map_at_r, abs=1e-12)
    assert result.scores.queries == 18
    # recorded as a run that reads back through metrics.json
    saved = load_run(run.path)
    assert saved.config["kind"] == "retrieval" and saved.metrics.metric == "recall@1"
    assert saved.metrics.test.all == [result.row()]
    assert saved.metrics.chosen == {"protocol": "retrieval", "metric": metric, "gallery": gallery}
    with pytest.raises(DataError, match="retrieval run: it has no head"):
        saved.head()
    # every score with its n (the queries) and its seeded bootstrap interval, recorded
    names = ["recall@1", "recall@3", "recall@10", "map@r"]
    assert list(result.intervals) == names and list(saved.metrics.intervals["test"]) == names
    for name, value in result.row().items():
        interval = saved.metrics.intervals["test"][name]
        assert interval == result.intervals[name]
        assert (interval.estimate, interval.n, interval.unit) == (value, 18, "queries")
        assert interval.method == "bootstrap BCa, 2000 resamples, seed 0"
        assert interval.low <= value <= interval.high
    assert result.intervals["map@r"].low < map_at_r < result.intervals["map@r"].high
    [row] = saved.rows()
    assert row["test_n"] == 18 and float(row["test_map@r_low"]) == result.intervals["map@r"].low
    page = report(tmp_path / "runs", tmp_path / "report").read_text()
    assert "Retrieval (test images as queries" in page
    assert result.intervals["map@r"].format() in page and "bootstrap over the queries" in page


def test_a_feature_set_against_itself_under_two_names_is_tied_with_p_1(dataset, tmp_path):
    """Several feature sets on the same queries are compared query by query (Holm); the same
    features under two names differ by nothing."""
    options = ExtractOptions(**TINY_EXTRACT, cache_dir=tmp_path / "cache")
    names = [TINY["backbone"], f"{TINY['backbone']}@none", "resnet18@none"]
    board = retrieve_each(dataset, names, extract_options=options, runs_dir=tmp_path / "runs")
    assert list(board.runs) == names and list(board.rankings) == list(board.runs[names[0]][1].row())
    for score, ranking in board.rankings.items():
        same = {c.name: c for c in ranking.comparisons}
        if ranking.best in names[:2]:  # the twin is compared with it
            twin = same[names[1] if ranking.best == names[0] else names[0]]
            assert (twin.p, twin.p_holm, twin.tied, twin.worse_by.estimate) == (1, 1, True, 0)
        else:  # both twins against another best: the same difference, the same p
            a, b = same[names[0]], same[names[1]]
            assert (a.p, a.worse_by) == (b.p, b.worse_by), score
    lines = verdict_lines(board.rankings)
    assert len(lines) == 4 and lines[-1].startswith("map@r: ")
    for run, _ in board.runs.values():
        assert load_run(run.path).metrics.verdict == "\n".join(lines)
    with pytest.raises(ArgumentError, match="resnet18@none is given twice"):
        retrieve_each(dataset, ["resnet18@none"] * 2, extract_options=options)


def test_retrieval_options_and_data_are_checked(tmp_path) -> None:
    with pytest.raises(ArgumentError, match=r"^gallery val: choose one of train, test"):
        RetrievalOptions(gallery="val")
    with pytest.raises(ArgumentError, match=r"^ks 1,1: give distinct positive ranks"):
        RetrievalOptions(ks="1,1")
    with pytest.raises(ArgumentError, match=r"^metric"):
        RetrievalOptions(metric="dot")
    no_test = make_tree(tmp_path / "flat", classes=("a", "b"), per_class=4, split="train")
    options = ExtractOptions(**TINY_EXTRACT, cache_dir=tmp_path / "cache")
    with pytest.raises(DataError, match="needs a test split"):
        retrieve(no_test, TINY["backbone"], extract_options=options, runs_dir=tmp_path / "runs")

"""Retrieval on cached features, without a head: recall@k and mAP@R, recorded as a run.

Test images are the queries; the gallery is the train split (``gallery="train"``) or the test
split itself with each query left out of its own gallery (``"test"``); a gallery row is a
positive when it has the query's class. The arithmetic is
:func:`featpipe.protocols.retrieval.retrieval_scores` (in blocks of queries, cosine or L2). The
run (kind ``retrieval``) records the scores as its test scores (``recall@1`` is its metric), so
``featpipe results`` and the report read it as they read a fit, and its ``rows.csv`` holds one
row with the protocol's settings and scores.

Every score is a mean over the scored queries of each query's own value (its recall@k hit, its
AP@R), so it gets what a fit's test scores get (:mod:`featpipe.stats`): its n (the queries) and
a 95% seeded BCa bootstrap interval over the queries, and, for several feature sets retrieved
on the same queries (:func:`retrieve_each`), each compared with the best query by query (the
paired bootstrap, Holm's correction across the table), as ``compare`` does for heads. The
interval covers which queries were drawn; the gallery is taken as fixed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from featpipe import stats
from featpipe.backbones.spec import BackboneSpec, label
from featpipe.data.datasets import Dataset, scan
from featpipe.errors import ArgumentError, DataError
from featpipe.extraction.layers import extract_shared
from featpipe.extraction.options import ExtractOptions, as_extract_options
from featpipe.extraction.stage import ExtractResult
from featpipe.fitting.features import entry_records, load_feature_set, parse_feature_spec
from featpipe.fitting.options import RetrievalOptions
from featpipe.fitting.run import interval_columns
from featpipe.options import given
from featpipe.progress import Phase
from featpipe.protocols.retrieval import RetrievalScores, retrieval_scores
from featpipe.runs.metrics import RunMetrics, Scores
from featpipe.runs.record import DEFAULT_RUNS_DIR, RETRIEVAL, Run, write_run

MEAN = "mean"  # the stats metric of a per-query score: its mean over the queries


@dataclass(frozen=True)
class RetrievalResult:
    """One feature set's retrieval scores, the split sizes they rest on, the time they took
    (the feature search alone, not extraction), and each score's 95% interval over the queries
    (``intervals``, by :meth:`row`'s names)."""

    scores: RetrievalScores
    options: RetrievalOptions
    split_sizes: dict[str, int]
    seconds: float
    labels: np.ndarray  # the class of each scored query (what pairs two sets' queries)
    intervals: dict[str, stats.Interval] = field(default_factory=dict)

    def row(self) -> dict[str, float]:
        """The scores as a results row: ``recall@1`` …, ``map@r``."""
        recall = {f"recall@{k}": v for k, v in self.scores.recall.items()}
        return recall | {"map@r": self.scores.map_at_r}

    def per_query(self) -> dict[str, stats.Predictions]:
        """Each score's per-query values (:meth:`row`'s names): what its interval resamples
        and what a paired comparison pairs, query by query."""
        values = {f"recall@{k}": hit for k, hit in self.scores.hits.items()}
        values["map@r"] = self.scores.average_precision
        return {name: stats.Predictions.per_query(self.labels, v) for name, v in values.items()}


@dataclass(frozen=True)
class RetrievalBoard:
    """Feature sets retrieved on the same queries: each one's run and result, by the name it
    was given, and with two or more, each score's table compared with its best on the same
    queries (``rankings``, by :meth:`RetrievalResult.row`'s names)."""

    runs: dict[str, tuple[Run, RetrievalResult]]
    rankings: dict[str, stats.Ranking] = field(default_factory=dict)


def retrieve(
    data: str | Path,
    backbone: str = "tf_efficientnet_lite0",
    options: RetrievalOptions | None = None,
    *,
    extract_options: ExtractOptions | Mapping[str, Any] | None = None,
    runs_dir: str | Path = DEFAULT_RUNS_DIR,
    progress: Callable[[str], Callable | None] | None = None,
    status: Callable[[Phase], None] | None = None,
) -> tuple[Run, RetrievalResult]:
    """recall@k and mAP@R of ``data``'s test images under ``backbone`` (extracted first where
    missing), each with its n and 95% interval, saved as a run of kind ``retrieval``. A
    classification dataset with a test split is needed (and a train split for the train
    gallery)."""
    board = retrieve_each(
        data,
        [backbone],
        options,
        extract_options=extract_options,
        runs_dir=runs_dir,
        progress=progress,
        status=status,
    )
    return board.runs[backbone]


def retrieve_each(
    data: str | Path | Dataset,
    backbones: Sequence[str],
    options: RetrievalOptions | None = None,
    *,
    extract_options: ExtractOptions | Mapping[str, Any] | None = None,
    runs_dir: str | Path = DEFAULT_RUNS_DIR,
    progress: Callable[[str], Callable | None] | None = None,
    status: Callable[[Phase], None] | None = None,
) -> RetrievalBoard:
    """:func:`retrieve` for each of ``backbones`` on the same queries, then every score
    compared across them query by query (:func:`compare_retrievals`); each run records its
    intervals and the comparisons. Layers of one backbone (``m:-4``, ``m:-1``) are extracted
    from one forward pass."""
    options = options or RetrievalOptions()
    extraction = as_extract_options(extract_options)
    twice = sorted({b for b in backbones if list(backbones).count(b) > 1})
    if twice:
        raise ArgumentError("backbone", f"{twice[0]} is given twice: name each feature set once")
    specs = {b: parse_feature_spec(b, extraction) for b in backbones}
    if len(backbones) > 1 and not isinstance(data, Dataset):  # one scan serves every set
        data = scan(data, allow_outside=extraction.allow_outside)
    every = [s for parts in specs.values() for s in parts]
    extract_shared(data, every, extraction.without_spec(), progress=progress, status=status)
    searched = {
        b: _search(data, specs[b], options, extraction, progress, status) for b in backbones
    }
    results = {b: found[0] for b, found in searched.items()}
    rankings = compare_retrievals(results) if len(results) > 1 else {}
    verdicts = verdict_lines(rankings)
    runs = {
        b: (_write(result, found, extracted, specs[b], extraction, runs_dir, verdicts), result)
        for b, (result, found, extracted) in searched.items()
    }
    return RetrievalBoard(runs, rankings)


def verdict_lines(rankings: Mapping[str, stats.Ranking]) -> list[str]:
    """One line per score: ``map@r: a and b are tied; c is worse by 4.1 points [...]``."""
    return [f"{score}: {ranking}" for score, ranking in rankings.items()]


def compare_retrievals(results: Mapping[str, RetrievalResult]) -> dict[str, stats.Ranking]:
    """Each score compared across feature sets on the same queries: every set against the
    best, the paired bootstrap over the queries, Holm across the table
    (:func:`featpipe.stats.compare_to_best`)."""
    per_query = {name: result.per_query() for name, result in results.items()}
    first = next(iter(per_query.values()))
    return {
        score: stats.compare_to_best({name: p[score] for name, p in per_query.items()}, MEAN)
        for score in first
    }


@dataclass(frozen=True)
class _Found:
    """What a search read: its feature set's class names and dataset."""

    class_names: list[str]
    dataset: str
    dataset_root: str


def _search(
    data: str | Path | Dataset,
    specs: list[BackboneSpec],
    options: RetrievalOptions,
    extraction: ExtractOptions,
    progress: Callable[[str], Callable | None] | None,
    status: Callable[[Phase], None] | None,
) -> tuple[RetrievalResult, _Found, list[ExtractResult]]:
    """One feature set's scores and intervals (not yet recorded)."""
    features, results = load_feature_set(data, specs, extraction, progress, status)
    if features.task != "classification":
        raise DataError("retrieval needs class labels: a positive is a gallery image of the class")
    test = features.where("test")
    if len(test) == 0:
        raise DataError("retrieval needs a test split: its images are the queries")
    gallery = features.where("train") if options.gallery == "train" else None
    if gallery is not None and len(gallery) == 0:
        raise ArgumentError("gallery", "train: the train split is empty; use --gallery test")
    if status:
        status(Phase("retrieval", f"ranking {len(test)} queries"))
    start = time.perf_counter()
    scores = retrieval_scores(
        test.X,
        test.y,
        None if gallery is None else gallery.X,
        None if gallery is None else gallery.y,
        metric=options.metric,  # type: ignore[arg-type]  # checked by RetrievalOptions
        ks=options.ks,
    )
    result = RetrievalResult(
        scores,
        options,
        {s: int((features.split == s).sum()) for s in ("train", "val", "test")},
        time.perf_counter() - start,
        test.y[scores.scored],
    )
    intervals = {
        name: replace(stats.score(p, MEAN), unit="queries")
        for name, p in result.per_query().items()
    }
    found = _Found(
        features.class_names,
        results[0].dataset,
        str(features.meta.get("dataset_root", data)),
    )
    return replace(result, intervals=intervals), found, results


def _write(
    result: RetrievalResult,
    found: _Found,
    extracted: list[ExtractResult],
    specs: list[BackboneSpec],
    extraction: ExtractOptions,
    runs_dir: str | Path,
    verdicts: list[str],
) -> Run:
    """Record one feature set's retrieval as a run: its scores, their intervals, the
    comparisons of the board it was part of."""
    options = result.options
    entries, extract_seconds = entry_records(specs, extracted)
    protocol = {"protocol": RETRIEVAL, "metric": options.metric, "gallery": options.gallery}
    first_k = f"recall@{options.ks[0]}"
    row = result.row()
    bounds = {"test": result.intervals}
    return write_run(
        Path(runs_dir),
        kind=RETRIEVAL,
        dataset=found.dataset,
        dataset_root=found.dataset_root,
        backbone=label(specs),
        request=protocol
        | {"ks": list(options.ks), "extract": {k: str(v) for k, v in given(extraction).items()}},
        metrics=RunMetrics(
            task="classification",
            class_names=found.class_names,
            selection="none",
            metric=first_k,
            chosen=protocol,
            chosen_label=options.label,
            test=Scores(row[first_k], 0.0, [row]),
            fit_seconds=result.seconds,
            extract_seconds=extract_seconds,
            intervals=bounds,
            verdict="\n".join(verdicts),
        ),
        rows=[
            protocol
            | {f"test_{k}": v for k, v in row.items()}
            | {"queries": result.scores.queries}
            | interval_columns(bounds)
        ],
        entries=entries,
    )

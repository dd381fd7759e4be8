"""Retrieval on cached features, without a head: recall@k and mAP@R, recorded as a run.

Test images are the queries; the gallery is the train split (``gallery="train"``) or the test
split itself with each query left out of its own gallery (``"test"``); a gallery row is a
positive when it has the query's class. The arithmetic is
:func:`featpipe.protocols.retrieval.retrieval_scores` (in blocks of queries, cosine or L2). The
run (kind ``retrieval``) records the scores as its test scores (``recall@1`` is its metric), so
``featpipe results`` and the report read it as they read a fit, and its ``rows.csv`` holds one
row with the protocol's settings and scores.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featpipe.backbones.spec import label
from featpipe.errors import ArgumentError, DataError
from featpipe.extraction.options import ExtractOptions, as_extract_options
from featpipe.fitting.features import entry_records, load_feature_set, parse_feature_spec
from featpipe.fitting.options import RetrievalOptions
from featpipe.options import given
from featpipe.progress import Phase
from featpipe.protocols.retrieval import RetrievalScores, retrieval_scores
from featpipe.runs.metrics import RunMetrics, Scores
from featpipe.runs.record import DEFAULT_RUNS_DIR, RETRIEVAL, Run, write_run


@dataclass(frozen=True)
class RetrievalResult:
    """One feature set's retrieval scores, the split sizes they rest on, and the time they took
    (the feature search alone, not extraction)."""

    scores: RetrievalScores
    options: RetrievalOptions
    split_sizes: dict[str, int]
    seconds: float

    def row(self) -> dict[str, float]:
        """The scores as a results row: ``recall@1`` …, ``map@r``."""
        recall = {f"recall@{k}": v for k, v in self.scores.recall.items()}
        return recall | {"map@r": self.scores.map_at_r}


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
    missing), saved as a run of kind ``retrieval``. A classification dataset with a test split
    is needed (and a train split for the train gallery)."""
    options = options or RetrievalOptions()
    extraction = as_extract_options(extract_options)
    specs = parse_feature_spec(backbone, extraction)
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
    )
    entries, extract_seconds = entry_records(specs, results)
    protocol = {"protocol": RETRIEVAL, "metric": options.metric, "gallery": options.gallery}
    first_k = f"recall@{options.ks[0]}"
    row = result.row()
    run = write_run(
        Path(runs_dir),
        kind=RETRIEVAL,
        dataset=results[0].dataset,
        dataset_root=str(features.meta.get("dataset_root", data)),
        backbone=label(specs),
        request=protocol
        | {"ks": list(options.ks), "extract": {k: str(v) for k, v in given(extraction).items()}},
        metrics=RunMetrics(
            task="classification",
            class_names=features.class_names,
            selection="none",
            metric=first_k,
            chosen=protocol,
            chosen_label=options.label,
            test=Scores(row[first_k], 0.0, [row]),
            fit_seconds=result.seconds,
            extract_seconds=extract_seconds,
        ),
        rows=[protocol | {f"test_{k}": v for k, v in row.items()} | {"queries": scores.queries}],
        entries=entries,
    )
    return run, result

"""A table of models scored on the same test images: which are tied with the best, and by how
much the others are worse.

A leaderboard sorted by score ranks noise as readily as skill. :func:`compare_to_best` compares
every row with the best one on the same images (McNemar's exact test for accuracy, the paired
BCa bootstrap for every other metric), adjusts the p values of the table together with Holm's
step-down method, and calls a row tied with the best unless its adjusted p is at most ``alpha``:
"A and B are tied; C is worse by 4.1 points [1.2, 7.0], p = 0.006".

Holm controls the chance of calling any tied row worse (the family-wise error) at ``alpha``
over the whole table, whatever the dependence between its comparisons (they share the best
row). The reported interval of each difference is its
own 95% interval; the tie decision is the adjusted p's, so at the margin a row can be called
tied while its unadjusted interval just excludes 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from featpipe.errors import ArgumentError
from featpipe.stats.bootstrap import N_RESAMPLES, score
from featpipe.stats.interval import Interval, check_confidence
from featpipe.stats.paired import Difference, format_p, paired_difference
from featpipe.stats.predictions import METRICS, Metric, Predictions
from featpipe.stats.splits import (
    across_splits,
    paired_shared_test,
    paired_splits,
    shared_test_summary,
)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p values, in the order given.

    The i-th smallest of m p values is multiplied by m − i + 1 (i from 1), the results are
    made non-decreasing in that order and capped at 1; rejecting where the adjusted p ≤ alpha
    is Holm's procedure at level alpha.
    """
    ps = [float(p) for p in p_values]
    if any(not 0 <= p <= 1 for p in ps):
        raise ArgumentError("p_values", "must lie between 0 and 1")
    m = len(ps)
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=ps.__getitem__)):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class Comparison:
    """One row against the best row of its table, on the same test images.

    ``worse_by``: how much worse the row is than the best (best − row for a score, row − best
    for an error; never negative at the estimate), in the metric's units; ``p`` the test's own
    two-sided p, ``p_holm`` adjusted over the table; ``tied``: ``p_holm > alpha`` (Holm rejects
    at ≤).
    """

    name: str
    best: str
    metric: Metric
    score: Interval
    worse_by: Interval
    p: float
    p_holm: float
    test: str
    tied: bool

    def amount(self) -> str:
        """``4.1 points [1.2, 7.0]`` for a proportion, ``0.041 [0.012, 0.070]`` otherwise."""
        if self.metric.proportion:
            return self.worse_by.format(100, extra_digit=False, unit=" points")
        return self.worse_by.format(extra_digit=False)

    def __str__(self) -> str:
        if self.tied:
            return f"{self.name} is tied with {self.best} ({format_p(self.p_holm)})"
        return f"{self.name} is worse than {self.best} by {self.amount()}, {format_p(self.p_holm)}"


@dataclass(frozen=True)
class Ranking:
    """A table's verdict: the best row, and every other row compared with it."""

    metric: Metric
    best: str
    best_score: Interval
    comparisons: tuple[Comparison, ...]
    alpha: float

    @property
    def tied(self) -> list[str]:
        """The best row and the rows tied with it, in table order."""
        return [self.best] + [c.name for c in self.comparisons if c.tied]

    @property
    def scores(self) -> dict[str, Interval]:
        """Each row's score with its interval, the best first."""
        return {self.best: self.best_score} | {c.name: c.score for c in self.comparisons}

    def __str__(self) -> str:
        """``A and B are tied; C is worse by 4.1 points [1.2, 7.0], p = 0.006``."""
        tied = self.tied
        if len(tied) == 1:
            parts = [f"{tied[0]} is best"]
        else:
            parts = [f"{', '.join(tied[:-1])} and {tied[-1]} are tied"]
        parts += [
            f"{c.name} is worse by {c.amount()}, {format_p(c.p_holm)}"
            for c in self.comparisons
            if not c.tied
        ]
        return "; ".join(parts)


def compare_to_best(
    rows: Mapping[str, Predictions],
    metric: str,
    *,
    alpha: float = 0.05,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    confidence: float = 0.95,
) -> Ranking:
    """Compare every row with the best one (by ``metric``'s estimate; the first on a tie).

    ``rows``: name → predictions, all on the same test images. Accuracy is tested with
    McNemar's exact test, every other metric with the paired bootstrap's p; the difference's
    interval is the paired bootstrap's for every metric. All comparisons use the same seed,
    so the same resamples.
    """
    if len(rows) < 2:
        raise ArgumentError("rows", f"{len(rows)} given: a comparison needs at least two")
    if not 0 < alpha < 1:
        raise ArgumentError("alpha", f"{alpha}: give a level between 0 and 1, e.g. 0.05")
    check_confidence(confidence)
    names = list(rows)
    first = rows[names[0]]
    m = first.metric(metric)
    for name in names[1:]:
        first.same_images(rows[name])
    options = {"n_resamples": n_resamples, "seed": seed, "confidence": confidence}
    scores = {name: score(rows[name], metric, **options) for name in names}
    sign = 1 if m.higher_is_better else -1
    best = max(names, key=lambda name: sign * scores[name].estimate)
    others = [name for name in names if name != best]
    tests = []
    for name in others:
        # worse_by = best − row for a score, row − best for an error
        a, b = (rows[best], rows[name]) if m.higher_is_better else (rows[name], rows[best])
        difference = paired_difference(a, b, metric, **options)
        tests.append((difference.interval, difference.p, difference.test))
    adjusted = holm([p for _, p, _ in tests])
    comparisons = tuple(
        Comparison(name, best, m, scores[name], worse_by, p, p_holm, test, p_holm > alpha)
        for name, (worse_by, p, test), p_holm in zip(others, tests, adjusted, strict=True)
    )
    return Ranking(m, best, scores[best], comparisons, alpha)


def compare_splits_to_best(
    rows: Mapping[str, Sequence[float]],
    metric: str,
    *,
    n_test: int | None = None,
    n_train: int | None = None,
    alpha: float = 0.05,
    confidence: float = 0.95,
) -> Ranking:
    """:func:`compare_to_best` over repeated splits: ``rows`` maps a name to its score on
    each of the same R splits. Each row's score is :func:`across_splits`' mean and interval,
    each comparison :func:`paired_splits`' paired t over the per-split differences (with
    Nadeau & Bengio's correction given ``n_test`` and ``n_train``), Holm across the table."""
    _check_table(rows, alpha)
    if metric not in METRICS:
        raise ArgumentError("metric", f"{metric}: choose one of {', '.join(METRICS)}")
    m = METRICS[metric]
    options = {"n_test": n_test, "n_train": n_train, "confidence": confidence}
    summaries = {name: across_splits(values, **options) for name, values in rows.items()}
    sign = 1 if m.higher_is_better else -1
    best = max(rows, key=lambda name: sign * summaries[name].mean)
    differences = {}
    for name in rows:
        if name != best:
            a, b = (best, name) if m.higher_is_better else (name, best)
            differences[name] = paired_splits(rows[a], rows[b], **options)
    return _ranked(m, best, {k: v.interval for k, v in summaries.items()}, differences, alpha)


def compare_shared_test_to_best(
    rows: Mapping[str, Any],
    metric: str,
    *,
    alpha: float = 0.05,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    confidence: float = 0.95,
) -> Ranking:
    """:func:`compare_to_best` over repeated splits that share one test split (a fixed test
    split, the val carve-out re-drawn): ``rows`` maps a name to its per-image values (R splits
    × n images, the same images in the same order for every row; accuracy: 1 correct). Each
    row's score is :func:`shared_test_summary`'s, each comparison :func:`paired_shared_test`'s
    two-way bootstrap, Holm across the table. Only a metric that is a mean over images
    (accuracy) can be split into per-image values."""
    _check_table(rows, alpha)
    if metric != "accuracy":
        raise ArgumentError("metric", f"{metric}: only accuracy is a mean of per-image values")
    options = {"n_resamples": n_resamples, "seed": seed, "confidence": confidence}
    summaries = {name: shared_test_summary(values, **options) for name, values in rows.items()}
    best = max(rows, key=lambda name: summaries[name].mean)
    differences = {
        name: paired_shared_test(rows[best], rows[name], **options) for name in rows if name != best
    }
    intervals = {k: v.interval for k, v in summaries.items()}
    return _ranked(METRICS[metric], best, intervals, differences, alpha)


def _check_table(rows: Mapping[str, Any], alpha: float) -> None:
    if len(rows) < 2:
        raise ArgumentError("rows", f"{len(rows)} given: a comparison needs at least two")
    if not 0 < alpha < 1:
        raise ArgumentError("alpha", f"{alpha}: give a level between 0 and 1, e.g. 0.05")


def _ranked(
    metric: Metric,
    best: str,
    scores: Mapping[str, Interval],
    differences: Mapping[str, Difference],
    alpha: float,
) -> Ranking:
    """The table over splits: each row against ``best`` by its difference (best − row for a
    score), Holm across the table."""
    adjusted = holm([d.p for d in differences.values()])
    comparisons = tuple(
        Comparison(
            name, best, metric, scores[name], d.interval, d.p, p_holm, d.test, p_holm > alpha
        )
        for (name, d), p_holm in zip(differences.items(), adjusted, strict=True)
    )
    return Ranking(metric, best, scores[best], comparisons, alpha)

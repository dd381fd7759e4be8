"""How far a sweep's numbers can be trusted: every score with its n and 95% interval, the
configs compared on the same images, and one-line warnings.

A sweep's scores rest on few images (44 test images on ELPV-300: ±0.14 around 0.68), and its
configs are ranked by differences of one or two of them. This module turns the per-image
predictions a sweep keeps into what the leaderboards, ``metrics.json`` and the report print,
with :mod:`featpipe.stats`: Wilson for accuracy, the seeded BCa bootstrap for every other
metric, McNemar's exact test and the paired bootstrap between configs with Holm's correction,
and the validation–test gap and below-chance warnings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from featpipe.errors import ArgumentError
from featpipe.stats import (
    METRICS,
    Interval,
    Predictions,
    Ranking,
    below_chance,
    chance_level,
    compare_shared_test_to_best,
    compare_to_best,
    gap_warning,
    score,
)

# Configs ranked image by image at most: each is a paired bootstrap (about 0.1 s); a larger
# grid is ranked among its best configs by validation score, the rest are out of the race.
MAX_RANKED = 12


@dataclass(frozen=True)
class Verdict:
    """Intervals per split (``val``: the chosen config as selection scored it; ``test``: the
    run's head), the configs' ranking on the selection images (None for a single config) and
    the warnings to print."""

    intervals: dict[str, dict[str, Interval]] = field(default_factory=dict)
    ranking: Ranking | None = None
    warnings: list[str] = field(default_factory=list)


def intervals(predictions: Predictions, only: str | None = None) -> dict[str, Interval]:
    """Every metric of the task that is defined on these images (or ``only`` that one), with
    its 95% interval (:func:`featpipe.stats.score`: Wilson for accuracy, BCa bootstrap
    otherwise, seed 0)."""
    out = {}
    for name, metric in METRICS.items():
        if metric.task != predictions.task or (name == "auroc" and predictions.scores is None):
            continue
        if only is not None and name != only:
            continue
        try:
            out[name] = score(predictions, name)
        except ArgumentError:  # undefined here (AUROC on a single-class split)
            continue
    return out


def rank(rows: Mapping[str, Sequence[Predictions]], metric: str) -> Ranking | None:
    """The rows (each config's predictions, one per seed) compared with the best on the same
    images, Holm across them; None for fewer than two rows.

    Several seeds are ranked as the sweep ranks them, by the mean over seeds: for accuracy,
    every seed's per-image correctness enters the two-way bootstrap over seeds and images
    (:func:`~featpipe.stats.compare_shared_test_to_best`), so "best" is the config the sweep
    chose. A metric that is no mean over images cannot be split that way: with several seeds
    it gets no comparison (None) rather than one seed's, which may name another best."""
    if len(rows) < 2:
        return None
    seeds = {len(predictions) for predictions in rows.values()}
    if seeds == {1}:
        return compare_to_best({name: p[0] for name, p in rows.items()}, metric)
    if metric != "accuracy" or len(seeds) != 1:
        return None
    correct = {
        name: np.stack([p.pred == p.y for p in predictions]).astype(np.float64)
        for name, predictions in rows.items()
    }
    return compare_shared_test_to_best(correct, metric)


def compared_line(selection: str, seeds: int, ranking: object) -> str:
    """The line that says how the configs stand on the same images (the CLI's and the
    report's): ``ranking`` as text, over how many seeds where there were several."""
    over = f", over their {seeds} seeds" if seeds > 1 else ""
    return f"configs on the same {selection} images{over}: {ranking}"


def warnings(
    metric: str, val: Interval | None, test: Interval | None, test_truth: Predictions | None
) -> list[str]:
    """The validation–test gap beyond the intervals, and a test score below chance, or one
    whose interval holds chance (0.43 [0.29, 0.58] on a balanced two-class test of 44 images
    is no evidence of anything learnt, though not below chance beyond noise)."""
    lines = []
    if val is not None and test is not None:
        lines.append(gap_warning(val, test, metric))
    if test is not None and test_truth is not None:
        n_classes = test_truth.n_classes or None
        chance = chance_level(metric, test_truth.y, n_classes)
        below = below_chance(test, chance, metric)
        if below is None and test.contains(chance):
            below = (
                f"{metric} {test} is not distinguishable from chance ({chance:.3g}): its 95% "
                "interval holds it"
            )
        lines.append(below)
    return [line for line in lines if line]


def assess(
    split_predictions: Mapping[str, Predictions],
    configs: Mapping[str, Sequence[Predictions]],
    metric: str,
) -> Verdict:
    """The :class:`Verdict` of a sweep: ``split_predictions`` maps ``val``/``test`` to the
    chosen head's predictions, ``configs`` each config's label to its predictions on the
    selection images (best first is not required; at most :data:`MAX_RANKED` are ranked)."""
    scored = {split: intervals(p) for split, p in split_predictions.items()}
    val, test = scored.get("val", {}).get(metric), scored.get("test", {}).get(metric)
    return Verdict(
        scored,
        rank(dict(list(configs.items())[:MAX_RANKED]), metric),
        warnings(metric, val, test, split_predictions.get("test")),
    )

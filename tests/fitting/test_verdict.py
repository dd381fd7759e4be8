"""A sweep's verdict: intervals per metric, configs ranked on the same images, warnings."""

from __future__ import annotations

import numpy as np

from featpipe.fitting.verdict import assess, intervals, rank, warnings
from featpipe.stats import Predictions, wilson

BALANCED = np.repeat([0, 1], 22)


def test_a_test_score_whose_interval_holds_chance_says_so() -> None:
    truth = Predictions.classification(BALANCED, BALANCED)
    [line] = warnings("accuracy", None, wilson(19, 44), truth)  # 0.43: the control
    assert "0.432 [0.30, 0.58] (n=44) is not distinguishable from chance (0.5)" in line
    [line] = warnings("accuracy", None, wilson(10, 44), truth)
    assert "below chance (0.5) beyond its interval" in line
    assert warnings("accuracy", None, wilson(40, 44), truth) == []


def test_a_validation_score_far_above_test_is_flagged() -> None:
    truth = Predictions.classification(BALANCED, BALANCED)
    [line] = warnings("accuracy", wilson(43, 44), wilson(30, 44), truth)
    assert "validation 0.977" in line and "more than the intervals allow" in line
    assert warnings("accuracy", wilson(32, 44), wilson(30, 44), truth) == []


def test_intervals_cover_every_metric_of_the_task_and_a_verdict_ranks_configs() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    good = np.where(rng.random(200) < 0.9, y, 1 - y)
    outputs = np.eye(2)[good] + rng.normal(0, 0.1, (200, 2))
    p = Predictions.from_outputs("classification", 2, y, outputs)
    scored = intervals(p)
    assert set(scored) == {"accuracy", "balanced_accuracy", "macro_f1", "auroc"}
    assert scored["accuracy"].method == "wilson" and scored["auroc"].n == 200
    assert set(intervals(p, only="accuracy")) == {"accuracy"}
    coin = Predictions.classification(y, rng.integers(0, 2, 200))
    verdict = assess({"test": p}, {"good": [p], "same": [p], "coin": [coin]}, "accuracy")
    assert verdict.ranking is not None and verdict.ranking.tied == ["good", "same"]
    assert "coin is worse by" in str(verdict.ranking)
    assert assess({"test": p}, {"only": [p]}, "accuracy").ranking is None


def test_several_seeds_are_ranked_by_their_mean_as_the_sweep_chooses() -> None:
    """Config a is right on 90 of 100 images with seed 0 and 60 with seeds 1 and 2 (mean
    0.70); b on 80 with every seed (0.80). The sweep chooses b by the mean; the ranking
    must call b best too, not a by its first seed, and test over all seeds' images."""
    y = np.zeros(100, dtype=int)

    def right(k: int) -> Predictions:
        return Predictions.classification(y, np.r_[np.zeros(k), np.ones(100 - k)].astype(int))

    a, b = [right(90), right(60), right(60)], [right(80)] * 3
    ranking = rank({"a": a, "b": b}, "accuracy")
    assert ranking is not None and ranking.best == "b"
    [versus] = ranking.comparisons
    # resampled over images and seeds: a's seeds disagree by 30 points, so a tie is honest
    assert versus.name == "a" and versus.test == "two-way bootstrap" and versus.tied
    assert rank({"a": a[:1], "b": b[:1]}, "accuracy").best == "a"  # one seed: its own best
    # a metric that is no mean over images is not ranked by one seed's predictions instead
    assert rank({"a": a, "b": b}, "macro_f1") is None

"""A sweep's verdict: intervals per metric, configs ranked on the same images, warnings."""

from __future__ import annotations

import numpy as np

from featpipe.fitting.verdict import assess, intervals, warnings
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
    verdict = assess({"test": p}, {"good": p, "same": p, "coin": coin}, "accuracy")
    assert verdict.ranking is not None and verdict.ranking.tied == ["good", "same"]
    assert "coin is worse by" in str(verdict.ranking)
    assert assess({"test": p}, {"only": p}, "accuracy").ranking is None

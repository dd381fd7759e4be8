"""Statistics for comparisons you can trust: every score with its n and a 95% interval, paired
comparisons on the same test images, repeated splits and few-shot draws.

Works on any predictions (numpy, scipy; no torch)::

    from featpipe import stats

    p = stats.Predictions.classification(y_true, y_pred)
    stats.score(p, "accuracy")           # 0.682 [0.53, 0.81] (n=44): Wilson
    stats.bootstrap(p, "macro_f1")       # BCa bootstrap over test images, seeded
    stats.mcnemar(p, q).p                # exact, on the images one model alone gets right
    stats.paired_bootstrap(p, q, "macro_f1")  # interval and p of the difference
    stats.paired_difference(p, q, "accuracy")  # the bootstrap's interval, McNemar's p
    print(stats.compare_to_best({"A": p, "B": q, "C": r}, "accuracy"))
    # A and B are tied; C is worse by 4.1 points [1.2, 7.0], p = 0.006

One module per job: ``interval`` (the :class:`Interval` type, Wilson), ``predictions`` (the
:class:`Predictions` type, the metrics), ``kernels`` (the metrics on many resamples at once),
``bootstrap`` (BCa over test images), ``paired`` (McNemar, paired bootstrap), ``ranking``
(Holm, ties with the best), ``splits`` (repeated splits), ``fewshot`` (few-shot curve points),
``trust`` (chance level, below-chance and validation–test gap warnings).
"""

from featpipe.stats.bootstrap import bootstrap, score
from featpipe.stats.fewshot import few_shot_interval
from featpipe.stats.interval import Interval, wilson
from featpipe.stats.paired import (
    Difference,
    McNemar,
    mcnemar,
    paired_bootstrap,
    paired_difference,
)
from featpipe.stats.predictions import METRICS, Metric, Predictions
from featpipe.stats.ranking import (
    Comparison,
    Ranking,
    compare_shared_test_to_best,
    compare_splits_to_best,
    compare_to_best,
    holm,
)
from featpipe.stats.splits import (
    SplitSummary,
    across_splits,
    paired_shared_test,
    paired_splits,
    shared_test_summary,
)
from featpipe.stats.trust import below_chance, chance_level, gap_warning

__all__ = [
    "METRICS",
    "Comparison",
    "Difference",
    "Interval",
    "McNemar",
    "Metric",
    "Predictions",
    "Ranking",
    "SplitSummary",
    "across_splits",
    "below_chance",
    "bootstrap",
    "chance_level",
    "compare_shared_test_to_best",
    "compare_splits_to_best",
    "compare_to_best",
    "few_shot_interval",
    "gap_warning",
    "holm",
    "mcnemar",
    "paired_bootstrap",
    "paired_difference",
    "paired_shared_test",
    "paired_splits",
    "score",
    "shared_test_summary",
    "wilson",
]

"""Holm's correction against the textbook step-down rule, and tables of models compared with
their best row."""

from __future__ import annotations

import re

import numpy as np
import pytest

from featpipe.errors import ArgumentError
from featpipe.stats import (
    Predictions,
    compare_splits_to_best,
    compare_to_best,
    holm,
    mcnemar,
    paired_bootstrap,
)
from oracles import classifier


def step_down(p_values: list[float], alpha: float) -> list[bool]:
    """Holm (1979) as the textbook states it: order the p values; reject H(1), H(2), ... while
    p(i) ≤ alpha / (m − i + 1); stop at the first that is not."""
    m = len(p_values)
    rejected = [False] * m
    for i, index in enumerate(sorted(range(m), key=p_values.__getitem__), start=1):
        if p_values[index] > alpha / (m - i + 1):
            break
        rejected[index] = True
    return rejected


def test_holm_by_hand() -> None:
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → kept at 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.02]) == [0.02]
    assert holm([]) == []


def test_holm_rejects_exactly_what_the_step_down_rule_rejects() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        m = int(rng.integers(1, 9))
        p = list(rng.uniform(0, 0.2, size=m) ** 2)
        adjusted = holm(p)
        for alpha in (0.01, 0.05, 0.1):
            assert [a <= alpha for a in adjusted] == step_down(p, alpha)


def table(rng: np.random.Generator, n: int = 400) -> dict[str, Predictions]:
    """A (75% right), B (A with 4 of its images changed: tied), C (55% right: worse),
    D (A under another name); in an order that does not start with the best."""
    y, pred_a = classifier(rng, n, [0.5, 0.5], 0.5)
    pred_b = pred_a.copy()
    pred_b[:4] = 1 - pred_b[:4]
    pred_c = np.where(rng.random(n) < 0.55, y, 1 - y)
    rows = {"C": pred_c, "B": pred_b, "A": pred_a, "D": pred_a.copy()}
    return {name: Predictions.classification(y, pred) for name, pred in rows.items()}


def test_compare_to_best_ties_the_noise_and_says_how_much_worse_the_rest_is() -> None:
    rows = table(np.random.default_rng(1))
    accuracies = {k: float(np.mean(p.y == p.pred)) for k, p in rows.items()}
    ranking = compare_to_best(rows, "accuracy")
    assert ranking.best == max(accuracies, key=accuracies.__getitem__)
    assert set(ranking.tied) == {"A", "B", "D"} and ranking.tied[0] == ranking.best
    text = str(ranking)
    assert re.fullmatch(
        r"\w, \w and \w are tied; C is worse by \d+(\.\d)? points \[\d+(\.\d)?, \d+(\.\d)?\], "
        r"p (= 0\.\d+|< 0\.001)",
        text,
    ), text
    by_name = {c.name: c for c in ranking.comparisons}
    best = rows[ranking.best]
    for name, c in by_name.items():
        # accuracy: McNemar's p, Holm over the table; the interval is the paired bootstrap's
        assert c.p == mcnemar(best, rows[name]).p and c.test == "McNemar exact"
        assert c.worse_by == paired_bootstrap(best, rows[name], "accuracy").interval
        assert c.worse_by.estimate == pytest.approx(accuracies[ranking.best] - accuracies[name])
    names = list(by_name)
    assert [by_name[k].p_holm for k in names] == holm([by_name[k].p for k in names])
    assert by_name["C"].p_holm < 0.05 and by_name["C"].worse_by.low > 0
    assert ranking.scores[ranking.best].estimate == accuracies[ranking.best]


def test_an_error_metric_ranks_the_smallest_best_and_other_metrics_use_the_bootstrap_p() -> None:
    rng = np.random.default_rng(2)
    truth = rng.normal(size=300)
    rows = {
        name: Predictions.regression(truth, truth + rng.normal(0, sd, size=300))
        for name, sd in (("wide", 1.5), ("sharp", 0.5), ("sharp too", 0.52))
    }
    ranking = compare_to_best(rows, "mae")
    assert ranking.best == "sharp"
    by_name = {c.name: c for c in ranking.comparisons}
    assert by_name["wide"].worse_by.estimate > 0 and not by_name["wide"].tied
    assert by_name["sharp too"].tied
    expected = paired_bootstrap(rows["wide"], rows["sharp"], "mae")
    assert by_name["wide"].worse_by == expected.interval and by_name["wide"].p == expected.p
    assert str(by_name["sharp too"]).startswith("sharp too is tied with sharp (p = ")
    assert "points" not in str(ranking)  # MAE is in the target's units


def test_a_table_needs_two_rows_on_the_same_images() -> None:
    rows = table(np.random.default_rng(3))
    with pytest.raises(ArgumentError, match="at least two"):
        compare_to_best({"A": rows["A"]}, "accuracy")
    shifted = Predictions.classification(np.roll(rows["A"].y, 1), rows["A"].pred)
    with pytest.raises(ArgumentError, match="same test images"):
        compare_to_best({"A": rows["A"], "shifted": shifted}, "accuracy")


def test_a_difference_that_holm_does_not_carry_across_the_table_is_a_tie() -> None:
    """B loses 10 images A gets right and wins 2: McNemar's p = 0.039 alone, so B is worse
    than A in a table of two; beside two rows that differ from A by noise (5 images each
    way), Holm's adjusted p is 3 × 0.039 = 0.12 and B is tied."""
    y = np.zeros(200, dtype=int)
    a = np.zeros(200, dtype=int)
    a[:20] = 1  # A gets 180 right
    b = a.copy()
    b[20:30], b[:2] = 1, 0  # 10 more wrong, 2 more right
    noise_c, noise_d = a.copy(), a.copy()
    noise_c[20:25], noise_c[:5] = 1, 0
    noise_d[30:35], noise_d[5:10] = 1, 0
    preds = (a, b, noise_c, noise_d)
    rows = {k: Predictions.classification(y, p, 2) for k, p in zip("ABCD", preds, strict=True)}
    pair = compare_to_best({"A": rows["A"], "B": rows["B"]}, "accuracy")
    [b_alone] = pair.comparisons
    assert b_alone.p == pytest.approx(0.0386, abs=1e-4) and not b_alone.tied
    ranking = compare_to_best(rows, "accuracy")
    assert ranking.best == "A"
    b_in_table = {c.name: c for c in ranking.comparisons}["B"]
    assert b_in_table.p == b_alone.p and b_in_table.p_holm == pytest.approx(3 * b_alone.p)
    assert b_in_table.tied and str(ranking) == "A, B, C and D are tied"


def test_compare_splits_to_best_is_holm_over_paired_t_tests() -> None:
    """Oracle: scipy's paired t-test over the per-split differences, Holm across the table."""
    from scipy.stats import ttest_rel

    rng = np.random.default_rng(4)
    base = rng.normal(0.8, 0.02, 10)
    rows = {
        "A": base + 0.03,
        "B": base + 0.03 + rng.normal(0, 0.005, 10),
        "C": base + rng.normal(0, 0.005, 10),
    }
    ranking = compare_splits_to_best(rows, "accuracy")
    best = ranking.best
    assert best in ("A", "B") and ranking.best_score.n == 10
    raw = {c.name: ttest_rel(rows[best], rows[c.name]).pvalue for c in ranking.comparisons}
    adjusted = dict(zip(raw, holm(list(raw.values())), strict=True))
    for c in ranking.comparisons:
        assert c.p == pytest.approx(raw[c.name]) and c.p_holm == pytest.approx(adjusted[c.name])
    by_name = {c.name: c for c in ranking.comparisons}
    assert not by_name["C"].tied and by_name["C"].worse_by.low > 0
    assert "C is worse by" in str(ranking)
    same = compare_splits_to_best({"x": list(base), "y": list(base)}, "accuracy")
    assert same.comparisons[0].p == 1 and same.comparisons[0].tied
    # the corrected t (Nadeau & Bengio) is wider than the plain one
    wide = compare_splits_to_best(rows, "accuracy", n_test=100, n_train=400)
    w = {c.name: c.worse_by for c in wide.comparisons}
    assert all(w[n].high - w[n].low > by_name[n].worse_by.high - by_name[n].worse_by.low for n in w)


def test_per_query_scores_compare_query_by_query_and_a_set_with_itself_is_tied() -> None:
    """Retrieval's comparisons: the paired bootstrap over the same queries, Holm."""
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 4, size=200)
    good = np.clip(rng.beta(4, 1, size=200), 0, 1)
    worse = np.clip(good - rng.uniform(0.05, 0.3, size=200), 0, 1)
    rows = {
        "a": Predictions.per_query(labels, good),
        "a again": Predictions.per_query(labels, good.copy()),  # the same set, another name
        "b": Predictions.per_query(labels, worse),
    }
    ranking = compare_to_best(rows, "mean")
    assert ranking.best == "a" and ranking.tied == ["a", "a again"]
    same, other = ranking.comparisons
    assert (same.p, same.p_holm, same.worse_by.estimate) == (1.0, 1.0, 0.0)
    assert not other.tied and other.worse_by.low > 0 and other.test == "paired bootstrap BCa"
    assert other.worse_by.estimate == pytest.approx(good.mean() - worse.mean(), abs=1e-12)
    assert "b is worse by" in str(ranking) and "points" in str(ranking)

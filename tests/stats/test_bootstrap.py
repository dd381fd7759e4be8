"""The bootstrap over test images: its kernels compute exactly what featpipe.heads.metrics
reports, its intervals are scipy.stats.bootstrap's BCa intervals within Monte-Carlo error, and
they cover the truth 95% of the time."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from featpipe.errors import ArgumentError
from featpipe.heads import metrics
from featpipe.stats import METRICS, Predictions, bootstrap, score, wilson
from featpipe.stats.bootstrap import draw_counts, resample
from featpipe.stats.kernels import Atoms, kernel
from oracles import N_RESAMPLES, assert_agrees_with_scipy_bca, classifier, macro_f1


def reported(p: Predictions, name: str, idx: np.ndarray) -> float:
    """What the project reports for the images ``idx`` of ``p``."""
    if p.task == "regression":
        return metrics.regression(p.y[idx], p.pred[idx])[name]
    scores = None if p.scores is None else p.scores[idx]
    return metrics.classification(p.y[idx], p.pred[idx], p.n_classes, scores)[name]


def cases(rng: np.random.Generator) -> list[tuple[str, Predictions]]:
    # 12 images of 4 classes, scored as 5 classes: resamples lose classes, one class is
    # never present (balanced accuracy's "present" and macro-F1's "all labels" both matter)
    y, pred = classifier(rng, 12, [0.4, 0.3, 0.2, 0.1], 0.6)
    small = Predictions.classification(y, pred, n_classes=5)
    y, _ = classifier(rng, 40, [0.7, 0.3], 0.0)
    margins = np.round(rng.normal(size=40) + y, 1)  # rounded: ties within and across classes
    two_col = Predictions.classification(
        y, (margins > 0.5).astype(int), 2, np.column_stack([-margins / 2, margins / 2])
    )
    one_col = Predictions.classification(y, (margins > 0.5).astype(int), 2, margins)
    target = rng.normal(size=30)
    regression = Predictions.regression(target, target + rng.standard_t(3, size=30))
    out = [(m, small) for m in ("accuracy", "balanced_accuracy", "macro_f1")]
    out += [("auroc", two_col), ("auroc", one_col)]
    return out + [(m, regression) for m in ("r2", "mae", "mse")]


@pytest.mark.parametrize("index", range(8))
def test_kernels_compute_the_reported_metric_on_every_resample_and_jackknife(index: int) -> None:
    rng = np.random.default_rng(index)
    name, p = cases(rng)[index]
    atoms = Atoms.of([p], METRICS[name])
    k = kernel(METRICS[name], atoms, 0, p.n_classes)
    rows = rng.integers(0, len(p), size=(50, len(p)))
    counts = np.stack([np.bincount(atoms.inverse[r], minlength=len(atoms)) for r in rows])
    ours = k.values(counts.astype(np.float64))
    theirs = np.array([reported(p, name, r) for r in rows])
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)  # NaN where both are
    left_out = np.array([reported(p, name, np.delete(np.arange(len(p)), i)) for i in range(len(p))])
    np.testing.assert_allclose(k.jackknife()[atoms.inverse], left_out, rtol=1e-12, atol=1e-12)


def test_atoms_of_two_models_keep_each_models_predictions() -> None:
    rng = np.random.default_rng(5)
    y, pa = classifier(rng, 60, [0.5, 0.3, 0.2], 0.7)
    pb = np.where(rng.random(60) < 0.5, y, pa)
    a, b = Predictions.classification(y, pa, 3), Predictions.classification(y, pb, 3)
    atoms = Atoms.of([a, b], METRICS["macro_f1"])
    full = atoms.counts[None, :].astype(np.float64)
    for model, p in enumerate((a, b)):
        value = kernel(METRICS["macro_f1"], atoms, model, 3).values(full)[0]
        assert value == pytest.approx(reported(p, "macro_f1", np.arange(60)), abs=1e-12)


def agreement_cases(rng: np.random.Generator):
    y, pred = classifier(rng, 400, [0.5, 0.5], 0.6)
    yield "accuracy", Predictions.classification(y, pred), (y == pred,), np.mean, 1 / 400
    y, pred = classifier(rng, 300, [0.7, 0.2, 0.1], 0.75)
    yield "macro_f1", Predictions.classification(y, pred, 3), (y, pred), macro_f1, 0.0
    # lognormal errors: a skewed MAE, where BCa and percentile intervals differ by ~0.2-0.3
    # standard errors (a percentile interval fails this comparison)
    truth = rng.normal(size=300)
    err = rng.lognormal(0, 1, size=300) * rng.choice([-1, 1], size=300)
    yield "mae", Predictions.regression(truth, truth + err), (np.abs(err),), np.mean, 0.0


@pytest.mark.parametrize("index", range(3))
def test_bootstrap_agrees_with_scipy_bca_within_monte_carlo_error(index: int) -> None:
    name, p, data, statistic, step = list(agreement_cases(np.random.default_rng(11)))[index]
    ours = bootstrap(p, name, n_resamples=N_RESAMPLES, seed=1)
    assert_agrees_with_scipy_bca(ours, data, lambda *a, axis=-1: statistic(*a, axis=axis), step)


def imbalanced(rng: np.random.Generator, n: int) -> Predictions:
    """An ELPV-like test set: 3:1 classes, recall 0.9 on the majority and 0.7 on the minority
    class, so the true balanced accuracy is 0.8."""
    y = (rng.random(n) < 0.25).astype(int)
    right = np.where(y == 1, rng.random(n) < 0.7, rng.random(n) < 0.9)
    return Predictions.classification(y, np.where(right, y, 1 - y), 2)


@pytest.mark.parametrize("n", [44, 500])
def test_bootstrap_covers_the_true_balanced_accuracy_95_percent_of_the_time(n: int) -> None:
    """1,000 simulated test sets per size (fewer than Wilson's 4,000, for time: the
    Monte-Carlo standard deviation of the coverage is then 0.7 points)."""
    rng = np.random.default_rng(n)
    covered = [
        bootstrap(imbalanced(rng, n), "balanced_accuracy", n_resamples=1000, seed=s).contains(0.8)
        for s in range(1000)
    ]
    assert 0.93 <= np.mean(covered) <= 0.97


def test_the_same_seed_gives_the_same_interval_and_another_seed_another() -> None:
    rng = np.random.default_rng(3)
    truth = rng.normal(size=80)
    p = Predictions.regression(truth, truth + rng.normal(size=80))
    assert bootstrap(p, "r2", seed=7) == bootstrap(p, "r2", seed=7)
    assert bootstrap(p, "r2", seed=7) != bootstrap(p, "r2", seed=8)
    y, pred = classifier(rng, 80, [0.5, 0.5], 0.5)
    q = Predictions.classification(y, pred)
    assert bootstrap(q, "macro_f1", seed=7) == bootstrap(q, "macro_f1", seed=7)


def test_score_gives_accuracy_its_wilson_interval_and_other_metrics_the_bootstrap() -> None:
    y, pred = classifier(np.random.default_rng(4), 44, [0.5, 0.5], 0.6)
    p = Predictions.classification(y, pred)
    assert score(p, "accuracy") == wilson(int(np.sum(y == pred)), 44)
    assert score(p, "macro_f1") == bootstrap(p, "macro_f1")
    assert score(p, "macro_f1").method.startswith("bootstrap BCa, 2000 resamples")


def test_bad_requests_are_refused_with_the_parameter_named() -> None:
    y, pred = classifier(np.random.default_rng(4), 20, [0.5, 0.5], 0.6)
    p = Predictions.classification(y, pred)
    for kwargs, param in [
        ({"metric": "r2"}, "metric"),  # a regression metric on a classifier
        ({"metric": "auroc"}, "metric"),  # no scores given
        ({"metric": "accuracy", "n_resamples": 200}, "n_resamples"),
        ({"metric": "accuracy", "seed": -1}, "seed"),
    ]:
        with pytest.raises(ArgumentError) as err:
            bootstrap(p, **kwargs)
        assert err.value.param == param
    with pytest.raises(ArgumentError, match="pred has 19 values"):
        Predictions.classification(y, pred[:-1])
    with pytest.raises(ArgumentError, match="n_classes"):
        Predictions.classification(y, pred, n_classes=1)
    with pytest.raises(ArgumentError, match="scores"):
        Predictions.classification(y, pred, 3, scores=np.zeros((20, 3)))


@pytest.mark.parametrize("n_atoms", [3, 400])  # few atoms: multinomial rows; many: index rows
def test_resamples_draw_every_image_once_on_average_and_n_in_all(n_atoms: int) -> None:
    rng = np.random.default_rng(9)
    y = rng.normal(size=400) if n_atoms == 400 else rng.integers(0, 3, 400).astype(float)
    atoms = Atoms.of([Predictions.regression(y, y)], METRICS["mae"])
    assert len(atoms) == n_atoms
    counts = np.concatenate(list(draw_counts(atoms, 4000, rng)))
    assert counts.shape == (4000, n_atoms) and np.all(counts.sum(axis=1) == 400)
    # each atom is drawn its share of n on average: Poisson-like spread √(c/4000) per atom
    mean = counts.mean(axis=0)
    assert np.all(np.abs(mean - atoms.counts) < 5 * np.sqrt(atoms.counts / 4000) + 1e-9)


def test_predictions_from_a_heads_outputs_score_as_heads_metrics_does() -> None:
    rng = np.random.default_rng(6)
    y = rng.integers(0, 2, 60)
    outputs = rng.normal(size=(60, 2)) + np.eye(2)[y]
    p = Predictions.from_outputs("classification", 2, y, outputs)
    for name, value in metrics.from_outputs("classification", 2, y, outputs).items():
        assert bootstrap(p, name).estimate == pytest.approx(value, abs=1e-12)
    target = rng.normal(size=60)
    outputs = (target + rng.normal(size=60))[:, None]
    r = Predictions.from_outputs("regression", 0, target, outputs)
    for name, value in metrics.from_outputs("regression", 0, target, outputs).items():
        assert bootstrap(r, name).estimate == pytest.approx(value, abs=1e-12)


def test_every_compared_model_needs_what_the_metric_reads() -> None:
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 40)
    scored = Predictions.classification(y, y, 2, scores=rng.normal(size=40))
    unscored = Predictions.classification(y, 1 - y, 2)
    with pytest.raises(ArgumentError, match="auroc needs the head's scores"):
        resample([scored, unscored], METRICS["auroc"], 1000, 0)
    with pytest.raises(ArgumentError, match="n_classes differs"):
        resample([scored, Predictions.classification(y, y, 3)], METRICS["accuracy"], 1000, 0)


def test_featpipe_stats_runs_without_importing_torch() -> None:
    script = (
        "import sys, numpy as np; from featpipe import stats; "
        "p = stats.Predictions.classification(np.arange(40) % 2, np.arange(40) % 3 % 2); "
        "stats.compare_to_best({'a': p, 'b': p}, 'macro_f1'); "
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.stdout.strip() == "NO-TORCH", done.stderr


def per_query_case(rng: np.random.Generator, n: int = 300) -> tuple[Predictions, np.ndarray]:
    """Per-query APs of a retrieval: skewed values in [0, 1], many exactly 1, a few 0."""
    values = np.clip(rng.beta(2, 0.7, size=n) + rng.choice([0, 0.3], size=n), 0, 1)
    values[rng.random(n) < 0.05] = 0.0
    return Predictions.per_query(rng.integers(0, 5, size=n), values), values


def test_the_mean_of_per_query_scores_resamples_as_numpy_means_them() -> None:
    """``mean`` (retrieval's recall@k and mAP@R): the kernel on every resample and jackknife
    is the plain mean of the drawn queries' values; its interval is scipy's BCa."""
    rng = np.random.default_rng(21)
    p, values = per_query_case(rng)
    atoms = Atoms.of([p], METRICS["mean"])
    k = kernel(METRICS["mean"], atoms, 0, p.n_classes)
    rows = rng.integers(0, len(p), size=(50, len(p)))
    counts = np.stack([np.bincount(atoms.inverse[r], minlength=len(atoms)) for r in rows])
    np.testing.assert_allclose(k.values(counts.astype(np.float64)), values[rows].mean(axis=1))
    left_out = np.array([np.delete(values, i).mean() for i in range(len(values))])
    np.testing.assert_allclose(k.jackknife()[atoms.inverse], left_out, rtol=1e-12)
    ours = bootstrap(p, "mean", n_resamples=N_RESAMPLES, seed=1)
    assert score(p, "mean") == bootstrap(p, "mean")  # no closed form: the bootstrap
    assert_agrees_with_scipy_bca(ours, (values,), lambda v, axis=-1: v.mean(axis=axis))


def test_per_query_scores_are_checked() -> None:
    with pytest.raises(ArgumentError, match=r"^values must lie between 0 and 1"):
        Predictions.per_query([0, 1], [0.5, 1.5])
    with pytest.raises(ArgumentError, match=r"^labels must hold class indices"):
        Predictions.per_query([0.5, 1], [0.5, 1.0])
    with pytest.raises(ArgumentError, match=r"^metric accuracy: for per_query, choose one of mean"):
        score(Predictions.per_query([0, 1], [0.5, 1.0]), "accuracy")

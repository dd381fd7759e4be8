"""Sweeps: selection on validation only, CV without a val split, seeds, few-shot, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import free_port, rank_env
from featpipe.cache.entry import Features
from featpipe.errors import ArgumentError, FeatpipeError
from featpipe.fitting.features import concatenate
from featpipe.fitting.options import parse_shots
from featpipe.fitting.sweep import few_shot, plan_shots, stratified_sample, sweep
from featpipe.heads.config import HeadConfig, expand
from featpipe.heads.fitted import fit_heads
from featpipe.heads.train_data import TrainData
from featpipe.runs.predictions import SELECTION_TEST

GRID = expand({"lr": [1e-4, 1e-2, 1.0], "head": ["linear"]}, HeadConfig(epochs=5))


def features(
    n: int = 900, d: int = 16, c: int = 3, splits=("train", "val", "test"), seed: int = 0
) -> Features:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    labels = (X @ rng.normal(size=(d, c))).argmax(axis=1)
    split = np.array([splits[i % len(splits)] for i in range(n)], dtype=object)
    return Features(
        X,
        labels,
        np.full(n, np.nan),
        split,
        np.array([f"{i}.png" for i in range(n)], dtype=object),
        [f"c{i}" for i in range(c)],
        "classification",
    )


def test_selection_never_looks_at_test() -> None:
    honest = features()
    poisoned = features()
    test = poisoned.split == "test"
    poisoned.labels[test] = (poisoned.labels[test] + 1) % 3  # test labels that reward bad heads
    a, b = sweep(honest, GRID), sweep(poisoned, GRID)
    assert a.best.config == b.best.config
    assert [c.val for c in a.candidates] == [c.val for c in b.candidates]
    assert b.best.test[0]["accuracy"] < 0.5 < a.best.test[0]["accuracy"]
    tested = [c for c in a.candidates if c.test]
    assert tested == [a.best]  # the test split was scored for the chosen config only


def test_cross_validation_when_there_is_no_val_split() -> None:
    result = sweep(features(splits=("train", "train", "test")), GRID, cv=3)
    assert result.selection == "cv3"
    assert result.best.heads and result.best.test  # refitted on all of train, then tested


@pytest.mark.parametrize("splits", [("train", "val", "test"), ("train", "train", "test")])
def test_every_seed_s_predictions_are_kept_and_the_ranking_names_the_chosen_best(splits) -> None:
    """Per seed, the prediction on every selection image (val, or out of fold after CV) is its
    outputs' argmax; the ranking compares configs by their mean over seeds, as the choice does."""
    data = features(splits=splits)
    result = sweep(data, GRID, seeds=3, cv=3)
    on = data.split == "val" if "val" in splits else data.split == "train"
    for cand in result.candidates:
        assert len(cand.seed_predictions) == 3 and all(
            len(p) == on.sum() for p in cand.seed_predictions
        )
        np.testing.assert_array_equal(cand.seed_predictions[0], cand.val_outputs.argmax(axis=1))
        accuracy = [np.mean(p == data.y[on]) for p in cand.seed_predictions]
        np.testing.assert_allclose(np.mean(accuracy), cand.mean("accuracy"))
    ranked = result.verdict.ranking
    assert ranked is not None and ranked.best == result.best.config.label(["lr"])


def test_the_chosen_config_is_refitted_on_train_and_val_and_that_head_is_tested() -> None:
    data = features()
    result = sweep(data, GRID, seeds=2)
    assert result.trained_on == "train+val" and result.refit_note == ""
    both = data.split != "test"
    test = data.split == "test"
    # the refit is the chosen config fitted on train + val, seed for seed, with no val to watch
    refits = fit_heads(
        [replace(result.best.config, seed=s) for s in (0, 1)],
        TrainData(data.X[both], data.y[both], None, None, data.class_names, data.task),
        1,
    )
    for head, again, scores in zip(result.best.heads, refits, result.best.test, strict=True):
        out = head.decision_function(data.X[test])
        np.testing.assert_allclose(out, again.decision_function(data.X[test]), atol=1e-5)
        assert scores["accuracy"] == pytest.approx((out.argmax(1) == data.y[test]).mean())
    assert result.best_head is result.best.heads[0]
    # selection's own heads (train only) are kept, tested too, and are other heads
    assert len(result.selection_heads) == len(result.test_before_refit) == 2
    kept = result.selection_heads[0].decision_function(data.X[test])
    assert not np.allclose(kept, result.best_head.decision_function(data.X[test]), atol=1e-3)
    # ... and their test outputs recorded beside the refitted head's (a fine-tune starts there)
    recorded = result.predictions.splits
    np.testing.assert_allclose(recorded[SELECTION_TEST].outputs, kept, atol=1e-6)
    assert np.array_equal(recorded[SELECTION_TEST].relpath, recorded["test"].relpath)
    # selection itself is unchanged by the refit
    alone = sweep(data, GRID, seeds=2, refit=False)
    assert [c.val for c in alone.candidates] == [c.val for c in result.candidates]
    assert alone.trained_on == "train" and not alone.selection_heads
    assert SELECTION_TEST not in alone.predictions.splits  # its test head is selection's
    assert alone.best.test == result.test_before_refit


def test_a_head_that_stops_early_on_val_is_not_refitted_and_says_why() -> None:
    result = sweep(features(), [HeadConfig(head="linear", epochs=5, patience=2)])
    assert result.trained_on == "train" and not result.selection_heads
    assert "early stopping" in result.refit_note


def test_seeds_give_mean_and_std() -> None:
    result = sweep(features(), GRID[:1], seeds=3)
    cand = result.best
    assert len(cand.val) == len(cand.test) == 3
    accuracies = [scores["accuracy"] for scores in cand.val]
    assert len(set(accuracies)) > 1  # the seeds changed the heads (init and batch order)
    assert cand.std("accuracy") == pytest.approx(np.std(accuracies), abs=1e-12)
    assert cand.std("accuracy") > 0
    assert [r["seed"] for r in result.rows()] == [0, 1, 2]


def test_few_shot_sampler_is_stratified_and_reproducible() -> None:
    labels = np.array([0] * 50 + [1] * 30 + [2] * 3)
    first = stratified_sample(labels, 5, seed=1)
    assert np.bincount(labels[first]).tolist() == [5, 5, 3]
    assert np.array_equal(first, stratified_sample(labels, 5, seed=1))
    assert not np.array_equal(first, stratified_sample(labels, 5, seed=2))


@pytest.mark.parametrize("seed", range(20))
def test_few_shot_draws_are_without_replacement_and_nested(seed: int) -> None:
    """The draw's contract, over many seeds: no image twice, k per class (all of a smaller
    class), and a seed's draws nested as the shot count rises."""
    labels = np.random.default_rng(100 + seed).integers(0, 4, size=60)
    counts = np.bincount(labels, minlength=4)
    previous = np.array([], dtype=int)
    for shots in (1, 2, 5, 10, 30):
        drawn = stratified_sample(labels, shots, seed)
        assert len(np.unique(drawn)) == len(drawn)  # without replacement
        assert (
            np.bincount(labels[drawn], minlength=4).tolist() == np.minimum(counts, shots).tolist()
        )
        assert set(previous) <= set(drawn)  # nested
        previous = drawn


def test_few_shot_curve_rises_with_data() -> None:
    curve = few_shot(features(n=1500), HeadConfig(head="logreg"), parse_shots("1,10,all"), 3)
    assert [p.shots for p in curve] == [1, 10, "all"]
    assert [p.draws for p in curve] == [3, 3, 1]
    assert curve[0].mean < curve[-1].mean
    with pytest.raises(ArgumentError, match="shots 0,5: use positive whole numbers"):
        parse_shots("0,5")


def test_shot_counts_above_the_smallest_class_are_left_out_and_said() -> None:
    """Train with 42 images in its smallest class: a '50 per class' point would be an
    unbalanced sample (or all of train), so it is left out and the result says why."""
    f = features(n=900)
    train = np.flatnonzero(f.split == "train")
    smallest = train[f.labels[train] == 2]
    f.split[smallest[42:]] = "unused"  # class c2 keeps 42 training images
    assert np.bincount(f.where("train").labels).min() == 42
    result = sweep(f, GRID[:1], shots=parse_shots("1,5,10,50,all"), draws=2)
    assert [p.shots for p in result.few_shot] == [1, 5, 10, "all"]
    assert result.few_shot_note == (
        "few-shot: 50 per class left out: the smallest train class (c2) has 42 images; "
        "the 'all' point uses every training image"
    )
    kept, note = plan_shots([1, 50, 60], f.where("train").labels, f.class_names)
    assert kept == [1, "all"] and "50, 60 per class left out" in note  # 'all' stands in for them
    assert plan_shots([1, 42, "all"], f.where("train").labels, f.class_names) == (
        [1, 42, "all"],
        "",
    )


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.X.__setitem__((3, 2), np.nan), "hold NaN or inf"),
        (lambda f: f.labels.__setitem__(f.split == "train", 0), "train split has only one"),
        (lambda f: f.labels.__setitem__(f.split == "val", 1), "val split has only one class"),
        (lambda f: f.split.__setitem__(f.split == "train", "val"), "train split is empty"),
    ],
)
def test_bad_features_are_clear_errors(mutate, message: str) -> None:
    f = features()
    mutate(f)
    with pytest.raises(FeatpipeError, match=message):
        sweep(f, GRID)


def test_caches_with_different_label_sets_refuse_to_join() -> None:
    a, b = features(), features(c=4)
    with pytest.raises(FeatpipeError, match="caches with different label sets"):
        concatenate([a, b], ["a", "b"])
    joined = concatenate([a, features(seed=1)], ["a", "b"])
    assert joined.X.shape == (900, 32)


# One torchrun rank: record the configs this rank fits, run the selection, print both as JSON.
RANK_SCRIPT = """
import json, sys
sys.path[:0] = sys.argv[1:]  # this folder and tests/, where conftest is
from test_sweep import SPLIT_GRID, features
import featpipe.fitting.sweep as sw
fitted, real = [], sw.fit_heads
def recording(runs, *args, **kwargs):
    fitted.extend(config.label(["lr"]) for config in runs)
    return real(runs, *args, **kwargs)
sw.fit_heads = recording
candidates, selection = sw.select(features(n=300), SPLIT_GRID)
print(json.dumps({"fitted": fitted, "selection": selection, "val": [c.val for c in candidates]}))
"""
SPLIT_GRID = expand({"head": ["linear", "logreg", "knn"], "lr": [1e-3, 1e-2]}, HeadConfig(epochs=3))


def test_torchrun_deals_configs_out_with_a_val_split(monkeypatch) -> None:
    """Two gloo ranks with a val split: each fits its own share of the grid (none fits all of
    it), and every rank ends with the scores of the whole grid, equal to one process's."""
    port = str(free_port())
    procs = []
    for rank in (0, 1):
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", RANK_SCRIPT, *map(str, Path(__file__).parents[:2])],
                env=rank_env(rank, 2, port),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    every = [config.label(["lr"]) for config in SPLIT_GRID]
    first, second = (set(o["fitted"]) for o in outs)
    assert first and second and not first & second  # each config fitted on one rank only
    assert sorted(first | second) == sorted(every)
    import featpipe.fitting.sweep as sw

    alone, selection = sw.select(features(n=300), SPLIT_GRID)
    assert outs[0]["selection"] == outs[1]["selection"] == selection == "val"
    assert outs[0]["val"] == outs[1]["val"] == [c.val for c in alone]

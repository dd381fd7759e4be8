"""Sweeps: fit a grid of heads, choose on validation data, report test once, few-shot curves.

Selection never sees the test split: candidates are compared on the validation split, or by
k-fold cross-validation of the training split when there is none. The chosen config is then
fitted again on every labelled image selection held back (the refit: train + val after a val
split, train after CV), as CLIP_benchmark's probe and scikit-learn's ``*CV`` estimators do; with
bench_probe's splits (val a quarter the size of train) it was worth 0.5-0.7 points of test
accuracy on ELPV, Fashion-MNIST and MNIST (benchmarks/bench_probe.py).
The test split is scored afterwards, once, for the chosen config only (for each of its seeds);
the head that selection fitted on train alone is kept beside it (fine-tuning starts from it, so
its epochs are still chosen on images it has not seen).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import replace

import numpy as np

from featpipe import stats
from featpipe.cache.entry import Features, FeatureSet
from featpipe.errors import ArgumentError, DataError
from featpipe.fitting import streaming
from featpipe.fitting.calibrate import calibration
from featpipe.fitting.run import Candidate, SweepResult
from featpipe.heads import metrics
from featpipe.heads.config import HeadConfig
from featpipe.heads.fitted import FittedHead, decision_functions, fit_heads
from featpipe.heads.preprocess import Rows
from featpipe.heads.stacked import group_key
from featpipe.heads.train_data import TrainData
from featpipe.heads.views import TrainViews
from featpipe.runs.metrics import Calibration, FewShotPoint, Predictions
from featpipe.runs.predictions import SELECTION_TEST, RunPredictions, SplitOutputs
from featpipe.runtime import distributed


def _check(features: FeatureSet) -> None:
    """Splits a sweep can use; finite features (a streamed entry is checked as it is read)."""
    features.check_finite()
    train = features.labels[features.split == "train"]
    if len(train) == 0:
        raise DataError("the train split is empty: add training images or a split column")
    if features.task == "classification":
        present = np.unique(train)
        if len(present) < 2:
            raise DataError(
                f"the train split has only one class ({features.class_names[present[0]]}): "
                "a classifier needs at least two"
            )
    for split in ("val", "test"):
        part = features.labels[features.split == split]
        if features.task == "classification" and len(part) > 0 and len(np.unique(part)) < 2:
            raise DataError(
                f"the {split} split has only one class: its accuracy would say nothing; "
                "rebalance the split"
            )


def _folds(y: np.ndarray, task: str, k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import KFold, StratifiedKFold

    if task == "classification":
        smallest = int(np.bincount(y).min()) if len(y) else 0
        k = max(2, min(k, smallest)) if smallest >= 2 else 2
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        return list(splitter.split(np.zeros(len(y)), y))
    return list(KFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(y))))


def fit_grid(runs: list[HeadConfig], data: TrainData, n_jobs: int) -> list[FittedHead]:
    """:func:`fit_heads`, with the grid dealt out to torchrun ranks when there are several.

    Every selection mode fits through here (validation split, each CV fold, the refit of the
    chosen config), so no rank fits the whole grid. Configs that train together (one stacked
    group, see :func:`featpipe.heads.stacked.group_key`) stay on one rank; groups go
    round-robin; every rank gets every fitted head back.
    """
    dist = distributed.current()
    if dist is None:
        return fit_heads(runs, data, n_jobs)
    keys: dict[tuple, int] = {}
    owner = []
    for config in runs:
        key = group_key(config) if config.is_torch else (id(config),)
        owner.append(keys.setdefault(key, len(keys)) % dist.world)
    mine = [i for i, rank in enumerate(owner) if rank == dist.rank]
    fitted = distributed.everyone(
        dist, lambda: fit_heads([runs[i] for i in mine], data, n_jobs) if mine else []
    )
    heads: dict[int, FittedHead] = {}
    for indices, part in distributed.gather((mine, fitted)):
        heads.update(zip(indices, part, strict=True))
    return [heads[i] for i in range(len(runs))]


def select(
    features: FeatureSet,
    configs: list[HeadConfig],
    seeds: int = 1,
    cv: int = 5,
    n_jobs: int = -1,
    views: TrainViews | None = None,
    cv_seed: int = 0,
) -> tuple[list[Candidate], str]:
    """Fit every config × seed on train; score on val (or by CV). Returns the candidates.

    Each candidate keeps its first seed's raw outputs on the images it was scored on (the val
    rows, or every train row out of fold: ``cv_seed`` shuffles the folds), so that configs can
    be compared image by image.

    ``views``: augmented views of the train rows, in their order (each fold takes its own).
    A set larger than memory is trained and scored in chunks, and selects on the val split
    (cross-validation would read the entry once per fold).
    """
    is_val = features.split == "val"
    if not is_val.any() and not features.in_memory:
        raise ArgumentError(
            "holdout",
            f"is needed: the train features exceed memory_budget "
            f"({streaming.human(features.budget)}), so they are streamed, and a streamed fit "
            "selects on a val split; hold out a share "
            "of train (e.g. 0.15) or give the data a val split",
        )
    candidates = [Candidate(c) for c in configs]
    runs = [replace(c, seed=c.seed + s) for s in range(seeds) for c in configs]
    owner = [i for _ in range(seeds) for i in range(len(configs))]
    y_val, n_classes = features.y[is_val], len(features.class_names)
    if is_val.any():
        heads = _fit(features, runs, n_jobs, views)
        scored = zip(owner, heads, outputs(heads, features, is_val), strict=True)
        for r, (i, head, out) in enumerate(scored):
            candidates[i].val.append(metrics.from_outputs(features.task, n_classes, y_val, out))
            candidates[i].fit_seconds.append(head.fit_seconds)
            candidates[i].histories.append(head.history)
            candidates[i].heads.append(head)
            if r < len(configs):  # the first seed's outputs: intervals, one-seed comparisons
                candidates[i].val_outputs = out
            if seeds > 1:  # in seed order: configs are then compared by their mean
                candidates[i].seed_predictions.append(metrics.predicted(features.task, out))
        return candidates, "val"
    train = _split_rows(features, "train")
    y = features.y[train.index]
    folds = _folds(y, features.task, cv, cv_seed)
    fold_scores: list[list[dict[str, float]]] = [[] for _ in runs]
    fold_seconds = np.zeros(len(runs))
    for fit_idx, val_idx in folds:
        Xf, Xv = Rows(features.X, train.index[fit_idx]), Rows(features.X, train.index[val_idx])
        yf, yv = y[fit_idx], y[val_idx]
        fold_views = views.take(fit_idx) if views is not None else None
        data = TrainData(Xf, yf, Xv, yv, features.class_names, features.task, fold_views)
        heads = fit_grid(runs, data, n_jobs)
        held = Xv.gather()  # scored by every head: gathered once
        for r, (head, out) in enumerate(zip(heads, decision_functions(heads, held), strict=True)):
            fold_scores[r].append(metrics.from_outputs(features.task, n_classes, yv, out))
            fold_seconds[r] += head.fit_seconds
            # every train image scored once per seed, out of fold
            seed, cand = r // len(configs), candidates[owner[r]]
            if seed == 0:
                if cand.val_outputs is None:
                    cand.val_outputs = np.zeros((len(train), out.shape[1]), out.dtype)
                cand.val_outputs[val_idx] = out
            if seeds > 1:
                pred = metrics.predicted(features.task, out)
                if len(cand.seed_predictions) == seed:
                    cand.seed_predictions.append(np.zeros(len(train), pred.dtype))
                cand.seed_predictions[seed][val_idx] = pred
        del held  # not held through the next fold's fit
    for r, i in enumerate(owner):
        names = fold_scores[r][0]
        candidates[i].val.append({m: float(np.mean([s[m] for s in fold_scores[r]])) for m in names})
        candidates[i].fit_seconds.append(float(fold_seconds[r]))
    return candidates, f"cv{len(folds)}"


def _fit(
    features: FeatureSet, runs: list[HeadConfig], n_jobs: int, views: TrainViews | None
) -> list[FittedHead]:
    """Every run fitted on the train split, watching the val split where there is one; a set
    larger than memory is fitted in chunks (:func:`featpipe.fitting.streaming.fit_heads`)."""
    if not features.in_memory:
        return streaming.fit_heads(runs, features)
    train, val = _split_rows(features, "train"), _split_rows(features, "val")
    watched = (val, features.y[val.index]) if len(val) else (None, None)
    y = features.y[train.index]
    data = TrainData(train, y, *watched, features.class_names, features.task, views)
    return fit_grid(runs, data, n_jobs)


def _split_rows(features: Features, split: str) -> Rows:
    """The rows of one split of an in-memory set, not copied: the heads' preprocessing reads
    them block by block (a fit holds its matrix and one preprocessed copy of train and val,
    not a raw copy besides)."""
    return Rows(features.X, np.flatnonzero(features.split == split))


def outputs(
    heads: list[FittedHead], features: FeatureSet, mask: np.ndarray
) -> Iterator[np.ndarray]:
    """Every head's raw outputs on the rows in ``mask`` (at least one), in row order, head by
    head. A set read in several blocks (an entry larger than memory) is read once for all the
    heads; a set that is one block (in memory) is scored one head at a time, so only one head's
    outputs are held at once. k-NN heads over one bank share one neighbour search
    (:func:`~featpipe.heads.fitted.decision_functions`)."""
    blocks = iter(features.blocks(mask))
    X, _ = next(blocks)
    more = next(blocks, None)
    if more is None:
        yield from decision_functions(heads, X)
        return
    parts = [[out] for out in decision_functions(heads, X)]
    for X, _ in itertools.chain([more], blocks):
        for part, out in zip(parts, decision_functions(heads, X), strict=True):
            part.append(out)
    yield from (np.concatenate(part) for part in parts)


def sweep(
    features: FeatureSet,
    configs: list[HeadConfig],
    seeds: int = 1,
    cv: int = 5,
    shots: list[int | str] | None = None,
    draws: int = 5,
    n_jobs: int = -1,
    views: TrainViews | None = None,
    refit: bool = True,
    cv_seed: int = 0,
) -> SweepResult:
    """Choose the best config on validation data, then score it on test once.

    ``features`` may be an entry streamed from disk (:mod:`featpipe.fitting.streaming`).
    ``views``: augmented views of the train rows (N_train × K × D, in train-row order, features
    in memory) that the heads train on; selection and test use the eval features. The few-shot
    curve does not use them.
    ``refit``: after selection on a val split, fit the chosen config again on train + val and
    score that on test (see :func:`refit_reason` for when it cannot be). After CV the chosen
    config is always fitted on the whole train split. ``cv_seed`` shuffles the CV folds.

    The result keeps, per image, the chosen config's outputs on the images selection scored it
    on and the tested head's on test (:class:`~featpipe.runs.predictions.RunPredictions`; after
    a refit selection's train-only head's on test too), and every config's on the selection
    images: what intervals and paired comparisons read.
    """
    start = time.perf_counter()
    if not configs:
        raise ArgumentError("configs", "is empty: give at least one head config")
    if shots and not features.in_memory:
        raise ArgumentError(
            "shots",
            f"need the features in memory: the train features exceed memory_budget "
            f"({streaming.human(features.budget)}); raise the budget for a few-shot curve",
        )
    _check(features)
    if not features.in_memory:
        streaming.refuse_unstreamable(features, configs)
    candidates, selection = select(features, configs, seeds, cv, n_jobs, views, cv_seed)
    metric = metrics.primary(features.task)
    best = max(candidates, key=lambda c: (c.mean(metric), -configs.index(c.config)))
    for cand in candidates:  # keep curves, free the losing models (MLP grids are large)
        if cand is not best:
            cand.heads = []
    trained_on, not_refitted, selection_heads = "train", "", []
    if not best.heads:  # chosen by CV (in memory): fit on the whole training split
        best.heads = _fit_chosen(features, best.config, seeds, n_jobs, views)
    elif refit:
        not_refitted = refit_reason(best.config, views)
        if not not_refitted:
            merged = replace(
                features, split=np.where(features.split == "val", "train", features.split)
            )
            selection_heads = best.heads
            best.heads = _fit_chosen(merged, best.config, seeds, n_jobs, None)
            trained_on = "train+val"
    is_test = features.split == "test"
    confusion = None
    predictions = None
    calibrated = None
    before: list[dict[str, float]] = []
    n_classes = len(features.class_names)
    on_val = features.split == ("val" if selection == "val" else "train")
    images = {"val": SplitOutputs(features.relpath[on_val], features.y[on_val], best.val_outputs)}
    if is_test.any():
        # one pass over test for both (a streamed entry is read once)
        tested = best.heads + selection_heads
        outs = list(outputs(tested, features, is_test))
        y_test = features.y[is_test]
        images["test"] = SplitOutputs(features.relpath[is_test], y_test, outs[0])
        if selection_heads:  # the head a fine-tune starts from, compared with it image by image
            images[SELECTION_TEST] = SplitOutputs(
                features.relpath[is_test], y_test, outs[len(best.heads)]
            )
        scores = [metrics.from_outputs(features.task, n_classes, y_test, o) for o in outs]
        best.test, before = scores[: len(best.heads)], scores[len(best.heads) :]
        if features.task == "classification":
            confusion = metrics.confusion(y_test, outs[0].argmax(axis=1), n_classes)
            calibrated = _calibration(features, best.heads, selection_heads, outs)
        else:
            predictions = Predictions(y_test.tolist(), outs[0][:, 0].tolist())
    few = (
        distributed.on_leader(
            distributed.current(), lambda: few_shot(features, best.config, shots, draws)
        )
        if shots
        else []
    )
    train_labels = features.labels[features.split == "train"]
    note = plan_shots(shots, train_labels, features.class_names)[1] if shots else ""
    return SweepResult(
        features.task,
        features.class_names,
        selection,
        candidates,
        best,
        best.heads[0],
        confusion,
        few,
        time.perf_counter() - start,
        note,
        split_sizes={s: int((features.split == s).sum()) for s in ("train", "val", "test")},
        test_predictions=predictions,
        trained_on=trained_on,
        refit_note=not_refitted,
        selection_heads=selection_heads,
        test_before_refit=before,
        calibration=calibrated,
        predictions=RunPredictions(features.task, n_classes, images),
    )


def _calibration(
    features: FeatureSet,
    chosen: list[FittedHead],
    selection_heads: list[FittedHead],
    test_outputs: list[np.ndarray],
) -> Calibration:
    """The calibration of the first seed's head that val is held out from: the chosen head, or
    after a refit selection's train-only head (whose test outputs follow the chosen heads')."""
    head, out, which = (
        (selection_heads[0], test_outputs[len(chosen)], "selection")
        if selection_heads
        else (chosen[0], test_outputs[0], "chosen")
    )
    is_val = features.split == "val"
    val = (next(outputs([head], features, is_val)), features.y[is_val]) if is_val.any() else None
    return calibration(head, which, (out, features.y[features.split == "test"]), val)


def refit_reason(config: HeadConfig, views: TrainViews | None) -> str:
    """Why the chosen config cannot be refitted on train + val ('' when it can)."""
    if views is not None:
        return "not refitted on train + val: the augmented views cover the train images only"
    if config.patience:
        return (
            "not refitted on train + val: early stopping (patience) chooses its epoch on val, "
            "which a refit would train on"
        )
    return ""


def _fit_chosen(
    features: FeatureSet, config: HeadConfig, seeds: int, n_jobs: int, views: TrainViews | None
) -> list[FittedHead]:
    """The chosen config, one head per seed, fitted on the train split with no val to watch
    (every epoch of its schedule runs; the last is kept)."""
    runs = [replace(config, seed=config.seed + s) for s in range(seeds)]
    return _fit(features, runs, n_jobs, views)


def stratified_sample(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Indices of ``per_class`` examples of every class (all of a smaller class), drawn without
    replacement and reproducibly.

    Each class is shuffled once per ``seed`` and its first ``per_class`` taken, so the draws of
    one seed are nested: draw ``seed`` of 2 shots is part of its draw of 5. A few-shot curve
    then adds images to the same examples as it rises, and the difference between two of its
    points is the extra images, not a new sample.
    """
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(chosen))


def plan_shots(
    shots: list[int | str], labels: np.ndarray, class_names: list[str]
) -> tuple[list[int | str], str]:
    """The shot counts a curve can honestly draw, and a note on those it cannot.

    A draw of N per class is only N per class when every class has N training images: above
    the smallest class it is an unbalanced sample, and above the largest it is all of train.
    Such counts are left out, the ``all`` point (every training image) stands for them, and
    the note says which were left out and why.
    """
    counts = np.bincount(labels)
    present = np.flatnonzero(counts)
    smallest = present[np.argmin(counts[present])]
    limit = int(counts[smallest])
    kept: list[int | str] = []
    for shot in shots:
        if (shot == "all" or int(shot) <= limit) and shot not in kept:
            kept.append(shot)
    dropped = [s for s in shots if s != "all" and int(s) > limit]
    if not dropped:
        return kept, ""
    if "all" not in kept:
        kept.append("all")
    listed = ", ".join(str(s) for s in dropped)
    return kept, (
        f"few-shot: {listed} per class left out: the smallest train class "
        f"({class_names[smallest]}) has {limit} images; the 'all' point uses every training image"
    )


def few_shot(
    features: Features, config: HeadConfig, shots: list[int | str], draws: int = 5
) -> list[FewShotPoint]:
    """Accuracy against examples per class, on test (or val), over repeated draws, each point
    with its 95% interval from the draws and the test set together
    (:func:`featpipe.stats.few_shot_interval`).

    Shot counts above the smallest training class are left out (see :func:`plan_shots`).
    """
    if features.task != "classification":
        raise ArgumentError("shots", "are for classification datasets")
    train = features.where("train")
    evaluation = features.where("test") if len(features.where("test")) else features.where("val")
    split = "test" if len(features.where("test")) else "val"
    if len(evaluation) == 0:
        raise ArgumentError("shots", "need a test or val split to score on")
    val = features.where("val")
    curve = []
    n_classes = len(features.class_names)
    for shot in plan_shots(shots, train.labels, features.class_names)[0]:
        scores, draws_predictions = [], []
        for draw in range(1 if shot == "all" else draws):
            idx = (
                np.arange(len(train))
                if shot == "all"
                else stratified_sample(train.labels, int(shot), seed=draw)
            )
            data = TrainData(
                train.X[idx],
                train.y[idx],
                val.X if len(val) else None,
                val.y if len(val) else None,
                features.class_names,
                features.task,
            )
            [head] = fit_heads([replace(config, seed=config.seed + draw)], data, n_jobs=1)
            out = head.decision_function(evaluation.X)
            scores.append(
                metrics.from_outputs(features.task, n_classes, evaluation.y, out)["accuracy"]
            )
            draws_predictions.append(
                stats.Predictions.from_outputs(features.task, n_classes, evaluation.y, out)
            )
        per_class = int(np.bincount(train.labels).max()) if shot == "all" else int(shot)
        mean, std = float(np.mean(scores)), float(np.std(scores))
        # the interval covers which images were drawn and the test set's own luck
        interval = stats.few_shot_interval(draws_predictions, "accuracy")
        curve.append(FewShotPoint(shot, per_class, split, mean, std, len(scores), scores, interval))
    return curve

"""Head-sweep benchmarks on cached features of a real backbone (Fashion-MNIST, 60k × 1280).

* K = 1, 8, 32, 128 linear heads trained in one stacked pass, against the same K configs fitted
  one after another (the sequential twins), side by side in one process: time and the largest
  accuracy difference between a head and its twin.
* the best linear head's test accuracy and training time against scikit-learn's
  ``LogisticRegression`` (L-BFGS) on the same standardised features and the same split.

The features are EfficientNet-Lite0 (real ImageNet weights) embeddings at 64 px, which keeps the
one-off extraction of 70,000 images to minutes on two CPU cores; D = 1280 as at 224 px.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import featpipe
from featpipe.data.bundled import prepare_dataset
from featpipe.fitting.sweep import stratified_sample
from featpipe.heads.config import HeadConfig
from featpipe.heads.preprocess import Preprocessor
from featpipe.heads.stacked import train_torch_heads
from featpipe.heads.train_data import TrainData

EPOCHS = 10
GRIDS = {1: (1, 1), 8: (4, 2), 32: (8, 4), 128: (16, 8)}


def configs(k: int) -> list[HeadConfig]:
    n_lr, n_wd = GRIDS[k]
    lrs = np.logspace(-4, -1, n_lr) if n_lr > 1 else [3e-3]
    wds = np.logspace(-5, -2, n_wd) if n_wd > 1 else [1e-4]
    return [
        HeadConfig(head="linear", lr=float(lr), wd=float(wd), epochs=EPOCHS, batch_size=256)
        for lr in lrs
        for wd in wds
    ]


def load(work: Path, quick: bool) -> tuple[Any, dict[str, np.ndarray]]:
    per_class = 600 if quick else None
    name = "fashion-mnist-q" if quick else "fashion-mnist-full"
    root = prepare_dataset("fashion-mnist", work / name, per_class=per_class)
    start = time.perf_counter()
    result = featpipe.extract(
        root,
        "tf_efficientnet_lite0",
        weights="offline",
        image_size=64,
        cache_dir=work / "cache-fit",
    )
    extract_s = time.perf_counter() - start
    features = result.load()
    train = features.where("train")
    # Fashion-MNIST has train and test only: hold out a stratified sixth of train for selection.
    val_idx = stratified_sample(train.labels, len(train) // 60, seed=0)
    mask = np.zeros(len(train), bool)
    mask[val_idx] = True
    test = features.where("test")
    pre = Preprocessor(standardize=True).fit(train.X[~mask])
    data = {
        "X": pre.transform(train.X[~mask]),
        "y": train.labels[~mask],
        "Xv": pre.transform(train.X[mask]),
        "yv": train.labels[mask],
        "Xt": pre.transform(test.X),
        "yt": test.labels,
    }
    info = {
        "entry": str(result.entry),
        "extract_seconds": round(extract_s, 1),
        "settings": result.settings,
        "n_train": int((~mask).sum()),
        "n_val": int(mask.sum()),
        "n_test": len(test),
        "dim": features.X.shape[1],
    }
    return info, data


def _accuracy(module: torch.nn.Module, X: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((module(torch.from_numpy(X)).argmax(1).numpy() == y).mean())


def stacked_vs_sequential(data: dict[str, np.ndarray], k: int) -> dict[str, Any]:
    grid = configs(k)
    start = time.perf_counter()
    classes = [str(c) for c in range(10)]  # Fashion-MNIST
    rows = TrainData(data["X"], data["y"], data["Xv"], data["yv"], classes, "classification")
    batched = train_torch_heads(grid, rows)
    batched_s = time.perf_counter() - start
    start = time.perf_counter()
    twins = [train_torch_heads([c], rows)[0] for c in grid]
    sequential_s = time.perf_counter() - start
    acc_b = [_accuracy(h.module, data["Xv"], data["yv"]) for h in batched]
    acc_s = [_accuracy(h.module, data["Xv"], data["yv"]) for h in twins]
    best = int(np.argmax(acc_b))
    return {
        "k": k,
        "batched_seconds": round(batched_s, 2),
        "sequential_seconds": round(sequential_s, 2),
        "speedup": round(sequential_s / batched_s, 2),
        "max_val_accuracy_diff_points": round(
            100 * max(abs(a - b) for a, b in zip(acc_b, acc_s, strict=True)), 3
        ),
        "best_val_accuracy": round(acc_b[best], 4),
        "best_config": {"lr": grid[best].lr, "wd": grid[best].wd},
        "best_test_accuracy": round(_accuracy(batched[best].module, data["Xt"], data["yt"]), 4),
    }


def sklearn_reference(data: dict[str, np.ndarray]) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    start = time.perf_counter()
    model = LogisticRegression(max_iter=1000).fit(data["X"], data["y"])
    seconds = time.perf_counter() - start
    return {
        "seconds": round(seconds, 2),
        "test_accuracy": round(float((model.predict(data["Xt"]) == data["yt"]).mean()), 4),
        "iterations": int(np.max(model.n_iter_)),
    }


def run(work: Path, quick: bool = False) -> dict[str, Any]:
    info, data = load(work, quick)
    print(info, flush=True)
    rows = []
    for k in GRIDS:
        rows.append(stacked_vs_sequential(data, k))
        print(rows[-1], flush=True)
    reference = sklearn_reference(data)
    print(reference, flush=True)
    single = rows[0]["batched_seconds"]
    best32 = next(r for r in rows if r["k"] == 32)
    return {
        "features": info,
        "epochs": EPOCHS,
        "sweeps": rows,
        "sklearn_logreg": reference,
        "k32_over_one_head": round(best32["batched_seconds"] / single, 2),
        "best_linear_minus_sklearn_points": round(
            100 * (best32["best_test_accuracy"] - reference["test_accuracy"]), 2
        ),
        "one_head_over_sklearn_time": round(single / reference["seconds"], 3),
    }


def markdown(results: dict[str, Any]) -> str:
    f = results["features"]
    lines = [
        f"Features: {f['n_train']} train / {f['n_val']} val / {f['n_test']} test × D={f['dim']} "
        f"(Fashion-MNIST, EfficientNet-Lite0 offline weights at 64 px; extraction "
        f"{f['extract_seconds']} s). Linear heads: AdamW, cosine, {results['epochs']} epochs, "
        "batch 256.",
        "",
        "| K heads | one stacked pass (s) | K sequential fits (s) | speed-up | "
        "max val-accuracy gap to twin (points) | best val acc | its test acc |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["sweeps"]:
        lines.append(
            f"| {r['k']} | {r['batched_seconds']} | {r['sequential_seconds']} | "
            f"{r['speedup']}× | {r['max_val_accuracy_diff_points']} | "
            f"{r['best_val_accuracy']} | {r['best_test_accuracy']} |"
        )
    s = results["sklearn_logreg"]
    lines += [
        "",
        f"K = 32 in one pass costs {results['k32_over_one_head']}× one head.",
        "",
        "| head | test accuracy | training time (s) |",
        "|---|---|---|",
        f"| best linear head of the K = 32 sweep | {results['sweeps'][2]['best_test_accuracy']} "
        f"| {results['sweeps'][0]['batched_seconds']} (one head) |",
        f"| scikit-learn LogisticRegression (L-BFGS, {s['iterations']} iterations) | "
        f"{s['test_accuracy']} | {s['seconds']} |",
        "",
        f"Accuracy difference: {results['best_linear_minus_sklearn_points']:+} points; "
        f"one head takes {results['one_head_over_sklearn_time']} of scikit-learn's time.",
    ]
    return "\n".join(lines)

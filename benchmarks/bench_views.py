"""Augmented views in the cache against no augmentation and against live augmentation.

For each dataset, side by side in one process:

* extraction: the eval features of every image (one plain pass), then K = 4 views of every
  training image, then growing to K = 16 (12 new views); the time of K views against K plain
  passes over the training images (the plain pass's loop time scaled to the training images);
* for each number of epochs in ``EPOCHS``, fits of the same head grid (linear heads, lr × wd,
  ``SEEDS`` seeds, selection on a stratified 15% of train held out when the data has no val
  split), scored once on test: without views (K = 0), with K = 4 and K = 16 (one random view per
  image per epoch), and the live-augmentation probe, replayed: ``--view-mode epoch`` with K =
  epochs views, so epoch e trains on a fresh view e of every image: what a dinov2-style probe
  that re-runs the frozen backbone (eval mode) under augmentation every epoch computes. Its
  cost per training run is one forward pass over the training images per epoch, priced at the
  measured per-view extraction time, plus its head fit. Fit times are the sweep's own seconds
  after a warm-up fit;
* the live probe run for real, once, at ``EPOCHS[0]`` epochs: ``featpipe finetune --unfreeze
  head`` (frozen backbone in eval mode, a fresh augmentation of every training image every
  epoch, the replay's chosen lr and wd, one seed), timed whole: its seconds per epoch check the
  price put on the replayed probe above.

Lite0 with offline ImageNet weights, fp32, torch engine, batch 32, at ``IMAGE_SIZE`` px (below
Lite0's 224 so that 16 views fit a 2-core CPU; the eval and view transforms both use it).
Augmentation: random resized crop keeping ``CROP_SCALE``–100% of the image, horizontal flip.
Not part of ``make bench`` by default: ``python benchmarks/run.py --only views``.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from featpipe.data.augment import Augment
from featpipe.data.bundled import prepare_dataset
from featpipe.extraction.stage import extract
from featpipe.finetuning.config import FinetuneConfig
from featpipe.finetuning.stage import finetune
from featpipe.fitting.stage import fit

BACKBONE = "tf_efficientnet_lite0"
IMAGE_SIZE = 128
EPOCHS = (10, 30)
SEEDS = 3
CROP_SCALE = 0.35
GRID = {"head": ["linear"], "lr": [1e-3, 3e-3, 1e-2], "wd": [1e-4, 1e-2]}
# name → (bundled dataset, images per class and split)
DATASETS: dict[str, tuple[str, int | None]] = {
    "fashion-100": ("fashion-mnist", 100),
    "fashion-1000": ("fashion-mnist", 1000),
    "elpv-300": ("elpv", 300),
}
OPTIONS = {
    "weights": "offline",
    "image_size": IMAGE_SIZE,
    "precision": "fp32",
    "engine": "torch",
    "batch_size": 32,
}


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _fit(data: Path, cache: Path, runs: Path, epochs: int, **views: Any) -> dict[str, Any]:
    start = time.perf_counter()
    _, result = fit(
        data,
        BACKBONE,
        grid=GRID | {"epochs": [epochs]},
        seeds=SEEDS,
        holdout=0.15,
        runs_dir=runs,
        extract_options=OPTIONS | {"cache_dir": cache},
        augment=Augment(crop_scale=CROP_SCALE),
        refit=False,  # views cover train only, so no row may gain val's images over another
        **views,
    )
    best = result.best
    return {
        "test_accuracy": round(best.mean("accuracy", "test"), 4),
        "test_accuracy_std": round(best.std("accuracy", "test"), 4),
        "val_accuracy": round(best.mean("accuracy"), 4),
        "chosen": best.config.label(["lr", "wd"]),
        "lr": best.config.lr,
        "wd": best.config.wd,
        "sweep_s": round(result.seconds, 2),
        "call_s": round(time.perf_counter() - start, 2),
        "load": _load(),
    }


def _live(data: Path, runs: Path, epochs: int, lr: float, wd: float) -> dict[str, Any]:
    """The dinov2-style probe for real: the frozen backbone re-run under augmentation each epoch."""
    config = FinetuneConfig(
        backbone=BACKBONE,
        weights="offline",
        image_size=IMAGE_SIZE,
        unfreeze="head",
        lr=lr,
        wd=wd,
        epochs=epochs,
        batch_size=OPTIONS["batch_size"],
        crop_scale=CROP_SCALE,
        precision="fp32",
        device="cpu",
    )
    start = time.perf_counter()
    _, result = finetune(data, config, runs_dir=runs)
    seconds = time.perf_counter() - start
    return {
        "test_accuracy": round(result.test_score, 4),
        "val_accuracy": round(result.val_score, 4),
        "config": f"linear(lr={lr}, wd={wd}, epochs={epochs})",
        "train_s": round(result.seconds, 2),
        "call_s": round(seconds, 2),
        "train_s_per_epoch": round(result.seconds / epochs, 2),
        "load": _load(),
    }


def check(name: str, work: Path) -> dict[str, Any]:
    source, per_class = DATASETS[name]
    data = prepare_dataset(source, work / f"views-{name}", per_class=per_class)
    cache, runs = work / "views-cache" / name, work / "views-runs"
    shutil.rmtree(cache, ignore_errors=True)  # every extraction below is timed from nothing
    options = OPTIONS | {"cache_dir": cache}
    augment = Augment(crop_scale=CROP_SCALE)
    plain = extract(data, BACKBONE, **options)
    n_all = plain.n
    four = extract(data, BACKBONE, views=4, augment=augment, **options).views
    sixteen = extract(data, BACKBONE, views=16, augment=augment, **options).views
    n_train = four.n_images
    plain_pass = plain.timings["extract_s"] * n_train / n_all  # one eval pass over train
    view_pass = (four.timings["extract_s"] + sixteen.timings["extract_s"]) / 16
    extraction = {
        "images": n_all,
        "train_images": n_train,
        "plain_pass_all_s": round(plain.timings["extract_s"], 2),
        "plain_pass_train_s": round(plain_pass, 2),
        "views_4_s": round(four.timings["extract_s"], 2),
        "views_4_to_16_s": round(sixteen.timings["extract_s"], 2),
        "views_4_new": four.n_new,
        "views_16_new": sixteen.n_new,
        "per_view_pass_s": round(view_pass, 2),
        "views_4_over_4_plain_passes": round(four.timings["extract_s"] / (4 * plain_pass), 3),
        "load": _load(),
    }
    print(name, "extraction", extraction, flush=True)
    _fit(data, cache, runs, EPOCHS[0])  # warm-up (first-call imports, allocations): unreported
    by_epochs = {}
    for epochs in EPOCHS:
        fits = {
            "K=0": _fit(data, cache, runs, epochs),
            "K=4": _fit(data, cache, runs, epochs, views=4),
            "K=16": _fit(data, cache, runs, epochs, views=16),
            "live (replayed)": _fit(data, cache, runs, epochs, views=epochs, view_mode="epoch"),
        }
        for label, row in fits.items():
            print(name, epochs, label, row, flush=True)
        base, live = fits["K=0"]["test_accuracy"], fits["live (replayed)"]["test_accuracy"]
        live_run = None
        if epochs == EPOCHS[0]:
            replay = fits["live (replayed)"]
            live_run = _live(data, runs, epochs, replay["lr"], replay["wd"])
            print(name, epochs, "live (run)", live_run, flush=True)
        by_epochs[str(epochs)] = {
            "fits": fits,
            "live_cost_per_training_s": round(
                epochs * view_pass + fits["live (replayed)"]["sweep_s"], 2
            ),
            "live_run": live_run,
            "views_16_cost_first_training_s": round(16 * view_pass + fits["K=16"]["sweep_s"], 2),
            "views_16_cost_later_trainings_s": fits["K=16"]["sweep_s"],
            "gain_share_of_live": (
                round((fits["K=16"]["test_accuracy"] - base) / (live - base), 3)
                if live != base
                else None
            ),
        }
    return {"dataset": name, "extraction": extraction, "epochs": by_epochs}


def run(work: Path, quick: bool = False, datasets: list[str] | None = None) -> dict[str, Any]:
    names = datasets or (["fashion-100"] if quick else list(DATASETS))
    return {
        "backbone": BACKBONE,
        "image_size": IMAGE_SIZE,
        "epochs": list(EPOCHS),
        "seeds": SEEDS,
        "crop_scale": CROP_SCALE,
        "grid": GRID,
        "datasets": [check(n, work) for n in names],
    }


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"{results['backbone']} (offline ImageNet weights, fp32) at {results['image_size']} px; "
        f"linear heads (lr × wd grid), mean ± std of {results['seeds']} seeds; views: random "
        f"resized crop {results['crop_scale']}–1 and flip.",
        "",
        "| dataset | train images | epochs | test acc. K=0 | K=4 | K=16 | live (replayed) | "
        "fit s K=0 / K=16 | live cost per training s | K=16 cost: first / later trainings s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["datasets"]:
        e = r["extraction"]
        for epochs, row in r["epochs"].items():
            f = row["fits"]

            def acc(label: str, fits: dict = f) -> str:
                fit = fits[label]
                return f"{fit['test_accuracy']:.4f} ± {fit['test_accuracy_std']:.4f}"

            lines.append(
                f"| {r['dataset']} | {e['train_images']} | {epochs} | {acc('K=0')} | "
                f"{acc('K=4')} | {acc('K=16')} | {acc('live (replayed)')} | "
                f"{f['K=0']['sweep_s']:.1f} / {f['K=16']['sweep_s']:.1f} | "
                f"{row['live_cost_per_training_s']:.1f} | "
                f"{row['views_16_cost_first_training_s']:.1f} / "
                f"{row['views_16_cost_later_trainings_s']:.1f} |"
            )
    lines += [
        "",
        "| dataset | plain pass, all images s | 4 views s | 4 plain passes over train s | "
        "views 4→16 s | per view pass s | load |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["datasets"]:
        e = r["extraction"]
        lines.append(
            f"| {r['dataset']} | {e['plain_pass_all_s']:.1f} | {e['views_4_s']:.1f} | "
            f"{4 * e['plain_pass_train_s']:.1f} | {e['views_4_to_16_s']:.1f} | "
            f"{e['per_view_pass_s']:.2f} | {e['load']} |"
        )
    lines += [
        "",
        "| dataset | epochs | live probe run: test acc. | its train s per epoch | "
        "price used above: one view pass s | replayed probe, same config: test acc. |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["datasets"]:
        for epochs, row in r["epochs"].items():
            live = row.get("live_run")
            if live:
                lines.append(
                    f"| {r['dataset']} | {epochs} | {live['test_accuracy']:.4f} | "
                    f"{live['train_s_per_epoch']:.1f} | {r['extraction']['per_view_pass_s']:.1f} | "
                    f"{row['fits']['live (replayed)']['test_accuracy']:.4f} |"
                )
    return "\n".join(lines)

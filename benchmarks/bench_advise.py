"""Is ``featpipe advise`` right? Its advice on real data, checked by running every strategy.

For each dataset: ``advise`` (quadrant, strategy, evidence), then the course material's
strategies on the same split, each scored once on the test split:

* ``head``: heads on cached features (linear and logistic regression; selection on a held-out
  15% of train when the data has no val split), the strategy of both small quadrants;
* ``lp-ft``: fine-tuning from that head with the recipe advise prints for the number of images
  it trains on (:mod:`featpipe.finetuning.recipe`: the last 3 blocks, then everything from epoch
  2, with layer decay, RandAugment, EMA and flip TTA; "head first, then unfreeze the rest");
* ``scratch``: the same network from random initialisation, with the from-scratch recipe.

The README's table of this check was measured before the recipe (LP-FT with rates 0.1 / 0.33 /
1 at lr 1e-4 for 6 epochs; from scratch at lr 3e-3 for 12, 8 on Fashion-MNIST 2,000/class).

The advice is confirmed when its strategy's test accuracy is within ``TOLERANCE`` of the best
strategy's. "Collect more data" cannot be run; its evidence is the few-shot curve's slope.

Not part of ``make bench`` by default (it trains networks): ``python benchmarks/run.py --only
advise``; on a CPU keep to small datasets (``--advise-data elpv fashion-100``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from featpipe.data.bundled import prepare_dataset
from featpipe.finetuning.config import FinetuneConfig
from featpipe.finetuning.recipe import recipe
from featpipe.finetuning.stage import finetune
from featpipe.fitting.stage import fit
from featpipe.reports.advise import advise, fine_tune_images
from featpipe.runs.metrics import RunMetrics

BACKBONE = "tf_efficientnet_lite0"
TOLERANCE = 0.01  # test-accuracy points (as a fraction) within which strategies tie
EXPECTED = {
    ("small", "similar"): "head",
    ("small", "dissimilar"): "head",
    ("large", "similar"): "lp-ft",
    ("large", "dissimilar"): "scratch",
}
# name → (bundled dataset, images per class and split or None for all)
DATASETS: dict[str, tuple[str, int | None]] = {
    "elpv": ("elpv", None),
    "fashion-100": ("fashion-mnist", 100),
    "fashion-2000": ("fashion-mnist", 2000),
}
HEAD_GRID = {"head": ["linear", "logreg"], "lr": [1e-3, 1e-2], "wd": [1e-4, 1e-2], "C": [0.1, 1.0]}


def _scores(metrics: RunMetrics, seconds: float) -> dict[str, Any]:
    return {
        "val_accuracy": round(metrics.val.mean, 4),
        "test_accuracy": round(metrics.test.mean, 4),
        "seconds": round(seconds, 1),
    }


def check(name: str, work: Path, runs: Path, cache: Path) -> dict[str, Any]:
    source, per_class = DATASETS[name]
    data = prepare_dataset(source, work / f"advise-{name}", per_class=per_class)
    start = time.perf_counter()
    advice = advise(data, BACKBONE, extract_options={"cache_dir": cache})
    advise_s = time.perf_counter() - start
    print(name, advice.size, advice.similarity, flush=True)

    start = time.perf_counter()
    run, _ = fit(
        data,
        BACKBONE,
        grid=HEAD_GRID,
        holdout=0.15,
        runs_dir=runs,
        extract_options={"cache_dir": cache},
    )
    strategies = {"head": _scores(run.metrics, time.perf_counter() - start)}
    strategies["head"]["chosen"] = run.metrics.chosen_label
    print(name, "head", strategies["head"], flush=True)
    tuned = fine_tune_images(advice.evidence["train_images"], has_val=False)  # held out 15%
    recipes = {
        "lp-ft": FinetuneConfig(from_run=str(run.path), **recipe(tuned)),
        "scratch": FinetuneConfig(backbone=BACKBONE, **recipe(tuned, pretrained=False)),
    }
    for strategy, config in recipes.items():
        start = time.perf_counter()
        ft_run, result = finetune(data, config, runs_dir=runs)
        strategies[strategy] = _scores(ft_run.metrics, time.perf_counter() - start)
        strategies[strategy] |= {"epochs": config.epochs, "best_epoch": result.best_epoch + 1}
        print(name, strategy, strategies[strategy], flush=True)
    expected = EXPECTED[(advice.size, advice.similarity)]
    best = max(strategies, key=lambda s: strategies[s]["test_accuracy"])
    gap = strategies[best]["test_accuracy"] - strategies[expected]["test_accuracy"]
    evidence = advice.evidence
    return {
        "dataset": name,
        "train_images": evidence["train_images"],
        "per_class_min": evidence["images_per_class_min"],
        "quadrant": f"{advice.size}, {advice.similarity}",
        "strategy": advice.strategy,
        "command": advice.command,
        "evidence": {
            k: evidence[k]
            for k in (
                "linear_probe_pretrained",
                "linear_probe_random",
                "transfer_gain",
                "source_head_confidence",
                "few_shot",
            )
        },
        "advise_seconds": round(advise_s, 1),
        "strategies": strategies,
        "advised": expected,
        "best_by_test": best,
        "confirmed": gap <= TOLERANCE,
    }


def run(work: Path, quick: bool = False, datasets: list[str] | None = None) -> dict[str, Any]:
    names = datasets or (["fashion-100"] if quick else list(DATASETS))
    rows = [check(n, work, work / "advise-runs", work / "advise-cache") for n in names]
    return {"backbone": BACKBONE, "tolerance": TOLERANCE, "datasets": rows}


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Backbone {results['backbone']} (offline ImageNet weights). Test accuracy of each "
        f"strategy; the advice is confirmed when its strategy is within "
        f"{100 * results['tolerance']:.0f} point of the best.",
        "",
        "| dataset | train images (smallest class) | advise says | transfer gain | ImageNet "
        "head confidence | head only | LP-FT | from scratch | best | confirmed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["datasets"]:
        s, e = r["strategies"], r["evidence"]
        conf = e["source_head_confidence"]
        lines.append(
            f"| {r['dataset']} | {r['train_images']} ({r['per_class_min']}) | {r['quadrant']} → "
            f"{r['advised']} | {e['transfer_gain']:.2f} | "
            f"{'-' if conf is None else f'{conf:.2f}'} | {s['head']['test_accuracy']:.4f} | "
            f"{s['lp-ft']['test_accuracy']:.4f} ({s['lp-ft']['epochs']} ep) | "
            f"{s['scratch']['test_accuracy']:.4f} ({s['scratch']['epochs']} ep) | "
            f"{r['best_by_test']} | {'yes' if r['confirmed'] else 'no'} |"
        )
    return "\n".join(lines)

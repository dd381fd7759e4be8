"""The protocols of the field on cached features, side by side in one run (issue 26).

For each dataset (a manifest or tree with train, val and test splits) under one backbone
(default: EfficientNet-Lite0 with its offline ImageNet weights):

* featpipe's default linear probe (``DEFAULT_GRID``, refit on train + val), a uniform k-NN
  (k = 20) and DINOv2's weighted k-NN (k = 20, T = 0.07) on L2-normalised features, and
  retrieval (test queries against the train gallery, cosine: recall@1, mAP@R), each with its
  test score and the seconds of the step (features in memory);
* the (k, T) sweep (k ∈ {10, 20, 100, 200} × T ∈ {uniform, 0.07}: 8 heads, one neighbour
  search) against one k-NN fit, both through ``sweep``;
* ECE (15 bins), NLL and Brier score of the linear probe on test, before and after temperature
  scaling fitted on val (the run's calibration record).

For one ViT (random init is enough for the times) on the first dataset: one extraction of the
last 4 blocks (``layer=-4,-3,-2,-1``, one forward pass) against 4 single-block extractions, and
a linear probe on the 4-block concatenation against the last block alone; then the compare
across depths (``-b vit:-4 … -b vit:-1``): each block its own entry from one pass
(:func:`featpipe.extraction.layers.extract_layers`), timed against the 4 single-block passes,
with a linear probe on each block. The single-block passes are timed only when their entries
are not in ``--cache-dir`` yet: give an empty one for the extraction times.

    .venv/bin/python benchmarks/bench_protocols.py WORK/elpv/probe.csv \\
        WORK/fashion-mnist/probe.csv WORK/mnist-5k/probe.csv --cache-dir CACHE \\
        --json benchmarks/results/protocols.json

(``benchmarks/bench_probe.py --prepare WORK`` writes those manifests.) ``--smoke``: a toy tree
of random images, the tiny random-init test models at 32 px: it only shows that every row runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from featpipe import stats
from featpipe.cache.entry import Features
from featpipe.extraction.layers import extract_layers
from featpipe.extraction.options import ExtractOptions
from featpipe.fitting.features import load_feature_set
from featpipe.fitting.stage import DEFAULT_GRID
from featpipe.fitting.sweep import sweep
from featpipe.heads.config import HeadConfig, expand
from featpipe.protocols.retrieval import retrieval_scores

REAL = {
    "backbone": "tf_efficientnet_lite0",
    "vit": "vit_tiny_patch16_224@none",
    "extract": {"weights": "offline", "precision": "fp32", "engine": "torch"},
    "vit_images": 600,
}
SMOKE = {
    "backbone": "test_efficientnet@none",
    "vit": "test_vit@none",
    "extract": {
        "precision": "fp32",
        "engine": "torch",
        "image_size": 32,
        "batch_size": 8,
        "workers": 0,
    },
    "vit_images": 0,  # every image of the toy set
}
KNN = HeadConfig(head="knn", k=20, standardize=False, l2norm=True)
SWEEP_KS, SWEEP_TS = (10, 20, 100, 200), (0.0, 0.07)
LAST_4 = "-4,-3,-2,-1"


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def protocols(features: Features) -> dict[str, Any]:
    """Linear probe, kNN uniform and weighted, retrieval, the (k, T) sweep, calibration."""
    linear, linear_s = timed(lambda: sweep(features, expand(DEFAULT_GRID)))
    rows: dict[str, Any] = {"linear probe": _row(linear, linear_s)}
    knns = {}
    for name, temperature in (("kNN uniform", 0.0), ("kNN DINOv2 (T=0.07)", 0.07)):
        knn, seconds = timed(lambda t=temperature: sweep(features, [replace(KNN, temperature=t)]))
        rows[name], knns[name] = _row(knn, seconds), knn
    _against_linear(rows, knns, linear)
    test, train = features.where("test"), features.where("train")
    found, seconds = timed(lambda: retrieval_scores(test.X, test.y, train.X, train.y))
    labels = test.y[found.scored]
    recall = stats.score(stats.Predictions.per_query(labels, found.hits[1]), "mean")
    average = stats.score(stats.Predictions.per_query(labels, found.average_precision), "mean")
    rows["retrieval (cosine, gallery train)"] = {
        "test": found.recall[1],
        "map_at_r": found.map_at_r,
        "seconds": seconds,
        **_interval(recall),
        "map_at_r_interval": [average.low, average.high],
    }
    grid = expand({"k": list(SWEEP_KS), "temperature": list(SWEEP_TS)}, KNN)
    swept, sweep_s = timed(lambda: sweep(features, grid, refit=False))
    _, one_s = timed(lambda: sweep(features, [replace(KNN, temperature=0.07)], refit=False))
    calibration = linear.calibration
    return {
        "rows": rows,
        "sweep": {
            "heads": len(grid),
            "seconds": sweep_s,
            "one_fit_seconds": one_s,
            "chosen": swept.best.config.label(),
            "test": swept.best.mean("accuracy", "test"),
            **_interval(swept.verdict.intervals["test"]["accuracy"]),
        },
        "calibration": {
            "temperature": calibration.temperature,
            "before": _calibrated(calibration.before),
            "after": _calibrated(calibration.after) if calibration.after else None,
        },
        "sizes": {s: int((features.split == s).sum()) for s in ("train", "val", "test")},
    }


def _row(result, seconds: float) -> dict[str, Any]:
    return {
        "test": result.best.mean("accuracy", "test"),
        "chosen": result.best.config.label(),
        "seconds": seconds,
        **_interval(result.verdict.intervals["test"]["accuracy"]),
    }


def _against_linear(rows: dict[str, Any], knns: dict[str, Any], linear) -> None:
    """Each k-NN against the linear probe on the same test images: the accuracy difference
    with its paired-bootstrap interval, McNemar's exact p, and Holm's correction over the
    k-NN rows of the dataset; recorded in each k-NN row as ``vs_linear``."""
    reference = linear.predictions.on("test")
    found = {
        name: stats.paired_difference(knn.predictions.on("test"), reference, "accuracy")
        for name, knn in knns.items()
    }
    adjusted = stats.holm([d.p for d in found.values()])
    for (name, difference), p_holm in zip(found.items(), adjusted, strict=True):
        d = difference.interval
        # the product's rule (featpipe.stats.ranking): tied unless Holm's p is at most 0.05
        verdict = "tied" if p_holm > 0.05 else ("better" if d.estimate > 0 else "worse")
        rows[name]["vs_linear"] = {
            "difference": d.estimate,
            "interval": [d.low, d.high],
            "p": difference.p,
            "p_holm": p_holm,
            "test": difference.test,
            "verdict": verdict,
        }


def _interval(score: stats.Interval) -> dict[str, Any]:
    """A score's n and 95% interval (Wilson for accuracy, BCa bootstrap for a mean)."""
    return {"n": score.n, "interval": [score.low, score.high], "method": score.method}


def _score(row: dict[str, Any], key: str = "test", bounds: str = "interval") -> str:
    """``0.8578 [0.82, 0.89]``: a table cell with the score's interval."""
    low, high = row[bounds]
    return f"{row[key]:.4f} [{low:.3f}, {high:.3f}]"


def _calibrated(scores) -> dict[str, float]:
    return {"ece": scores.ece, "nll": scores.nll, "brier": scores.brier}


def layers(data: Path, vit: str, options: ExtractOptions) -> dict[str, Any]:
    """One pass over the last 4 blocks against 4 single-block passes (each extraction's own
    seconds); linear probes on the last block and on the 4-block concatenation; and the compare
    across depths: each of the last 4 blocks its own entry from one pass (into a fresh cache
    folder, so that the single-block entries above are not its cache hits), a probe on each."""
    found = {}
    for layer in [*LAST_4.split(","), LAST_4]:
        features, [result] = load_feature_set(data, vit, replace(options, layer=layer))
        found[layer] = (features, result)
    probes = {}
    for name, layer in (("last block", "-1"), ("last 4 blocks", LAST_4)):
        features = found[layer][0]
        result, seconds = timed(lambda f=features: sweep(f, expand(DEFAULT_GRID)))
        probes[name] = _row(result, seconds) | {"dims": int(features.X.shape[1])}
    fresh = Path(tempfile.mkdtemp(prefix="one-pass-", dir=options.cache_dir))
    try:
        network = options.spec(vit)
        depths = [replace(network, layer=layer) for layer in LAST_4.split(",")]
        run = replace(options, cache_dir=fresh).without_spec()
        each, each_s = timed(lambda: extract_layers(data, depths, run))
        by_depth = {}
        for spec, extracted in zip(depths, each, strict=True):
            result, seconds = timed(lambda e=extracted: sweep(e.load(), expand(DEFAULT_GRID)))
            by_depth[spec.layer] = _row(result, seconds) | {"dims": extracted.dim}
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
    return {
        "one_pass_seconds": found[LAST_4][1].seconds,
        "single_pass_seconds": [found[layer][1].seconds for layer in LAST_4.split(",")],
        "images": found[LAST_4][1].n,
        "probes": probes,
        "each_layer": {"one_pass_seconds": each_s, "probes": by_depth},
    }


def toy_tree(root: Path) -> Path:
    """Random images in three classes, split train / val / test (the smoke run's data)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("val", 4), ("test", 5)):
        for label in ("a", "b", "c"):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{label}{i}.png")
    return root


def subset(manifest: Path, images: int, out: Path) -> Path:
    """``images`` rows of a CSV manifest drawn with seed 0, in the manifest's order, with
    absolute paths (the ViT rows). Drawn, not the first rows: a manifest listed class by class
    would give one class (ELPV's first 600 rows are all defective)."""
    lines = manifest.read_text().splitlines()
    header, body = lines[0], lines[1:]
    chosen = np.sort(np.random.default_rng(0).permutation(len(body))[:images])
    rows = [body[i] for i in chosen]
    column = header.split(",").index("path")
    fixed = []
    for row in rows:
        cells = row.split(",")
        cells[column] = str((manifest.parent / cells[column]).resolve())
        fixed.append(",".join(cells))
    out.write_text("\n".join([header, *fixed]) + "\n")
    return out


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "| dataset | protocol | test score [95% interval] | n | seconds |",
        "|---|---|---|---|---|",
    ]
    for name, found in results["datasets"].items():
        for protocol, row in found["rows"].items():
            score = _score(row)
            if "map_at_r" in row:
                score = f"recall@1 {score}, mAP@R {_score(row, 'map_at_r', 'map_at_r_interval')}"
            if "vs_linear" in row:
                v = row["vs_linear"]
                low, high = (100 * b for b in v["interval"])
                score += (
                    f"; − linear: {100 * v['difference']:+.1f} points [{low:+.1f}, {high:+.1f}], "
                    f"Holm p = {v['p_holm']:.2g}: {v['verdict']}"
                )
            lines.append(f"| {name} | {protocol} | {score} | {row['n']} | {row['seconds']:.2f} |")
        swept = found["sweep"]
        lines.append(
            f"| {name} | (k, T) sweep: {swept['heads']} heads, one search | "
            f"{_score(swept)} ({swept['chosen']}) | {swept['n']} | {swept['seconds']:.2f} "
            f"(one kNN fit: {swept['one_fit_seconds']:.2f}) |"
        )
        cal = found["calibration"]
        after = cal["after"]
        scaled = (
            f"after T={cal['temperature']:.2f}: ECE {after['ece']:.4f}, NLL {after['nll']:.4f}"
            if after
            else "no temperature"
        )
        lines.append(
            f"| {name} | linear probe calibration | ECE {cal['before']['ece']:.4f}, "
            f"NLL {cal['before']['nll']:.4f}; {scaled} | | |"
        )
    vit = results.get("layers")
    if vit:
        lines += [
            "",
            "| ViT layers | test accuracy [95% interval] | n | dims | probe seconds |",
            "|---|---|---|---|---|",
        ]
        for name, row in vit["probes"].items():
            lines.append(
                f"| {name} | {_score(row)} | {row['n']} | {row['dims']} | {row['seconds']:.2f} |"
            )
        singles = " + ".join(f"{s:.1f}" for s in vit["single_pass_seconds"])
        lines.append(
            f"\nExtraction of {vit['images']} images: last 4 blocks in one pass "
            f"{vit['one_pass_seconds']:.1f} s; four single-block passes {singles} s."
        )
        each = vit["each_layer"]
        lines += [
            "",
            "| compare across the last 4 layers, from one pass | test accuracy [95% interval] "
            "| n | dims | probe seconds |",
            "|---|---|---|---|---|",
        ]
        for layer, row in each["probes"].items():
            lines.append(
                f"| block {layer} | {_score(row)} | {row['n']} | {row['dims']} "
                f"| {row['seconds']:.2f} |"
            )
        lines.append(
            f"\nEach of the last 4 blocks its own entry: one pass {each['one_pass_seconds']:.1f} s"
            f" against four single-block passes {singles} s."
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="*", type=Path, help="datasets with train/val/test splits")
    parser.add_argument("--cache-dir", type=Path, default=Path("cache"))
    parser.add_argument("--json", type=Path, help="write the results here (and a .md beside)")
    parser.add_argument("--smoke", action="store_true", help="a toy tree and tiny models")
    args = parser.parse_args(argv)
    scale = SMOKE if args.smoke else REAL
    with tempfile.TemporaryDirectory() as tmp:
        data = [toy_tree(Path(tmp) / "toy")] if args.smoke else args.data
        if not data:
            parser.error("give datasets, or --smoke")
        options = ExtractOptions(**scale["extract"], cache_dir=args.cache_dir)
        results: dict[str, Any] = {"smoke": args.smoke, "backbone": scale["backbone"]}
        results["datasets"] = {
            str(d): protocols(load_feature_set(d, scale["backbone"], options)[0]) for d in data
        }
        vit_data = data[0]
        if scale["vit_images"]:
            vit_data = subset(data[0], scale["vit_images"], Path(tmp) / "vit.csv")
        # the subset's manifest (in a temporary folder) names the dataset's files by absolute path
        vit_options = replace(options, weights="auto", pool="cls+avg", allow_outside=True)
        results["layers"] = {"model": scale["vit"], **layers(vit_data, scale["vit"], vit_options)}
    table = markdown(results)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
        args.json.with_suffix(".md").write_text(table)
    return results


if __name__ == "__main__":
    main()

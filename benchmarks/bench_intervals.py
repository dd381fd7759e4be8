"""Comparisons you can trust, measured: interval widths, which backbone differences are real,
and what repeated splits cost and change.

For each dataset, ``featpipe compare`` (the library call) of four backbones with offline
ImageNet weights (EfficientNet-Lite0, Lite1, Lite2 and torchvision's MobileNetV2), twice:

* one split (the data's own): each backbone's test accuracy with its Wilson interval and n,
  and the paired verdict on the same test images (McNemar exact, Holm across the table);
* ``--repeats R`` (R = 10): the same selection and test on R re-drawn splits (features
  extracted once, cached), each backbone's mean with its interval across splits, and the
  verdict paired split by split (corrected resampled t, Holm).

It reports, per dataset: the test n and each interval's width; the verdict of each; the time
the heads took for one split and for R; and how the ranking by one split's test accuracy
differs from the ranking by the mean over R splits.

    .venv/bin/python benchmarks/bench_intervals.py WORK --json benchmarks/results/intervals.json
    .venv/bin/python benchmarks/bench_intervals.py WORK --datasets elpv fashion \
        --json benchmarks/results/intervals.json   # adds to the datasets the file holds
    .venv/bin/python benchmarks/bench_intervals.py WORK --smoke   # tiny, random weights: mechanics

Datasets (``featpipe datasets prepare``, written under WORK): ``elpv300`` (ELPV, 150 per class:
no fixed splits, so R re-draws train/val/test), ``elpv`` (all 2,624 ELPV images), ``fashion``
(Fashion-MNIST, 60 per class and split: a fixed test split, so R re-draws the val carve-out;
no val split is given, so ``--holdout 0.15`` carves one).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from featpipe.data.bundled import prepare_dataset
from featpipe.extraction.options import ExtractOptions
from featpipe.fitting.options import SweepOptions
from featpipe.reports.compare import Experiment, Row, compare, standings

BACKBONES = [
    "tf_efficientnet_lite0",
    "tf_efficientnet_lite1",
    "tf_efficientnet_lite2",
    "tv/mobilenet_v2",
]
# name → (bundled dataset, images per class (and split), holdout where the data has no val)
DATASETS: dict[str, tuple[str, int | None, float]] = {
    "elpv300": ("elpv", 150, 0.0),
    "elpv": ("elpv", None, 0.0),
    "fashion": ("fashion-mnist", 60, 0.15),
}
SMOKE_BACKBONES = ["test_efficientnet@none", "test_resnet@none"]


def smoke_data(work: Path, fixed: bool = False) -> Path:
    """Two classes of random 32 px images: mechanics only. Without ``fixed`` no splits (as
    ``elpv300`` and ``elpv``: repeats re-draw train/val/test); with it fixed ``train/`` and
    ``test/`` folders and no val (as ``fashion``: a hold-out carves val, repeats re-draw it)."""
    root = work / ("smoke-fixed" if fixed else "smoke")
    rng = np.random.default_rng(1 if fixed else 0)
    folders = {"train": 16, "test": 8} if fixed else {"": 20}
    for split, count in folders.items():
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / label / f"{label}_{i:02d}.png")
    return root


def order(rows: list[Row], key: dict[str, float]) -> list[str]:
    return sorted((r.backbone for r in rows), key=lambda b: -key[b])


def measure(
    name: str, data: Path, backbones: list[str], repeats: int, extract: ExtractOptions, work: Path,
    holdout: float,
) -> dict[str, Any]:  # fmt: skip
    """One dataset: compare with one split, then with ``repeats`` splits (features cached)."""
    out: dict[str, Any] = {"dataset": name, "backbones": backbones, "repeats": repeats}
    experiment = Experiment(
        data=[str(data)],
        backbones=backbones,
        options=SweepOptions(holdout=holdout),
        extract=extract,
        runs_dir=str(work / "runs" / name),
    )
    start = time.perf_counter()
    one = compare(experiment)
    out["one_split_s"] = time.perf_counter() - start
    out["extract_s"] = sum(r.extract_seconds for r in one)
    out["heads_one_split_s"] = sum(r.fit_seconds for r in one)
    [single] = standings(one)
    experiment.options = SweepOptions(holdout=holdout, repeats=repeats)
    start = time.perf_counter()
    many = compare(experiment)
    out["repeats_s"] = time.perf_counter() - start
    out["heads_repeats_s"] = sum(r.repeats.seconds for r in many if r.repeats)
    [split] = standings(many)
    out["rows"] = [
        {
            "backbone": r.backbone,
            "test": r.test,
            "test_interval": [r.test_interval.low, r.test_interval.high]
            if r.test_interval
            else None,
            "n": r.test_interval.n if r.test_interval else None,
            "val": r.val,
            "mean_over_splits": m.repeats.summary["accuracy"].estimate if m.repeats else None,
            "splits_interval": (
                [m.repeats.summary["accuracy"].low, m.repeats.summary["accuracy"].high]
                if m.repeats
                else None
            ),
            "std_across_splits": m.repeats.std["accuracy"] if m.repeats else None,
            "redrawn": m.repeats.redrawn if m.repeats else None,
            "splits_method": m.repeats.summary["accuracy"].method if m.repeats else None,
        }
        for r, m in zip(one, many, strict=True)
    ]
    out["verdict_one_split"] = str(single.ranking) if single.ranking else single.note
    out["verdict_repeats"] = str(split.splits) if split.splits else ""
    out["repeats_test"] = sorted({c.test for c in split.splits.comparisons}) if split.splits else []
    by_one = {r.backbone: r.test for r in one}
    by_many = {r.backbone: (r.repeats.summary["accuracy"].estimate if r.repeats else r.test)
               for r in many}  # fmt: skip
    out["ranking_one_split"] = order(one, by_one)
    out["ranking_repeats"] = order(many, by_many)
    out["rank_moves"] = sum(
        a != b for a, b in zip(out["ranking_one_split"], out["ranking_repeats"], strict=True)
    )
    return out


def table(results: list[dict[str, Any]]) -> str:
    """The README's tables: one row per dataset × backbone, then the verdicts and times."""
    lines = [
        "| dataset | backbone | test acc. [95% CI] (n) | width | mean over R splits [95% CI] "
        "| std across splits |",
        "|---|---|---|---|---|---|",
    ]
    for result in results:
        for row in result["rows"]:
            low, high = row["test_interval"] or (float("nan"), float("nan"))
            s_low, s_high = row["splits_interval"] or (float("nan"), float("nan"))
            lines.append(
                f"| {result['dataset']} | {row['backbone']} | {row['test']:.3f} "
                f"[{low:.2f}, {high:.2f}] ({row['n']}) | {high - low:.2f} | "
                f"{row['mean_over_splits']:.3f} [{s_low:.2f}, {s_high:.2f}] | "
                f"{row['std_across_splits']:.3f} |"
            )
    lines.append("")
    for result in results:
        lines += [
            f"* **{result['dataset']}**, one split: {result['verdict_one_split']}.",
            f"  Over {result['repeats']} splits ({', '.join(result['repeats_test'])}): "
            f"{result['verdict_repeats']}.",
            f"  Ranking by one split: {' > '.join(result['ranking_one_split'])}; by the mean "
            f"over {result['repeats']}: {' > '.join(result['ranking_repeats'])} "
            f"({result['rank_moves']} places differ). Heads: {result['heads_one_split_s']:.1f} s "
            f"for one split, {result['heads_repeats_s']:.1f} s for {result['repeats']} "
            f"(extraction {result['extract_s']:.0f} s, once).",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path, help="Folder for the datasets, cache and runs.")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    parser.add_argument("--smoke", action="store_true", help="Tiny random data and models.")
    args = parser.parse_args(argv)
    work = args.work
    cache = work / "cache"
    results = []
    if args.smoke:  # both layouts the real datasets have: no fixed splits, and fashion's
        extract = ExtractOptions(cache_dir=cache, image_size=32, precision="fp32",
                                 engine="torch", weights="none", workers=0)  # fmt: skip
        for name, fixed, holdout in (("smoke", False, 0.0), ("smoke-fixed", True, 0.15)):
            data = smoke_data(work, fixed)
            results.append(measure(name, data, SMOKE_BACKBONES, 3, extract, work, holdout))
    else:
        extract = ExtractOptions(cache_dir=cache, image_size=args.image_size, precision="fp32")
        for name in args.datasets:  # each dataset's results are written as soon as they exist
            dataset, per_class, holdout = DATASETS[name]
            root = prepare_dataset(dataset, work / name, per_class=per_class)
            results.append(measure(name, root, BACKBONES, args.repeats, extract, work, holdout))
            write(results, args.json)
    write(results, args.json)
    print(table(results))
    return 0


def write(results: list[dict[str, Any]], path: Path | None) -> None:
    """Write ``results`` to ``path``, keeping the results of other datasets already there (a
    run of ``--datasets elpv fashion`` adds to the ``elpv300`` measured before; a dataset
    measured again replaces its old entry, in its place)."""
    if not path:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    new = {r["dataset"]: r for r in results}
    kept = json.loads(path.read_text()) if path.is_file() else []
    merged = [new.pop(r["dataset"], r) for r in kept] + list(new.values())
    path.write_text(json.dumps(merged, indent=1))


if __name__ == "__main__":
    sys.exit(main())

"""Linear probes on the same cached features: featpipe's default fit against the peers.

Side by side, in one process, on real features (EfficientNet-Lite0, offline ImageNet weights,
224 px, fp32) with a fixed train / val / test split:

* **the peer**: LAION CLIP_benchmark's linear probe, re-implemented faithfully
  (``clip_benchmark/metrics/linear_probe.py``): L2-normalised features, ``nn.Linear``, AdamW
  with a cosine schedule, lr 0.1, 10 epochs, batch 64, weight decay chosen on val by the
  coarse-to-fine ``find_peak`` search over ``logspace(-6, 2, 97)`` (7 coarse values, then
  spans 8, 4, 2, 1 around the peak), then refitted on train + val and scored once on test;
* scikit-learn ``LogisticRegression`` (C = 1), ``LogisticRegressionCV`` (Cs = 13 values, 5-fold)
  and ``RidgeClassifierCV`` (45 alphas, efficient leave-one-out) on standardised features;
* featpipe's default ``fit`` (whatever :data:`featpipe.fitting.stage.DEFAULT_GRID` searches,
  then the refit on train + val), through the library, as a user calls it, on the cached entry;
  its test accuracy before the refit is recorded too, and the same at 40 epochs (the default
  trains 20);
* both probes ``--seeds`` times, independently (seed 0, 1, …: initialisation and batch order),
  reported as mean ± std: one seed moves either by a few test images;
* the regularisation paths against single fits: a 45-value ridge ``alpha`` sweep and a 13-value
  logistic ``C`` sweep, against one fit and against K independent fits;
* paired tests on the same test images (every probe's per-image test predictions are kept, seed
  by seed): featpipe's default (and the same at 40 epochs) against the peer, seed s against
  seed s, per dataset the accuracy difference with its paired-bootstrap 95% interval and
  McNemar's exact p (:func:`featpipe.stats.paired_difference`), Holm's correction over the
  datasets of each seed, and the verdict "better", "tied" or "worse" (over the seeds: the one
  they all give, else "mixed").

Every time is wall-clock seconds of the step alone (the features are in memory for all but
featpipe's default, which is timed as the library call a user makes: reading the cached entry
included). Last, whole processes: ``featpipe fit --head ridge`` against a 45-value ``alpha``
sweep on 2,560-d features, as the console script runs them.

    .venv/bin/python benchmarks/bench_probe.py --prepare WORK   # writes the three manifests
    .venv/bin/python benchmarks/bench_probe.py WORK/elpv/probe.csv WORK/fashion-mnist/probe.csv \\
        WORK/mnist-5k/probe.csv --cache-dir CACHE --json benchmarks/results/probe.json

Each dataset must have train, val and test splits (a CSV manifest with a split column).
``--prepare`` writes the bundled real datasets (ELPV, Fashion-MNIST at 300 per class and split,
MNIST-5k) and, for each, ``probe.csv``: at most 3,000 images drawn with seed 0, split 4:1:1
within each class. ``--smoke``: two toy datasets of random images and the tiny random-init
test model at 32 px, two seeds, no whole-process timing: every step and the paired tests run,
the figures mean nothing.

    .venv/bin/python benchmarks/bench_probe.py --smoke --json /tmp/probe-smoke.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featpipe import stats
from featpipe.heads.paths import logistic_path, ridge_classifier_path

PEER_WDS = np.logspace(-6, 2, 97)
ALPHAS = np.logspace(-3, 5, 45)
CS = np.logspace(-4, 2, 13)
BACKBONE = "tf_efficientnet_lite0"
EXTRACT = {"weights": "offline", "precision": "fp32", "engine": "torch"}
# --smoke: the tiny random-init test model (mechanics only)
SMOKE_BACKBONE = "test_efficientnet"
SMOKE_EXTRACT = {"weights": "none", "image_size": 32, "precision": "fp32", "engine": "torch"}
PREPARE = {"elpv": None, "fashion-mnist": 300, "mnist-5k": None}
MAX_IMAGES = 3000
PEER = "peer (CLIP_benchmark)"
# which probe is tested against which on the same test images (a − b), seed s against seed s
COMPARED = (("featpipe default", PEER), ("featpipe default at 40 epochs", PEER))
ALPHA = 0.05  # Holm's family-wise level over the datasets


def write_manifest(root: Path, images: list[Path], rng: np.random.Generator) -> Path:
    """``root/probe.csv``: ``images`` split 4:1:1 (train, val, test) within each class (the
    image's folder), the order within a class drawn from ``rng``."""
    rows = []
    for label in sorted({p.parent.name for p in images}):
        mine = [p for p in images if p.parent.name == label]
        mine = [mine[i] for i in rng.permutation(len(mine))]
        n_val = n_test = len(mine) // 6
        for i, path in enumerate(mine):
            split = "val" if i < n_val else "test" if i < n_val + n_test else "train"
            rows.append({"path": path.relative_to(root).as_posix(), "label": label, "split": split})
    manifest = root / "probe.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def prepare(work: Path) -> list[Path]:
    """The three benchmark datasets as images, each with a ``probe.csv`` of fixed splits."""
    from featpipe.data.bundled import prepare_dataset

    manifests = []
    rng = np.random.default_rng(0)
    for name, per_class in PREPARE.items():
        root = prepare_dataset(name, work / name, per_class=per_class)
        images = sorted(p for p in root.rglob("*.png"))
        images = [images[i] for i in sorted(rng.permutation(len(images))[:MAX_IMAGES])]
        manifests.append(write_manifest(root, images, rng))
    return manifests


def smoke_data(work: Path) -> list[Path]:
    """Two toy datasets for ``--smoke``: three classes of 30 random 32 px images each."""
    from PIL import Image

    manifests = []
    for d in range(2):
        root = work / f"toy{d}"
        rng = np.random.default_rng(d)
        images = []
        for label in ("a", "b", "c"):
            (root / label).mkdir(parents=True, exist_ok=True)
            for i in range(30):
                pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
                images.append(root / label / f"{label}_{i:02d}.png")
                Image.fromarray(pixels).save(images[-1])
        manifests.append(write_manifest(root, images, rng))
    return manifests


def _peer_train(X: np.ndarray, y: np.ndarray, wd: float, n_classes: int, seed: int = 0):
    torch.manual_seed(seed)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y).long()
    probe = torch.nn.Linear(X.shape[1], n_classes)
    opt = torch.optim.AdamW(probe.parameters(), lr=0.1, weight_decay=float(wd))
    epochs, batch = 10, 64
    steps_per_epoch = (len(X) + batch - 1) // batch
    total = epochs * steps_per_epoch
    step = 0
    for _ in range(epochs):
        order = torch.randperm(len(X))
        for s in range(0, len(X), batch):
            idx = order[s : s + batch]
            for group in opt.param_groups:
                group["lr"] = 0.5 * (1 + np.cos(np.pi * step / total)) * 0.1
            opt.zero_grad()
            torch.nn.functional.cross_entropy(probe(Xt[idx]), yt[idx]).backward()
            opt.step()
            step += 1
    return probe


def _predict(probe: torch.nn.Module, X: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return probe(torch.from_numpy(X)).argmax(1).numpy()


def _acc(probe: torch.nn.Module, X: np.ndarray, y: np.ndarray) -> float:
    return float((_predict(probe, X) == y).mean())


def peer_probe(
    splits: dict[str, tuple[np.ndarray, np.ndarray]], n_classes: int, seed: int = 0
) -> dict[str, Any]:
    """CLIP_benchmark's probe: find_peak over weight decay, refit on train + val, test once
    (``seed``: torch's seed for every training, as the peer's ``seed`` argument)."""
    norm = {k: (X / np.linalg.norm(X, axis=1, keepdims=True), y) for k, (X, y) in splits.items()}
    (Xtr, ytr), (Xva, yva), (Xte, yte) = norm["train"], norm["val"], norm["test"]
    start = time.perf_counter()
    scores: dict[int, float] = {}

    def find_peak(idxs: list[int]) -> int:
        for i in idxs:
            if i not in scores:
                probe = _peer_train(Xtr, ytr, PEER_WDS[i], n_classes, seed)
                scores[i] = _acc(probe, Xva, yva)
        return max(idxs, key=lambda i: (scores[i], -i))

    peak = find_peak([int(i) for i in np.linspace(0, 96, 7)])
    span = 8
    while span > 0:
        peak = find_peak([max(peak - span, 0), peak, min(peak + span, 96)])
        span //= 2
    Xall, yall = np.vstack([Xtr, Xva]), np.concatenate([ytr, yva])
    final = _peer_train(Xall, yall, PEER_WDS[peak], n_classes, seed)
    seconds = time.perf_counter() - start
    pred = _predict(final, Xte)
    return {
        "test_acc": float((pred == yte).mean()),
        "seconds": seconds,
        "wd": float(PEER_WDS[peak]),
        "trainings": len(scores) + 1,
        "test_pred": pred.tolist(),  # per test image, in the cached entry's row order
    }


def sklearn_probes(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV, RidgeClassifierCV
    from sklearn.preprocessing import StandardScaler

    (Xtr, ytr), (Xte, yte) = splits["train"], splits["test"]
    scaler = StandardScaler().fit(Xtr)
    Ztr, Zte = scaler.transform(Xtr), scaler.transform(Xte)
    out: dict[str, Any] = {}
    for name, model in (
        ("LogisticRegression(C=1)", LogisticRegression(max_iter=2000)),
        ("LogisticRegressionCV(13 Cs)", LogisticRegressionCV(Cs=CS, max_iter=2000)),
        ("RidgeClassifierCV(45 alphas)", RidgeClassifierCV(alphas=ALPHAS)),
    ):
        start = time.perf_counter()
        model.fit(Ztr, ytr)
        out[name] = {
            "test_acc": float((model.predict(Zte) == yte).mean()),
            "seconds": time.perf_counter() - start,
        }
    return out


def path_sweeps(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """A 45-alpha ridge sweep and a 13-C logistic sweep: path against one fit and K fits."""
    from sklearn.linear_model import LogisticRegression, RidgeClassifier
    from sklearn.preprocessing import StandardScaler

    Xtr, ytr = splits["train"]
    Z = StandardScaler().fit_transform(Xtr)
    alphas, Cs = ALPHAS, CS

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    return {
        "ridge one fit": timed(lambda: RidgeClassifier(alpha=1.0).fit(Z, ytr)),
        "ridge 45 fits": timed(lambda: [RidgeClassifier(alpha=a).fit(Z, ytr) for a in alphas]),
        "ridge 45-alpha path": timed(lambda: ridge_classifier_path(Z, ytr, alphas)),
        "logreg one fit": timed(lambda: LogisticRegression(max_iter=2000).fit(Z, ytr)),
        "logreg 13 fits": timed(
            lambda: [LogisticRegression(C=c, max_iter=2000).fit(Z, ytr) for c in Cs]
        ),
        "logreg 13-C path": timed(lambda: logistic_path(Z, ytr, Cs)),
    }


def featpipe_default(
    data: Path,
    test_relpath: np.ndarray,
    setup: dict[str, Any],
    runs_dir: Path,
    seed: int = 0,
    **change: list[Any],
) -> dict[str, Any]:
    """``featpipe.fit`` with its default grid (head seed ``seed``; ``change``: grid values
    replaced, e.g. ``epochs=[40]``), timed as the library call; its test predictions (from the
    run's predictions.npz) in the order of ``test_relpath``."""
    import featpipe
    from featpipe.fitting.stage import DEFAULT_GRID

    start = time.perf_counter()
    run, _ = featpipe.fit(
        data,
        setup["backbone"],
        grid=DEFAULT_GRID | change,
        head={"seed": seed},
        runs_dir=runs_dir,
        extract_options=setup["extract"],
    )
    seconds = time.perf_counter() - start
    recorded = run.predictions()
    tested = recorded.splits["test"].aligned(test_relpath) if recorded else None
    if tested is None:
        raise RuntimeError(f"{run.path}: no test predictions on the benchmark's test images")
    before = run.metrics.test_before_refit
    return {
        "test_acc": run.metrics.test.mean,
        "test_acc_before_refit": before.mean if before else None,
        "seconds": seconds,
        "fit_seconds": run.metrics.fit_seconds,
        "configs": run.metrics.n_configs,
        "chosen": run.metrics.chosen_label,
        "trained_on": run.metrics.trained_on,
        "test_pred": tested.outputs.argmax(axis=1).tolist(),
    }


def over_seeds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Independent runs of one probe (seeds 0, 1, …): mean and std of accuracy, mean times."""
    out: dict[str, Any] = {"seeds": len(runs), "runs": runs}
    for name in ("test_acc", "test_acc_before_refit", "seconds", "fit_seconds"):
        values = [r[name] for r in runs if r.get(name) is not None]
        if values:
            out[name] = float(np.mean(values))
            out[name + "_std"] = float(np.std(values))
    return out


def paired_tests(datasets: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each of :data:`COMPARED` (a − b) on each dataset's test images, seed s of a against
    seed s of b: the accuracy difference with its paired-bootstrap 95% interval, McNemar's
    exact p, Holm over the datasets of that seed; per dataset, the verdict over the seeds."""
    out: dict[str, Any] = {}
    for a, b in COMPARED:
        seeds = min(min(row[a]["seeds"], row[b]["seeds"]) for row in datasets.values())
        tables: dict[str, list[dict[str, Any]]] = {d: [] for d in datasets}
        for s in range(seeds):
            tested = {}
            for d, row in datasets.items():
                y, k = row["test_y"], row["n_classes"]
                pa = stats.Predictions.classification(y, row[a]["runs"][s]["test_pred"], k)
                pb = stats.Predictions.classification(y, row[b]["runs"][s]["test_pred"], k)
                tested[d] = (stats.paired_difference(pa, pb, "accuracy"), stats.mcnemar(pa, pb))
            adjusted = stats.holm([difference.p for difference, _ in tested.values()])
            for (d, (difference, counts)), p_holm in zip(tested.items(), adjusted, strict=True):
                gap = difference.interval
                better = "better" if gap.estimate > 0 else "worse"
                tables[d].append(
                    {
                        "seed": s,
                        "difference": gap.estimate,
                        "interval": [gap.low, gap.high],
                        "n": gap.n,
                        "only_a": counts.only_a,
                        "only_b": counts.only_b,
                        "p": difference.p,
                        "p_holm": p_holm,
                        "verdict": "tied" if p_holm > ALPHA else better,
                    }
                )
        out[f"{a} vs {b}"] = {
            "a": a,
            "b": b,
            "test": "accuracy a − b: paired bootstrap BCa 95% interval; McNemar exact p, Holm "
            f"over the {len(datasets)} datasets of each seed (alpha {ALPHA})",
            "datasets": {
                d: {"seeds": rows, "verdict": verdict(rows)} for d, rows in tables.items()
            },
        }
    return out


def verdict(rows: list[dict[str, Any]]) -> str:
    """The seeds' one verdict, else ``mixed`` with how many said what."""
    said = [r["verdict"] for r in rows]
    if len(set(said)) == 1:
        return said[0]
    counts = ", ".join(f"{v} {said.count(v)}" for v in ("better", "tied", "worse") if v in said)
    return f"mixed ({counts} of {len(said)} seeds)"


def paired_table(paired: dict[str, Any]) -> str:
    """The paired tests as a Markdown table (differences in points)."""
    lines = [
        "| a vs b | dataset | seed | a − b, points [95% CI] | only a / only b right | p | "
        "p (Holm) | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, comparison in paired.items():
        for d, entry in comparison["datasets"].items():
            for r in entry["seeds"]:
                low, high = r["interval"]
                lines.append(
                    f"| {name} | {Path(d).parent.name} | {r['seed']} | "
                    f"{100 * r['difference']:+.1f} [{100 * low:.1f}, {100 * high:.1f}] "
                    f"(n={r['n']}) | {r['only_a']} / {r['only_b']} | {r['p']:.3g} | "
                    f"{r['p_holm']:.3g} | {r['verdict']} |"
                )
    lines.append("")
    for comparison in paired.values():
        verdicts = ", ".join(
            f"{Path(d).parent.name} {entry['verdict']}"
            for d, entry in comparison["datasets"].items()
        )
        lines.append(f"* {comparison['a']} against {comparison['b']}: {verdicts}.")
    return "\n".join(lines)


def whole_process_ridge(data: Path, cache_dir: Path, repeats: int) -> dict[str, Any]:
    """``featpipe fit --head ridge`` against a 45-value alpha sweep, fresh processes on 2,560-d
    features (Lite0 avg‖max), alternating, best of ``repeats``: what a user waits for."""
    cli = Path(sys.executable).parent / "featpipe"
    common = [str(cli), "fit", str(data), "--pool", "avgmax", "--cache-dir", str(cache_dir)]
    common += [f"--{k}={v}" for k, v in EXTRACT.items()]
    alphas = ",".join(f"{a:.4g}" for a in ALPHAS)
    commands = {
        "ridge, one alpha": ["--head", "ridge"],
        "ridge, 45 alphas": ["--head", "ridge", "--sweep", f"alpha={alphas}"],
    }
    with tempfile.TemporaryDirectory() as runs:
        subprocess.run([*common, "--head", "ridge", "--runs-dir", runs], check=True)  # extract
        best = {name: float("inf") for name in commands}
        for _ in range(repeats):
            for name, extra in commands.items():
                start = time.perf_counter()
                subprocess.run(
                    [*common, *extra, "--runs-dir", runs], check=True, capture_output=True
                )
                best[name] = min(best[name], time.perf_counter() - start)
    best["ratio"] = best["ridge, 45 alphas"] / best["ridge, one alpha"]
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="*", type=Path, help="datasets with train/val/test splits")
    parser.add_argument("--prepare", type=Path, help="write the three datasets here, then stop")
    parser.add_argument("--cache-dir", type=Path, default=Path("cache"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3, help="independent runs of both probes")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--smoke", action="store_true", help="toy data and the tiny test model")
    args = parser.parse_args(argv)
    args.command = " ".join(["python benchmarks/bench_probe.py", *(argv or sys.argv[1:])])
    if args.prepare:
        print("\n".join(map(str, prepare(args.prepare))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:
            args.data, args.seeds = smoke_data(Path(tmp) / "toy"), 2
        if not args.data:
            parser.error("give datasets (see --prepare), or --smoke")
        run(args, Path(tmp))


def run(args: argparse.Namespace, tmp: Path) -> None:
    """Every probe on every dataset, the paired tests, then (not in a smoke run) whole
    processes."""
    backbone, extract_options = (
        (SMOKE_BACKBONE, SMOKE_EXTRACT) if args.smoke else (BACKBONE, EXTRACT)
    )
    setup = {"backbone": backbone, "extract": extract_options | {"cache_dir": args.cache_dir}}
    out: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": args.command,
        "backbone": "tiny random-init test model, 32 px (smoke)"
        if args.smoke
        else "tf_efficientnet_lite0, offline weights, 224 px, fp32, avg pool (1280-d)",
        "load_average_start": os.getloadavg()[0],
        "datasets": {},
    }
    from featpipe.extraction.stage import extract

    seeds = range(args.seeds)
    runs = tmp / "runs"
    for data in args.data:
        features = extract(data, backbone, **setup["extract"]).load()
        splits = {
            s: (features.where(s).X.astype(np.float32), features.where(s).y)
            for s in ("train", "val", "test")
        }
        test_relpath = features.where("test").relpath
        row = {
            "sizes": {s: len(y) for s, (_, y) in splits.items()},
            "n_classes": len(features.class_names),
            "test_relpath": test_relpath.tolist(),
            "test_y": splits["test"][1].tolist(),
            "featpipe default": over_seeds(
                [featpipe_default(data, test_relpath, setup, runs, s) for s in seeds]
            ),
            "featpipe default at 40 epochs": over_seeds(
                [featpipe_default(data, test_relpath, setup, runs, s, epochs=[40]) for s in seeds]
            ),
            PEER: over_seeds([peer_probe(splits, len(features.class_names), s) for s in seeds]),
            **sklearn_probes(splits),
            "paths": path_sweeps(splits),
        }
        print(json.dumps({str(data): summary(row)}, indent=1), flush=True)
        out["datasets"][str(data)] = row
    out["paired"] = paired_tests(out["datasets"])
    print(paired_table(out["paired"]), flush=True)
    if args.smoke:  # whole processes are timings: a smoke run only shows the steps run
        out["whole process"] = None
    else:
        out["whole process"] = whole_process_ridge(args.data[0], args.cache_dir, args.repeats)
        print(json.dumps(out["whole process"], indent=1))
    out["load_average_end"] = os.getloadavg()[0]
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


def summary(row: dict[str, Any]) -> dict[str, Any]:
    """A dataset's figures without the per-image predictions (what is printed)."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key in ("test_relpath", "test_y"):
            continue
        if isinstance(value, dict) and "runs" in value:
            value = value | {
                "runs": [{k: v for k, v in r.items() if k != "test_pred"} for r in value["runs"]]
            }
        out[key] = value
    return out


if __name__ == "__main__":
    main()

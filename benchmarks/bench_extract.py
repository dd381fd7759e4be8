"""Extraction benchmarks: ceiling ratio, naive-recipe ratio, memory growth, incremental rerun.

Every figure is measured side by side in one run on one machine, because these machines are
shared and noisy: the forward-only ceiling is measured before and after the end-to-end run and
averaged, and the naive recipe runs on the same images, model and weights.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

import featpipe
from featpipe.backbones.build import BackboneSpec, build_backbone
from featpipe.data.bundled import prepare_dataset
from featpipe.runtime.conversions import Conversions
from featpipe.runtime.engines import Normalized
from featpipe.runtime.tuning import build_engine, measure


def _subset(source: Path, out: Path, per_class: int) -> Path:
    """The first ``per_class`` images of each leaf folder (class, or split/class), copied."""
    if out.exists():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    leaves = sorted({p.parent for p in source.rglob("*.png")})
    for leaf in leaves:
        target = tmp / leaf.relative_to(source)
        target.mkdir(parents=True)
        for f in sorted(leaf.glob("*.png"))[:per_class]:
            shutil.copy(f, target / f.name)
    tmp.rename(out)
    return out


NAIVE = """
import json, sys, time
import torch
from torchvision import datasets, transforms
from featpipe.backbones.build import BackboneSpec, build_backbone

root, backbone, device = sys.argv[1:4]
built = build_backbone(BackboneSpec(backbone, weights="offline"))
config, size = built.data_config, built.data_config["input_size"][-1]
transform = transforms.Compose(
    [
        transforms.Resize(int(size / config["crop_pct"])),
        transforms.CenterCrop(size),
        transforms.ToTensor(),
        transforms.Normalize(config["mean"], config["std"]),
    ]
)
dataset = datasets.ImageFolder(root, transform=transform)
loader = torch.utils.data.DataLoader(dataset, batch_size=4, shuffle=False, num_workers=2)
model = built.module.to(device).eval()
start = time.perf_counter()
features = []
with torch.no_grad():
    for inputs, _ in loader:
        features.append(model(inputs.to(device)))
torch.cat(features).cpu()
seconds = time.perf_counter() - start
rate = len(dataset) / seconds
print(json.dumps({"images": len(dataset), "seconds": seconds, "images_per_s": rate}))
"""


def naive_recipe(root: Path, backbone: str, device: torch.device) -> dict[str, float]:
    """The course material's loop, in a fresh process as a user would run it: ImageFolder, PIL
    transforms, batch 4, 2 workers, NCHW fp32, features gathered in a Python list (on the GPU
    when there is one, as the course does), glibc's allocator defaults.

    ``images_per_s`` times its loop alone (the script's own clock); ``wall_s`` the whole
    process from outside, imports, model build and exit included, as ``featpipe extract`` is
    timed in ``bench_engines.py``'s whole-process part."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", NAIVE, str(root), backbone, str(device)],
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - start
    return json.loads(done.stdout.strip().splitlines()[-1]) | {"wall_s": wall}


def ceiling_and_naive(
    name: str,
    root: Path,
    backbone: str,
    work: Path,
    device: str = "auto",
    workers: int | None = None,
    naive: bool = True,
) -> dict[str, Any]:
    """End-to-end featpipe vs forward-only (same settings) vs the naive recipe."""
    cache = work / f"cache-{name}"
    shutil.rmtree(cache, ignore_errors=True)
    spec = BackboneSpec(backbone, weights="offline")
    built = build_backbone(spec)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else "cpu")
    # Probe once on a few images (the choice is memoised in the cache directory), so that the
    # end-to-end run and the ceiling use the same engine, precision and batch size.
    probe_root = _subset(root, work / f"{name}-probe", 2)
    settings = featpipe.extract(probe_root, backbone, weights="offline", cache_dir=cache).settings
    engine = build_engine(
        settings,
        Normalized(built.module, built.data_config),
        dev,
        Conversions.under(work, backbone, backbone.replace("/", "_")),
    )
    size = tuple(built.data_config["input_size"][1:])

    def ceiling() -> float:
        return measure(engine, settings["batch_size"], size, min_seconds=4.0)

    before = ceiling()
    result = featpipe.extract(root, backbone, weights="offline", cache_dir=cache, workers=workers)
    after = ceiling()
    forward = (before + after) / 2
    row = {
        "dataset": name,
        "backbone": backbone,
        "images": result.n,
        "settings": {k: settings[k] for k in ("engine", "precision", "batch_size", "channels_last")}
        | {"workers": result.settings.get("workers")},
        "end_to_end_images_per_s": round(result.images_per_second, 1),
        "forward_only_images_per_s": round(forward, 1),
        "forward_only_before_after": [round(before, 1), round(after, 1)],
        "ratio_to_ceiling": round(result.images_per_second / forward, 3),
    }
    if naive:
        baseline = naive_recipe(root, backbone, dev)
        row["naive_images_per_s"] = round(baseline["images_per_s"], 1)
        row["speedup_vs_naive"] = round(result.images_per_second / baseline["images_per_s"], 2)
    return row


RSS_CHILD = """
import json, resource, sys
import featpipe
r = featpipe.extract(sys.argv[1], "tf_efficientnet_lite0", weights="offline", image_size=64,
                     precision="fp32", batch_size=32, workers=1, cache_dir=sys.argv[2])
print(json.dumps({"n": r.n, "seconds": r.seconds,
                  "main_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "workers_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def memory_growth(work: Path) -> dict[str, Any]:
    """Peak RSS of a fresh extraction process at N=1k and N=10k (Fashion-MNIST, 64 px)."""
    rows = {}
    for n, per_class in ((1000, 50), (10000, 500)):
        root = prepare_dataset("fashion-mnist", work / f"fashion-{n}", per_class=per_class)
        cache = work / f"cache-rss-{n}"
        shutil.rmtree(cache, ignore_errors=True)
        out = subprocess.run(
            [sys.executable, "-c", RSS_CHILD, str(root), str(cache)],
            check=True,
            capture_output=True,
            text=True,
        )
        rows[n] = json.loads(out.stdout.strip().splitlines()[-1])
    small, large = rows[1000], rows[10000]
    return {
        "dataset": "fashion-mnist at 64 px, Lite0",
        "n_1k": small,
        "n_10k": large,
        "main_rss_growth": round(large["main_kib"] / small["main_kib"] - 1, 4),
        "worker_rss_growth": round(large["workers_kib"] / small["workers_kib"] - 1, 4),
    }


def incremental(work: Path, backbone: str = "tf_efficientnet_lite0") -> dict[str, Any]:
    """A full extraction vs. a rerun after adding 1% new images (and a pure cache hit)."""
    root = work / "fashion-incremental"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(prepare_dataset("fashion-mnist", work / "fashion-2k", per_class=100), root)
    extra = prepare_dataset("fashion-mnist", work / "fashion-extra", per_class=102)
    cache = work / "cache-incremental"
    shutil.rmtree(cache, ignore_errors=True)
    full = featpipe.extract(root, backbone, weights="offline", cache_dir=cache)
    added = 0
    for split in ("train", "test"):
        for class_dir in sorted((extra / split).iterdir()):
            src = class_dir / f"{class_dir.name}_00101.png"
            shutil.copy(src, root / split / class_dir.name / "new_00101.png")
            added += 1
    rerun = featpipe.extract(root, backbone, weights="offline", cache_dir=cache)
    hit = featpipe.extract(root, backbone, weights="offline", cache_dir=cache)
    cli = _timed_cli_hit(root, backbone, cache)
    return {
        "dataset": "fashion-mnist 2,000 + 1% new",
        "backbone": backbone,
        "full_seconds": round(full.seconds, 2),
        "full_images": full.n,
        "added": added,
        "incremental_seconds": round(rerun.seconds, 2),
        "incremental_new_rows": rerun.n_new,
        "incremental_vs_full": round(rerun.seconds / full.seconds, 4),
        "hit_seconds_in_process": round(hit.seconds, 3),
        "hit_seconds_cli_wall": round(cli, 3),
    }


def _timed_cli_hit(root: Path, backbone: str, cache: Path) -> float:
    featpipe_bin = Path(sys.executable).with_name("featpipe")
    start = time.perf_counter()
    subprocess.run(
        [
            str(featpipe_bin),
            "extract",
            str(root),
            "-b",
            backbone,
            "-w",
            "offline",
            "--cache-dir",
            str(cache),
        ],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


def run(work: Path, quick: bool = False) -> dict[str, Any]:
    elpv = prepare_dataset("elpv", work / "elpv")
    per_class = 100 if quick else 300
    elpv_subset = _subset(elpv, work / f"elpv-{per_class}", per_class)
    fashion = prepare_dataset("fashion-mnist", work / "fashion-mnist-600", per_class=30)
    results: dict[str, Any] = {"ceiling_and_naive": []}
    for name, root, backbone in (
        (f"elpv-{2 * per_class}", elpv_subset, "tf_efficientnet_lite0"),
        ("fashion-mnist-600", fashion, "tf_efficientnet_lite0"),
        (f"elpv-{2 * per_class}", elpv_subset, "tv/mobilenet_v2"),
    ):
        row = ceiling_and_naive(name, root, backbone, work)
        print(json.dumps(row), flush=True)
        results["ceiling_and_naive"].append(row)
    results["memory"] = memory_growth(work)
    print(json.dumps(results["memory"]), flush=True)
    results["incremental"] = incremental(work)
    print(json.dumps(results["incremental"]), flush=True)
    return results


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "| dataset | backbone | N | settings | end-to-end img/s | forward-only img/s | "
        "ratio to ceiling | naive recipe img/s | speed-up vs naive |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["ceiling_and_naive"]:
        s = r["settings"]
        setting = (
            f"{s['precision']}, batch {s['batch_size']}, "
            + ("channels_last" if s["channels_last"] else "NCHW")
            + f", {s['workers']} worker(s)"
        )
        lines.append(
            f"| {r['dataset']} | {r['backbone']} | {r['images']} | {setting} | "
            f"{r['end_to_end_images_per_s']} | {r['forward_only_images_per_s']} | "
            f"{r['ratio_to_ceiling']:.2f} | {r.get('naive_images_per_s', '-')} | "
            + (f"{r['speedup_vs_naive']:.2f}× |" if "speedup_vs_naive" in r else "- |")
        )
    if "memory" not in results:  # the CUDA section quotes the first table only
        return "\n".join(lines)
    m = results["memory"]
    lines += [
        "",
        "| peak RSS | N = 1,000 | N = 10,000 | growth |",
        "|---|---|---|---|",
        f"| main process | {m['n_1k']['main_kib'] / 1024:.0f} MiB | "
        f"{m['n_10k']['main_kib'] / 1024:.0f} MiB | {100 * m['main_rss_growth']:+.1f}% |",
        f"| largest worker | {m['n_1k']['workers_kib'] / 1024:.0f} MiB | "
        f"{m['n_10k']['workers_kib'] / 1024:.0f} MiB | {100 * m['worker_rss_growth']:+.1f}% |",
    ]
    i = results["incremental"]
    lines += [
        "",
        "| run | seconds |",
        "|---|---|",
        f"| full extraction, {i['full_images']} images | {i['full_seconds']} |",
        f"| rerun after adding {i['added']} images (1%) | {i['incremental_seconds']} "
        f"({100 * i['incremental_vs_full']:.1f}% of full) |",
        f"| cache hit, in process | {i['hit_seconds_in_process']} |",
        f"| cache hit, `featpipe extract` wall clock | {i['hit_seconds_cli_wall']} |",
    ]
    return "\n".join(lines)

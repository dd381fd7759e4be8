"""Extraction with ``torchrun --nproc-per-node 2`` (gloo, CPU) against one process.

Both runs start cold (new cache directory) on the same images with the same fixed settings, so
the wall-clock times include process start-up, model loading and the commit of the entry. On
a 2-core machine one process already uses both cores (two intra-op threads), while torchrun
gives each rank one thread: the ideal speed-up here is bounded near 1×, and the figure shows
what splitting costs or gains, not how the design scales on N GPUs (see README).
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from featpipe.cache.entry import load_features
from featpipe.data.bundled import prepare_dataset

SETTINGS = [
    "-b",
    "tf_efficientnet_lite0",
    "-w",
    "offline",
    "--precision",
    "fp32",
    "--engine",
    "onnxruntime",
    "--batch-size",
    "8",
]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _timed(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, done.stdout


def _agreement(single: Path, ranks: Path) -> dict[str, float]:
    """How far the entry torchrun's ranks wrote is from the single process's, row by row.

    The ranks run with one intra-op thread each, so their sums are ordered differently: the
    values agree to float rounding, and this is the figure README quotes.
    """
    a, b = (load_features(next(cache.rglob("*.h5"))) for cache in (single, ranks))
    assert list(a.relpath) == list(b.relpath), "the two entries list different rows"
    cos = (a.X * b.X).sum(1) / (np.linalg.norm(a.X, axis=1) * np.linalg.norm(b.X, axis=1))
    return {
        "rows": len(a.X),
        "max_abs_diff": float(np.abs(a.X - b.X).max()),
        "max_abs_value": float(np.abs(a.X).max()),
        "min_cosine": float(cos.min()),
    }


def run(work: Path, quick: bool = False) -> dict[str, Any]:
    data = prepare_dataset(
        "elpv",
        work / ("elpv-dist-40" if quick else "elpv-dist-200"),
        per_class=40 if quick else 200,
    )
    featpipe_cli = [sys.executable, "-m", "featpipe", "extract", str(data), *SETTINGS]
    results = {}
    for name, prefix in (
        ("1 process", []),
        (
            "torchrun, 2 ranks",
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nproc-per-node=2",
                f"--master-port={_port()}",
                "-m",
                "featpipe",
                "extract",
                str(data),
                *SETTINGS,
            ],
        ),
    ):
        cache = work / f"cache-dist-{'ranks' if prefix else 'single'}"
        shutil.rmtree(cache, ignore_errors=True)
        cmd = (prefix or featpipe_cli) + ["--cache-dir", str(cache)]
        seconds, out = _timed(cmd)
        rate = re.search(r"([\d.]+) images/s", out)
        results[name] = {
            "wall_seconds": round(seconds, 1),
            "extract_images_per_s": float(rate.group(1)) if rate else None,
        }
        print(name, results[name], flush=True)
    one, two = results["1 process"], results["torchrun, 2 ranks"]
    return {
        "agreement": _agreement(*(work / f"cache-dist-{n}" for n in ("single", "ranks"))),
        "dataset": f"elpv subset ({'80' if quick else '400'} images, 224 px)",
        "settings": " ".join(SETTINGS),
        "runs": results,
        "wall_speedup": round(one["wall_seconds"] / two["wall_seconds"], 2),
        "extract_speedup": round(two["extract_images_per_s"] / one["extract_images_per_s"], 2),
    }


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"{results['dataset']}; `{results['settings']}`.",
        "",
        "| run | wall clock (s) | extraction images/s |",
        "|---|---|---|",
    ]
    for name, r in results["runs"].items():
        lines.append(f"| {name} | {r['wall_seconds']} | {r['extract_images_per_s']} |")
    lines += [
        "",
        f"Speed-up of 2 ranks over 1 process: {results['extract_speedup']}× in "
        f"extraction throughput, {results['wall_speedup']}× in wall clock.",
        f"Entries row for row: max |Δ| {results['agreement']['max_abs_diff']:.2e} "
        f"(largest value {results['agreement']['max_abs_value']:.2f}), min cosine "
        f"{results['agreement']['min_cosine']:.9f}.",
    ]
    return "\n".join(lines)

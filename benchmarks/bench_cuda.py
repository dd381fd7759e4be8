"""The CUDA path, measured where a GPU is present (the ``device`` tool's H100 for this project).

* forward-only images/s of the frozen embedder on synthetic ``uint8`` batches: fp32, bf16 and
  fp16 autocast, each in NCHW and channels_last, side by side in one process;
* end-to-end extraction (decoding in DataLoader workers, pinned memory, non-blocking copies,
  the settings the probe chose) against that forward-only ceiling and the course material's
  naive recipe on the same GPU;
* fine-tune images/s per freezing level against a forward pass over the same images.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import bench_extract
import bench_finetune
import torch

from featpipe.backbones.build import BackboneSpec, build_backbone
from featpipe.data.bundled import prepare_dataset
from featpipe.runtime.engines import Normalized, TorchEngine
from featpipe.runtime.tuning import measure

BACKBONE = "tf_efficientnet_lite0"


def forward_grid(batch: int = 256) -> list[dict[str, Any]]:
    built = build_backbone(BackboneSpec(BACKBONE, "offline"))
    module = Normalized(built.module, built.data_config)
    size = module.input_size
    rows = []
    for precision in ("fp32", "bf16", "fp16"):
        for channels_last in (False, True):
            engine = TorchEngine(module, torch.device("cuda"), precision, channels_last)
            rate = measure(engine, batch, size, min_seconds=3.0, windows=3)
            rows.append(
                {
                    "precision": precision,
                    "memory_format": "channels_last" if channels_last else "NCHW",
                    "batch": batch,
                    "images_per_s": round(rate, 1),
                }
            )
            print(rows[-1], flush=True)
    return rows


WORKERS = (8, 15)


def loader_rate(data: Path, workers: int, batch: int = 128) -> dict[str, Any]:
    """Images/s of decoding alone (the DataLoader with pinned memory, no model)."""
    from featpipe.data.datasets import scan
    from featpipe.data.loader import make_loader
    from featpipe.data.transforms import ImageToUint8

    built = build_backbone(BackboneSpec(BACKBONE, "offline"))
    dataset = scan(data)
    paths = [str(dataset.root / i.relpath) for i in dataset.items]
    loader = make_loader(paths, ImageToUint8(built.data_config, True), batch, workers, True)
    start = time.perf_counter()
    count = sum(len(b.index) for b in loader)
    row = {"workers": workers, "images_per_s": round(count / (time.perf_counter() - start), 1)}
    print(row, flush=True)
    return row


def run(work: Path, quick: bool = False) -> dict[str, Any]:
    if not torch.cuda.is_available():
        raise SystemExit("the cuda section needs a GPU (run it on the device machine)")
    per_class = 200 if quick else 1000
    data = prepare_dataset("fashion-mnist", work / f"fashion-cuda-{per_class}", per_class=per_class)
    results: dict[str, Any] = {"gpu": torch.cuda.get_device_name(0)}
    results["forward"] = forward_grid()
    name = f"fashion-mnist-{20 * per_class}"
    results["loader"] = [loader_rate(data, w) for w in WORKERS]
    results["extract"] = [bench_extract.ceiling_and_naive(name, data, BACKBONE, work)]
    more = bench_extract.ceiling_and_naive(name, data, BACKBONE, work, workers=15, naive=False)
    results["extract"].append(more)
    print(results["extract"], flush=True)
    ft_data = prepare_dataset("fashion-mnist", work / "fashion-cuda-ft-300", per_class=300)
    results["finetune"] = bench_finetune.levels(ft_data, work, batch_size=128)
    return results


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"GPU: {results['gpu']}. {BACKBONE} (offline weights), 224 px.",
        "",
        "| precision | memory format | batch | forward-only img/s |",
        "|---|---|---|---|",
    ]
    for r in results["forward"]:
        lines.append(
            f"| {r['precision']} | {r['memory_format']} | {r['batch']} | {r['images_per_s']} |"
        )
    lines += ["", "| DataLoader workers | decoding only, img/s |", "|---|---|"]
    lines += [f"| {r['workers']} | {r['images_per_s']} |" for r in results.get("loader", [])]
    extract = results["extract"] if isinstance(results["extract"], list) else [results["extract"]]
    lines += ["", bench_extract.markdown({"ceiling_and_naive": extract})]
    lines += [
        "",
        "The rows are consecutive runs of the same extraction (the first also against the naive "
        "recipe). A run of 20,000 images lasts seconds, so worker start-up and first CUDA calls "
        "weigh on it; the steady-state loop (`benchmarks/cuda_host_threads.py`) is the better "
        "guide to throughput on large datasets.",
        "",
    ]
    lines += [bench_finetune.markdown(results["finetune"])]
    return "\n".join(lines)

"""Fine-tune speed per freezing level, against a forward pass over the same images, in one run.

Fully frozen (head only) should cost about one forward pass: no activations are kept and no
backward pass runs through frozen blocks.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from featpipe.data.bundled import prepare_dataset
from featpipe.data.transforms import ImageToUint8
from featpipe.finetuning.config import FinetuneConfig
from featpipe.finetuning.plan import make_plan
from featpipe.finetuning.trainer import Trainer

LEVELS = ("head", "last:3", "all")


def forward_rate(trainer: Trainer) -> float:
    """Images/s of eval-mode forward passes over the training images: decoding included, with
    the same batch size and worker processes as the training epoch."""
    from featpipe.data.loader import make_loader

    items = trainer.plan.train
    loader = make_loader(
        [str(trainer.plan.dataset.root / i.relpath) for i in items],
        ImageToUint8(trainer.backbone.data_config, False),
        trainer.config.batch_size,
        trainer.config.workers,
        pin_memory=False,
    )
    trainer.model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        for batch in loader:
            trainer.forward(batch.images)
    return len(items) / (time.perf_counter() - start)


def levels(data: Path, work: Path, batch_size: int = 32) -> dict[str, Any]:
    """One training epoch per freezing level, and a forward pass over the same images."""
    rows = []
    for level in LEVELS:
        config = FinetuneConfig(
            backbone="tf_efficientnet_lite0",
            weights="offline",
            unfreeze=level,
            epochs=1,
            batch_size=batch_size,
            augment=False,
        )
        trainer = Trainer(make_plan(data, config, work / f"ft-bench-{level.replace(':', '')}"))
        trainer.enter(0, None)
        trainer.train_epoch(0, 0)  # warm-up: kernels, allocator, autotuning
        start = time.perf_counter()
        trainer.train_epoch(0, 0)
        train_rate = len(trainer.plan.train) / (time.perf_counter() - start)
        forward = forward_rate(trainer)
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        rows.append(
            {
                "unfreeze": level,
                "trainable_params": trainable,
                "train_images_per_s": round(train_rate, 1),
                "forward_images_per_s": round(forward, 1),
                "train_over_forward": round(train_rate / forward, 2),
            }
        )
        print(rows[-1], flush=True)
    return {
        "dataset": f"{data.name}, {len(trainer.plan.train)} training images, 224 px",
        "backbone": (
            f"tf_efficientnet_lite0 (offline weights), batch {batch_size}, no augmentation, "
            f"{trainer.precision}, {trainer.config.workers} worker(s), {trainer.device.type}"
        ),
        "levels": rows,
    }


def run(work: Path, quick: bool = False) -> dict[str, Any]:
    data = prepare_dataset(
        "elpv", work / ("elpv-ft-40" if quick else "elpv-ft-150"), per_class=40 if quick else 150
    )
    return levels(data, work)


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"{results['dataset']}; {results['backbone']}.",
        "",
        "| unfreeze | trainable params | train img/s | forward-only img/s | train / forward |",
        "|---|---|---|---|---|",
    ]
    for r in results["levels"]:
        lines.append(
            f"| {r['unfreeze']} | {r['trainable_params']:,} | {r['train_images_per_s']} "
            f"| {r['forward_images_per_s']} | {r['train_over_forward']} |"
        )
    return "\n".join(lines)

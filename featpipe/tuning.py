"""Choose compute precision and batch size by a short measurement, not by fixed defaults.

On the 2-core CPUs this project is built on, the best batch size for a mobile net is 4 while a
ResNet prefers more, and bf16 autocast was 1.5–2.8× faster than fp32 on one idle machine yet
slower under load on another. So ``--precision auto`` and ``--batch-size auto`` time a few
forward passes on synthetic input at the real image size and keep the fastest. Precision changes
the numbers, so it goes into the cache key; the choice is memoised per machine by the caller so
reruns agree.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from featpipe.errors import FeatpipeError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
CPU_BATCHES = (4, 8, 16, 32)
CUDA_BATCHES = (64, 128, 256)
# bf16 must win by this factor on CPU to be chosen: fp32 is exact, so ties go to it.
BF16_MARGIN = 1.10


@dataclass
class Settings:
    precision: str
    batch_size: int
    channels_last: bool
    measured: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "batch_size": self.batch_size,
            "channels_last": self.channels_last,
            "probe_images_per_s": self.measured,
        }


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise FeatpipeError(f"--device {device}: use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise FeatpipeError(f"--device {device}: CUDA is not available here; use --device cpu")
    return resolved


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def check_precision(device: torch.device, precision: str) -> None:
    if precision not in PRECISIONS:
        raise FeatpipeError(f"--precision {precision}: choose one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type == "cpu":
        raise FeatpipeError("--precision fp16 is for CUDA; on CPU use bf16 or fp32")


def measure(
    module: torch.nn.Module,
    device: torch.device,
    precision: str,
    batch: int,
    size: tuple[int, int],
    channels_last: bool,
    min_seconds: float = 0.3,
) -> float:
    """Forward-only images/s on random input (the extraction ceiling for this setting)."""
    x = torch.randn(batch, 3, *size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(device, precision):
        module(x)  # warm-up: allocations, kernel selection
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        iters, start = 0, time.perf_counter()
        while iters < 2 or time.perf_counter() - start < min_seconds:
            module(x)
            iters += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return iters * batch / (time.perf_counter() - start)


def probe(
    module: torch.nn.Module,
    device: torch.device,
    size: tuple[int, int],
    is_conv: bool,
    precision: str = "auto",
    batch_size: int | None = None,
) -> Settings:
    """Pick precision and batch size for ``module`` on ``device`` by timing them."""
    check_precision(device, precision)
    channels_last = is_conv
    measured: dict[str, float] = {}
    if precision == "auto":
        if device.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            trial = batch_size or 8
            fp32 = measure(module, device, "fp32", trial, size, channels_last)
            bf16 = measure(module, device, "bf16", trial, size, channels_last)
            measured.update({f"fp32@{trial}": round(fp32, 1), f"bf16@{trial}": round(bf16, 1)})
            precision = "bf16" if bf16 > BF16_MARGIN * fp32 else "fp32"
    if batch_size is None:
        best, best_rate = 0, 0.0
        for batch in CUDA_BATCHES if device.type == "cuda" else CPU_BATCHES:
            rate = measure(module, device, precision, batch, size, channels_last)
            measured[f"{precision}@{batch}"] = round(rate, 1)
            if rate > best_rate:
                best, best_rate = batch, rate
            elif rate < 0.9 * best_rate:
                break
        batch_size = best
    return Settings(precision, batch_size, channels_last, measured)

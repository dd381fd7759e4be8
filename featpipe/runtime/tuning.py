"""Choose engine, compute precision and batch size by a short measurement, not fixed defaults.

On the 2-core CPUs this project is built on, the best batch size for a mobile net is 4 while a
ResNet prefers more; bf16 autocast was 1.5–2.8× faster than fp32 on a CPU with AVX512-BF16 and
15× slower on one without; ONNX Runtime beat PyTorch eager by 1.5× on one CPU. So ``auto`` times
a few forward passes on synthetic ``uint8`` input at the real image size and keeps the fastest.
Precision changes the numbers, so it goes into the cache key; the whole choice is memoised per
machine by the caller, so reruns and resumes use the same settings.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from featpipe.choices import ENGINES
from featpipe.errors import FeatpipeError
from featpipe.runtime.devices import check_precision
from featpipe.runtime.engines import Engine, Normalized, OnnxEngine, TorchEngine, export_onnx

CPU_BATCHES = (4, 8, 16, 32)
CUDA_BATCHES = (64, 128, 256)
# A faster-looking candidate must win by this factor: ties go to exact fp32 / plain torch.
MARGIN = 1.10


@dataclass
class Settings:
    precision: str
    batch_size: int
    channels_last: bool
    engine: str
    measured: dict[str, float] = field(default_factory=dict)
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "batch_size": self.batch_size,
            "channels_last": self.channels_last,
            "engine": self.engine,
            "probe_images_per_s": self.measured,
            "probe_note": self.note,
        }


def measure(
    engine: Engine, batch: int, size: tuple[int, int], min_seconds: float = 0.3, windows: int = 1
) -> float:
    """Forward-only images/s on random ``uint8`` input: the extraction ceiling for a setting.

    With ``windows > 1`` the best of several short windows is returned: on a shared machine the
    least disturbed window is the fairest basis for comparing two candidates.
    """
    x = torch.randint(0, 256, (batch, 3, *size), dtype=torch.uint8)
    engine(x)  # warm-up: allocation, kernel selection
    best = 0.0
    for _ in range(windows):
        calls, start = 0, time.perf_counter()
        while calls < 1 or time.perf_counter() - start < min_seconds / windows:
            engine(x)
            calls += 1
        best = max(best, calls * batch / (time.perf_counter() - start))
    return best


def build_engine(
    settings: dict[str, Any], module: Normalized, device: torch.device, onnx_path: Path
) -> Engine:
    """The engine a settings record describes (the same one the probe timed)."""
    if settings["engine"] == "onnxruntime":
        export_onnx(module, module.input_size, onnx_path)
        return OnnxEngine(onnx_path, torch.get_num_threads(), spin=False)
    return TorchEngine(module, device, settings["precision"], settings["channels_last"])


def probe(
    module: Normalized,
    device: torch.device,
    is_conv: bool,
    onnx_path: Path,
    precision: str = "auto",
    batch_size: int | None = None,
    engine: str = "auto",
) -> Settings:
    """Pick engine, precision and batch size for ``module`` on ``device`` by timing them."""
    check_precision(device, precision)
    if engine not in ENGINES:
        raise FeatpipeError(f"--engine {engine}: choose one of {', '.join(ENGINES)}")
    if engine == "onnxruntime" and (device.type != "cpu" or precision not in ("auto", "fp32")):
        raise FeatpipeError(
            "--engine onnxruntime runs fp32 on CPU: use --device cpu --precision fp32"
        )
    engines: dict[tuple[str, str], Engine] = {}
    rates: dict[tuple[str, str, int], float] = {}

    def timed(name: str, prec: str, batch: int) -> float:
        if (name, prec) not in engines:
            settings = {"engine": name, "precision": prec, "channels_last": is_conv}
            engines[(name, prec)] = build_engine(settings, module, device, onnx_path)
        if (name, prec, batch) not in rates:
            rates[(name, prec, batch)] = measure(
                engines[(name, prec)], batch, module.input_size, min_seconds=0.6, windows=3
            )
        return rates[(name, prec, batch)]

    note = ""
    batches = CUDA_BATCHES if device.type == "cuda" else CPU_BATCHES
    trial = batch_size or batches[1]
    if device.type == "cuda":
        if precision == "auto":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        engine = "torch"
    else:
        if precision == "auto":
            faster = timed("torch", "bf16", trial) > MARGIN * timed("torch", "fp32", trial)
            precision = "bf16" if faster else "fp32"
        if engine == "auto":
            engine = "torch"
            if precision == "fp32":
                try:
                    onnx = timed("onnxruntime", "fp32", trial)
                except Exception as exc:  # not every architecture exports: say why, use torch
                    note = f"onnx export failed, using torch: {str(exc).splitlines()[0][:200]}"
                else:
                    if onnx > MARGIN * timed("torch", "fp32", trial):
                        engine = "onnxruntime"
    if batch_size is None:
        batch_size = max(batches, key=lambda b: timed(engine, precision, b))
    measured = {f"{e}-{p}@{b}": round(r, 1) for (e, p, b), r in rates.items()}
    return Settings(precision, batch_size, is_conv, engine, measured, note)

"""Devices and compute precision: parsing ``--device`` / ``--precision`` and autocast."""

from __future__ import annotations

import contextlib

import torch

from featpipe.choices import PRECISIONS
from featpipe.errors import FeatpipeError

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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


def check_precision(device: torch.device, precision: str) -> None:
    if precision not in PRECISIONS:
        raise FeatpipeError(f"--precision {precision}: choose one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type == "cpu":
        raise FeatpipeError("--precision fp16 is for CUDA; on CPU use bf16 or fp32")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])

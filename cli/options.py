"""Options shared by every command that may run a backbone (extract, fit, compare, …)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from featpipe.cache.catalog import DEFAULT_CACHE_DIR
from featpipe.errors import FeatpipeError
from featpipe.runs.record import DEFAULT_RUNS_DIR

# Python parameters whose flag is not ``--`` + the name with dashes.
_FLAGS = {
    "from_run": "--from",
    "data": "DATA",
    "entry": "ENTRY",
    "backbone": "--backbone",
    "fmt": "--format",
}


def flag(param: str) -> str:
    """The command-line spelling of a library parameter, for errors raised from Python."""
    return _FLAGS.get(param, "--" + param.replace("_", "-"))


def auto_int(value: str, option: str) -> int | None:
    """Parse ``auto`` or a whole number, naming the option on failure."""
    if value == "auto":
        return None
    try:
        return int(value)
    except ValueError:
        raise FeatpipeError(f"{option} {value}: use a whole number or auto") from None


Backbone = typer.Option(
    "tf_efficientnet_lite0",
    "--backbone",
    "-b",
    help="timm model name, or tv/<name> for torchvision (see: featpipe models).",
)
Weights = typer.Option(
    "auto",
    "--weights",
    "-w",
    help="auto | hub | hub:TAG | offline | none | PATH to a checkpoint.",
)
Pool = typer.Option("avg", help="avg | max | avgmax (concatenated) | cls (ViT).")
Layer = typer.Option(None, help="Intermediate feature layer: index or module name (timm).")
ImageSize = typer.Option(None, "--image-size", help="Override the model's input size (px).")
Precision = typer.Option("auto", help="auto (probe) | fp32 | bf16 | fp16 (CUDA).")
Engine = typer.Option("auto", help="auto (probe) | torch | onnxruntime (CPU, fp32).")
Dtype = typer.Option("float32", help="Stored dtype: float32 | float16.")
Device = typer.Option("auto", help="auto | cpu | cuda | cuda:N.")
BatchSize = typer.Option("auto", "--batch-size", help="Images per batch, or auto (probe).")
Workers = typer.Option("auto", help="DataLoader worker processes, or auto.")
AllowOutside = typer.Option(
    False,
    "--allow-outside",
    help="Let a CSV manifest list files outside its own folder (refused by default).",
)
CacheDir = typer.Option(DEFAULT_CACHE_DIR, "--cache-dir", help="Cache root directory.")
OnError = typer.Option("skip", "--on-error", help="skip (record and go on) | fail.")
Name = typer.Option(None, help="Dataset name in the cache (default: folder name).")
JpegDraft = typer.Option(
    False,
    "--jpeg-draft",
    help="Decode JPEGs at reduced scale (faster; the pixels, so the embeddings, differ from "
    "the model's own preprocessing). Recorded in the cache key.",
)
RunsDir = typer.Option(DEFAULT_RUNS_DIR, "--runs-dir", help="Where runs are written and read.")


@dataclass
class ExtractOptions:
    """The extract options as one value, so that commands can pass them on unchanged."""

    weights: str
    pool: str
    layer: str | None
    image_size: int | None
    precision: str
    engine: str
    dtype: str
    device: str
    batch_size: str
    workers: str
    cache_dir: Path
    on_error: str
    draft: bool = False

    def kwargs(self) -> dict[str, Any]:
        return {
            "weights": self.weights,
            "pool": self.pool,
            "layer": self.layer,
            "image_size": self.image_size,
            "precision": self.precision,
            "engine": self.engine,
            "dtype": self.dtype,
            "device": self.device,
            "batch_size": auto_int(self.batch_size, "--batch-size"),
            "workers": auto_int(self.workers, "--workers"),
            "cache_dir": self.cache_dir,
            "on_error": self.on_error,
            "draft": self.draft,
        }

"""``featpipe export``: a run as one TorchScript or ONNX module, checked on real images."""

from __future__ import annotations

from pathlib import Path

import typer

from .render import console


def export(
    run: Path = typer.Argument(..., help="A run directory (fit or finetune)."),
    format: str = typer.Option("torchscript", "--format", help="torchscript | onnx"),
    out: Path | None = typer.Option(None, "--out", "-o", help="File to write."),
    check: list[Path] = typer.Option([], "--check", help="Real images for the check."),
) -> None:
    """Write backbone + pooling + head as one module, checked against Python on images."""
    from featpipe.use.export import export as run_export  # torch: only when export runs

    target = out or run / ("model.pt" if format == "torchscript" else "model.onnx")
    sidecar = run_export(run, format, target, check or None)
    console().print(
        f"wrote {target} ({format}); agrees with the Python pipeline on "
        f"{sidecar['check']['images']} real images (max |Δ| "
        f"{sidecar['check']['max_abs_diff']:.1e}); recipe in {target}.json"
    )

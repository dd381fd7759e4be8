"""``featpipe export``: a run as one TorchScript, ONNX or OpenVINO module, checked on real
images."""

from __future__ import annotations

from pathlib import Path

import typer

from .render import console


def export(
    run: Path = typer.Argument(..., help="A run directory (fit or finetune)."),
    format: str = typer.Option(
        "torchscript", "--format", help="torchscript | onnx | openvino (IR)"
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="File to write."),
    check: list[Path] = typer.Option([], "--check", help="Real images for the check."),
) -> None:
    """Write backbone + pooling + head as one module, checked against Python on images."""
    # torch: only when export runs
    from featpipe.use.export import FILES
    from featpipe.use.export import export as run_export

    target = out or run / FILES.get(format, "model")
    sidecar = run_export(run, format, target, check or None)
    config = ", ".join(f"{k}={v}" for k, v in sidecar.get("compile_config", {}).items())
    console().print(
        f"wrote {target} ({format}); agrees with the Python pipeline on "
        f"{sidecar['check']['images']} real images (max |Δ| "
        f"{sidecar['check']['max_abs_diff']:.1e})"
        + (f" compiled with {config}" if config else "")
        + f"; recipe in {target}.json"
    )

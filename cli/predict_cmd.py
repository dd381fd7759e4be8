"""``featpipe predict``: label new images with a run's backbone(s) and head."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from featpipe.runs.record import load_run

from . import options as opt
from .render import console


def predict(
    images: list[Path] = typer.Argument(..., help="Image files or folders."),
    run: Path = typer.Option(..., "--run", help="A run directory (fit or finetune)."),
    out: Path = typer.Option(Path("predictions.csv"), "--out", "-o", help="CSV to write."),
    device: str = opt.Device,
    engine: str = typer.Option(
        "auto",
        help="auto (the engine the run's features were computed with, where their key names "
        "one: OpenVINO's bf16; else torch) | torch | onnxruntime | openvino (CPU). A converted "
        "network is kept in the run's folder.",
    ),
    limit: int = typer.Option(10, help="Rows to print."),
    tta: str = typer.Option(
        "run",
        help="Test-time augmentation: run (what the run was scored with) | none | hflip | "
        "dihedral (the 8 rotations and flips); probabilities averaged.",
    ),
) -> None:
    """Predict new images with a run's backbone(s) and head; write CSV."""
    loaded = load_run(run)  # a wrong --run fails before torch loads
    from featpipe.use.predict import predict as run_predict  # torch: only when predict runs

    rows = run_predict(images, loaded, out, device, engine=engine, tta=tta)
    table = Table(title=f"predictions ({len(rows)} images) → {out}")
    for column in ("path", "prediction", "confidence", "error"):
        table.add_column(column)
    for row in rows[:limit]:
        confidence = row.get("confidence")
        table.add_row(
            row["path"],
            str(row.get("prediction", "")),
            f"{confidence:.3f}" if confidence is not None else "",
            row.get("error", ""),
        )
    console().print(table)

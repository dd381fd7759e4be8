"""``featpipe predict`` and ``featpipe export``: use a fitted run."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from . import options as opt
from .fit_cmd import RunsDir
from .render import console, plain


def register(app: typer.Typer) -> None:
    @app.command()
    def predict(
        images: list[Path] = typer.Argument(..., help="Image files or folders."),
        run: Path = typer.Option(..., "--run", help="A run directory written by fit."),
        out: Path = typer.Option(Path("predictions.csv"), "--out", "-o", help="CSV to write."),
        device: str = opt.Device,
        limit: int = typer.Option(10, help="Rows to print."),
    ) -> None:
        """Predict new images with a run's backbone(s) and head; write CSV."""
        from featpipe.use.predict import predict as run_predict

        rows = run_predict(images, run, out, device)
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

    @app.command()
    def export(
        run: Path = typer.Argument(..., help="A run directory written by fit."),
        format: str = typer.Option("torchscript", "--format", help="torchscript | onnx"),
        out: Path | None = typer.Option(None, "--out", "-o", help="File to write."),
        check: list[Path] = typer.Option([], "--check", help="Real images for the check."),
    ) -> None:
        """Write backbone + pooling + head as one module, checked against Python on images."""
        from featpipe.use.export import export as run_export

        target = out or run / ("model.pt" if format == "torchscript" else "model.onnx")
        sidecar = run_export(run, format, target, check or None)
        console().print(
            f"wrote {target} ({format}); agrees with the Python pipeline on "
            f"{sidecar['check']['images']} real images (max |Δ| "
            f"{sidecar['check']['max_abs_diff']:.1e}); recipe in {target}.json"
        )

    @app.command()
    def report(
        runs_dir: Path = RunsDir,
        out: Path = typer.Option(Path("report"), "--out", "-o", help="Output directory."),
    ) -> None:
        """Write an HTML report with PNG plots over every run."""
        from featpipe.reports.report import report as write_report

        page = write_report(runs_dir, out)
        plain(f"wrote {page}")

"""``featpipe results``: the tidy table of every run: filter, sort, export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from featpipe.errors import FeatpipeError
from featpipe.runs.record import results_table, write_csv

from . import options as opt
from .render import console


def results(
    runs_dir: Path = opt.RunsDir,
    where: list[str] = typer.Option([], "--where", help="Filter: column=value."),
    csv: Path | None = typer.Option(None, "--csv", help="Also write the rows to CSV."),
    sort: str = typer.Option("val_accuracy", help="Column to sort by (descending)."),
    limit: int = typer.Option(30, help="Rows to print."),
) -> None:
    """The tidy results table of every run: filter, sort, export."""
    filters = dict(w.split("=", 1) for w in where if "=" in w)
    rows = results_table(runs_dir, filters)
    if not rows:
        raise FeatpipeError(f"no runs found in {runs_dir}: fit something first")
    if csv:
        write_csv(rows, csv)
    rows.sort(key=lambda r: -(r.get(sort) if isinstance(r.get(sort), float | int) else -1e9))
    columns = [
        "dataset",
        "backbone",
        "head",
        "lr",
        "wd",
        "C",
        "k",
        "seed",
        "val_accuracy",
        "val_macro_f1",
        "test_accuracy",
        "val_r2",
        "test_r2",
        "fit_seconds",
        "chosen",
    ]
    columns = [c for c in columns if any(r.get(c) not in (None, "") for r in rows)]
    table = Table(title=f"results: {len(rows)} rows from {runs_dir}")
    for column in columns:
        table.add_column(column)
    for row in rows[:limit]:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    console().print(table)
    if csv:
        console().print(f"wrote {len(rows)} rows to {csv}")


def _cell(value: Any) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)

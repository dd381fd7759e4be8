"""``featpipe datasets``: write bundled real datasets as image folders; describe a folder."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from featpipe.data.bundled import BUNDLED, prepare_dataset
from featpipe.data.datasets import scan

from .render import console

datasets_app = typer.Typer(help="Bundled real datasets and dataset checks.", no_args_is_help=True)


@datasets_app.command("ls")
def ls() -> None:
    """The bundled real datasets and how to install their sources."""
    table = Table(title="bundled datasets")
    for column in ("name", "what", "licence", "source"):
        table.add_column(column, overflow="fold")
    for b in BUNDLED.values():
        table.add_row(b.name, b.description, b.licence, b.install_hint)
    console().print(table)


@datasets_app.command()
def prepare(
    name: str = typer.Argument(..., help=f"One of: {', '.join(BUNDLED)}."),
    out_dir: Path = typer.Argument(..., help="Directory to create (becomes the dataset name)."),
    per_class: int | None = typer.Option(None, help="Keep the first K images per class/split."),
) -> None:
    """Write a bundled real dataset out as an ImageFolder tree of PNG files."""
    root = prepare_dataset(name, out_dir, per_class)
    describe(root)


@datasets_app.command()
def describe(data: Path = typer.Argument(..., help="Folder or CSV manifest.")) -> None:
    """How featpipe reads a dataset: layout, task, classes, split sizes, rejected files."""
    ds = scan(data)
    counts = ds.split_counts()
    console().print(
        f"{ds.name}: {len(ds)} images, {ds.layout}, task {ds.task}, "
        f"{len(ds.class_names)} classes, splits {counts} ({ds.split_source})"
    )
    if ds.rejected:
        console().print(
            f"{len(ds.rejected)} files cannot be used, e.g. "
            f"{ds.rejected[0].relpath}: {ds.rejected[0].reason}"
        )

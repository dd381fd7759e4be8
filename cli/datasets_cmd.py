"""``featpipe datasets``: write bundled real datasets as image folders; describe a folder."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import TextIO

import typer
from rich.markup import escape
from rich.table import Table

from featpipe.data.bundled import BUNDLED, prepare_dataset
from featpipe.data.datasets import UNLABELLED, Dataset, DataWarning, scan

from . import options as opt
from .render import console, plain

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
    print_dataset(scan(prepare_dataset(name, out_dir, per_class)))


@datasets_app.command()
def describe(
    data: Path = typer.Argument(..., help="Folder or CSV manifest."),
    allow_outside: bool = opt.AllowOutside,
) -> None:
    """How featpipe reads a dataset: layout, task, classes, split sizes, unlabelled rows,
    skipped files and the corrections it made (nothing is decoded)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)  # printed below as the dataset's notes
        dataset = scan(data, allow_outside=allow_outside)
    print_dataset(dataset)


SHOWN = 10


def print_dataset(ds: Dataset) -> None:
    counts = ds.split_counts()
    classes = f" ({', '.join(ds.class_names[:SHOWN])}{', …' * (len(ds.class_names) > SHOWN)})"
    plain(
        f"{ds.name}: {len(ds)} images, {ds.layout}, task {ds.task}, "
        f"{len(ds.class_names)} classes" + (classes if ds.class_names else "")
    )
    fitted = ", ".join(f"{s} {n}" for s, n in counts.items() if s != UNLABELLED)
    if fitted:
        plain(f"splits: {fitted} ({ds.split_source})")
    if counts.get(UNLABELLED):
        what = "nothing to fit" if ds.task == "none" else "excluded from fitting"
        n = counts[UNLABELLED]
        plain(f"unlabelled: {n} images without a label (split '{UNLABELLED}': {what})")
    if ds.rejected:
        plain(f"skipped: {len(ds.rejected)} files (kept in the cache entry's skipped/ list)")
        for r in ds.rejected[:SHOWN]:
            plain(f"  {r.relpath}: {r.reason}")
        if len(ds.rejected) > SHOWN:
            plain(f"  … {len(ds.rejected) - SHOWN} more")
    for note in ds.notes:
        plain(f"note: {note}")


def show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """``warnings.showwarning`` for the CLI: a :class:`DataWarning` (an input featpipe corrected,
    such as a duplicate manifest row) is one line on stderr, like an error; others as Python
    shows them."""
    if issubclass(category, DataWarning):
        console(stderr=True).print(f"[yellow]warning:[/] {escape(str(message))}")
    else:
        (file or sys.stderr).write(
            warnings.formatwarning(message, category, filename, lineno, line)
        )

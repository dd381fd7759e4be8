"""``featpipe cache``: list, inspect, verify and remove cache entries."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from featpipe.cache.catalog import entry_info, find_entries, list_entries, remove_entry
from featpipe.cache.entry import verify as verify_entry
from featpipe.errors import FeatpipeError

from . import options as opt
from .render import console, human_bytes, human_time, plain

cache_app = typer.Typer(help="Inspect and manage the feature cache.", no_args_is_help=True)


@cache_app.command("ls")
def ls(cache_dir: Path = opt.CacheDir) -> None:
    """Table of entries: dataset, backbone, N, D, dtype, size on disk, created."""
    rows = list_entries(cache_dir)
    table = Table(title=f"feature cache: {cache_dir} ({len(rows)} entries)")
    for column in ("dataset", "backbone", "key", "N", "D", "dtype", "precision", "size", "created"):
        justify = "right" if column in ("N", "D", "size") else "left"
        table.add_column(column, justify=justify)
    for r in rows:
        if r.error:
            table.add_row(
                r.dataset,
                r.backbone,
                "",
                "",
                "",
                "",
                "",
                human_bytes(r.size_bytes),
                f"[red]{r.error}[/]",
            )
            continue
        table.add_row(
            r.dataset,
            r.backbone,
            r.key[:8],
            str(r.n),
            str(r.dim),
            r.dtype,
            r.precision,
            human_bytes(r.size_bytes),
            human_time(r.created),
        )
    console().print(table)


@cache_app.command()
def info(
    entry: str = typer.Argument(..., help="Entry path, dataset/stem, stem or key prefix."),
    cache_dir: Path = opt.CacheDir,
) -> None:
    """Everything an entry records: key fields, provenance, splits, skipped files."""
    for path in find_entries(cache_dir, entry):
        meta = entry_info(path)
        table = Table(title=str(path), show_header=False)
        table.add_column("field", style="bold")
        table.add_column("value", overflow="fold")
        for field in (
            "dataset",
            "dataset_root",
            "backbone",
            "key",
            "n",
            "dim",
            "dtype",
            "precision",
            "pool",
            "task",
            "split_source",
            "n_skipped",
            "shards",
        ):
            table.add_row(field, str(meta.get(field)))
        table.add_row("size on disk", human_bytes(meta["size_bytes"]))
        table.add_row("created", human_time(meta["created"]))
        table.add_row("updated", human_time(meta["updated"]))
        table.add_row("key fields", json.dumps(meta["key_fields"], indent=1))
        table.add_row("provenance", json.dumps(meta["provenance"], indent=1))
        if meta["skipped_examples"]:
            table.add_row("skipped (first 5)", "\n".join(meta["skipped_examples"]))
        console().print(table)


@cache_app.command()
def verify(
    entry: str | None = typer.Argument(None, help="Entry to check (default: all)."),
    cache_dir: Path = opt.CacheDir,
) -> None:
    """Read every byte of the entries and their shards; check checksums, NaN/inf and shape."""
    paths = find_entries(cache_dir, entry) if entry else [e.path for e in list_entries(cache_dir)]
    bad = 0
    for path in paths:
        problems = verify_entry(path)
        if problems:
            bad += 1
            console().print(f"[red]FAIL[/] {escape(str(path))}")
            for problem in problems:
                plain(f"  - {problem}")
        else:
            console().print(f"[green]ok[/]   {escape(str(path))}")
    if bad:
        raise FeatpipeError(f"{bad} of {len(paths)} entries failed verification (listed above)")


@cache_app.command()
def rm(
    entry: str = typer.Argument(..., help="Entry path, dataset/stem, stem, key prefix or dataset."),
    cache_dir: Path = opt.CacheDir,
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Remove entries and their shards."""
    paths = find_entries(cache_dir, entry)
    if not yes:
        names = "\n  ".join(str(p) for p in paths)
        typer.confirm(f"remove {len(paths)} entries?\n  {names}\n", abort=True)
    freed = sum(remove_entry(p) for p in paths)
    console().print(f"removed {len(paths)} entries, freed {human_bytes(freed)}")

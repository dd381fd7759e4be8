"""``featpipe models``: the backbones featpipe can run, offline weights first."""

from __future__ import annotations

import typer
from rich.table import Table

from .render import console


def models(
    filter: str = typer.Option("*", "--filter", "-f", help="Glob on the name, e.g. '*lite*'."),
    offline: bool = typer.Option(False, "--offline", help="Only models with offline weights."),
    limit: int = typer.Option(40, help="Show at most this many rows."),
) -> None:
    """List backbones: any timm name, tv/<name> for torchvision; offline weights first."""
    from featpipe.backbones.build import list_backbones  # torch, timm: only when listing

    rows = list_backbones(filter, offline_only=offline)
    table = Table(title=f"backbones matching '{filter}' ({len(rows)})")
    for column in ("name", "library", "offline weights"):
        table.add_column(column)
    for row in rows[:limit]:
        table.add_row(row["name"], row["library"], row["offline"] or "-")
    console().print(table)
    if len(rows) > limit:
        console().print(f"… {len(rows) - limit} more: narrow with --filter or raise --limit")

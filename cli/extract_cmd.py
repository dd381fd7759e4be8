"""``featpipe extract``: run a backbone once over a dataset and cache its embeddings."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.table import Table

from featpipe.extraction.stage import ExtractResult, Progress

from . import options as opt
from .render import console, plain, progress_bar


def run_extract(
    data: Path, backbone: str, options: opt.ExtractOptions, name: str | None = None
) -> ExtractResult:
    """Extract with a rich progress bar; shared by every command that needs features."""
    from featpipe.extraction.stage import extract as extract_features

    rank = int(os.environ.get("RANK", "0"))
    label = f"extract {backbone}" + (f" [rank {rank}]" if "RANK" in os.environ else "")
    with progress_bar(label) as bar:

        def update(p: Progress) -> None:
            bar.update(p.done, p.total, p.images_per_second)

        # Under torchrun each rank shows its own part; rank 0 reports the total.
        return extract_features(data, backbone, name=name, progress=update, **options.kwargs())


def extract(
    data: Path = typer.Argument(..., help="ImageFolder tree, CSV manifest or image folder."),
    backbone: str = opt.Backbone,
    weights: str = opt.Weights,
    pool: str = opt.Pool,
    layer: str | None = opt.Layer,
    image_size: int | None = opt.ImageSize,
    precision: str = opt.Precision,
    engine: str = opt.Engine,
    dtype: str = opt.Dtype,
    device: str = opt.Device,
    batch_size: str = opt.BatchSize,
    workers: str = opt.Workers,
    cache_dir: Path = opt.CacheDir,
    on_error: str = opt.OnError,
    name: str | None = opt.Name,
    jpeg_draft: bool = opt.JpegDraft,
) -> None:
    """Run BACKBONE once over DATA and cache the pooled embeddings (only new files are run)."""
    options = opt.ExtractOptions(
        weights,
        pool,
        layer,
        image_size,
        precision,
        engine,
        dtype,
        device,
        batch_size,
        workers,
        cache_dir,
        on_error,
        jpeg_draft,
    )
    result = run_extract(data, backbone, options, name)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    if len(result.ranks) > 1:
        table = Table(title=f"{len(result.ranks)} ranks")
        for column in ("rank", "host", "rows", "seconds", "images/s"):
            table.add_column(column, justify="right")
        for r in result.ranks:
            table.add_row(
                str(r["rank"]),
                r["host"],
                str(r["rows"]),
                str(r.get("seconds", "")),
                str(r["images_per_s"]),
            )
        console().print(table)
    plain(result.summary())

"""``featpipe extract``: run a backbone once over a dataset and cache its embeddings."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.table import Table

from featpipe.data.augment import Augment
from featpipe.data.datasets import Dataset, scan
from featpipe.errors import ArgumentError
from featpipe.extraction.options import ExtractOptions
from featpipe.extraction.stage import ExtractResult
from featpipe.extraction.stage import extract as extract_features
from featpipe.progress import Progress

from . import options as opt
from . import views_options as vopt
from .render import console, plain, progress_bar


def run_extract(
    data: Path,
    backbone: str,
    options: ExtractOptions,
    name: str | None = None,
    views: int = 0,
    augment: Augment | None = None,
) -> ExtractResult:
    """Extract with the activity line; shared by every command that needs features.

    Until the first batch, a spinner names the step under way (scanning, building the model,
    probing speed, reading the cache): those can take minutes, and silence reads as a hang."""
    rank = int(os.environ.get("RANK", "0"))
    label = f"extract {backbone}" + (f" [rank {rank}]" if "RANK" in os.environ else "")
    with progress_bar(label) as bar:

        def update(p: Progress) -> None:
            bar.update(p.done, p.total, p.images_per_second)

        # Under torchrun each rank shows its own part; rank 0 reports the total.
        return extract_features(
            data,
            backbone,
            options,
            name=name,
            progress=update,
            status=bar.status,
            views=views,
            augment=augment,
        )


def run_layers(
    data: Path | Dataset, backbones: list[str], options: ExtractOptions
) -> list[ExtractResult]:
    """Several backbone specs with the activity line; layers of one model from one pass."""
    from featpipe.extraction.layers import extract_each  # as extract's: no torch on a hit

    specs = [options.spec(b) for b in backbones]
    with progress_bar(f"extract {', '.join(backbones)}") as bar:
        return extract_each(
            data,
            specs,
            options.without_spec(),
            progress=lambda model: (
                lambda p: bar.update(p.done, p.total, p.images_per_second, f"extract {model}")
            ),
            status=bar.status,
        )


@opt.with_extract_options
def extract(
    data: Path = typer.Argument(..., help="ImageFolder tree, CSV manifest or image folder."),
    backbones: list[str] = typer.Option(
        ["tf_efficientnet_lite0"],
        "--backbone",
        "-b",
        help="MODEL[:LAYER][@WEIGHTS]: a timm name or tv/<name> (see: featpipe models), an "
        "intermediate layer after ':' (vit_small_patch16_224:-2). Repeat for several; layers of "
        "one model (-b m:-4 -b m:-1) are read from one forward pass, each its own cache entry.",
    ),
    name: str | None = opt.Name,
    views: int = vopt.Views,
    crop_scale: float = vopt.CropScale,
    hflip: float = vopt.Hflip,
    color_jitter: float = vopt.ColorJitter,
    view_seed: int = vopt.ViewSeed,
    *,
    extraction: ExtractOptions,
) -> None:
    """Run BACKBONE once over DATA and cache the pooled embeddings (only new files are run)."""
    if len(backbones) > 1:
        if views:
            raise ArgumentError("views", "take one --backbone; extract the others on their own")
        dataset = scan(data, name=name, allow_outside=extraction.allow_outside)  # one scan
        for result in run_layers(dataset, backbones, extraction):
            plain(result.summary())
        return
    recipe = vopt.augment(crop_scale, hflip, color_jitter, view_seed)
    result = run_extract(data, backbones[0], extraction, name, views, recipe)
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
    if result.views is not None:
        plain(result.views.summary())

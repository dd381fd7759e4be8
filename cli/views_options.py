"""Options of the view cache (``--views K`` and its augmentation recipe), for extract and fit."""

from __future__ import annotations

import typer

from featpipe.data.augment import Augment

PANEL = "Augmented views"

Views = typer.Option(
    0,
    "--views",
    help="Also cache K augmented views of every training image (the model's training "
    "transform); val and test keep the eval view. 0: none.",
    rich_help_panel=PANEL,
)
CropScale = typer.Option(
    0.08,
    "--crop-scale",
    help="Views: smallest share of the image area a random resized crop keeps (timm: 0.08).",
    rich_help_panel=PANEL,
)
Hflip = typer.Option(
    0.5, "--hflip", help="Views: horizontal flip probability.", rich_help_panel=PANEL
)
ColorJitter = typer.Option(
    0.0,
    "--color-jitter",
    help="Views: brightness/contrast/saturation jitter strength; 0 = off.",
    rich_help_panel=PANEL,
)
ViewSeed = typer.Option(
    0,
    "--view-seed",
    help="Views: seed; with the image path and view index it fixes every view's pixels.",
    rich_help_panel=PANEL,
)
ViewMode = typer.Option(
    "random",
    "--view-mode",
    help="fit --views: random (one view per image per epoch) | all (all K every epoch) | "
    "epoch (view e mod K in epoch e: fresh views each epoch, as live augmentation).",
    rich_help_panel=PANEL,
)


def augment(crop_scale: float, hflip: float, color_jitter: float, seed: int) -> Augment:
    """The recipe the flags describe (a bad value is a one-line error naming its flag)."""
    return Augment(crop_scale=crop_scale, hflip=hflip, color_jitter=color_jitter, seed=seed)

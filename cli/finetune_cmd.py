"""``featpipe finetune``: unfreeze backbone blocks and train end to end; a run like fit's."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from featpipe.errors import FeatpipeError

from . import options as opt
from .render import console, human_count, plain, progress_bar


def _floats(text: str | None, option: str) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise FeatpipeError(f"{option} {text}: write numbers separated by commas") from None


def finetune(
    data: Path = typer.Argument(..., help="ImageFolder tree or CSV manifest."),
    backbone: str | None = typer.Option(
        None,
        "--backbone",
        "-b",
        help="timm name or tv/<name>; default: the --from run's, else tf_efficientnet_lite0.",
    ),
    weights: str = opt.Weights,
    image_size: int | None = opt.ImageSize,
    from_run: Path | None = typer.Option(None, "--from", help="LP-FT: start from this run's head."),
    unfreeze: str = typer.Option(
        "head", help="head | all | last:N | NAME | type:norm | param:GLOB, comma-joined."
    ),
    gradual: str | None = typer.Option(
        None, help="Schedule EPOCH:SPEC,… e.g. 0:head,2:last:2,4:all"
    ),
    bn: str = typer.Option("auto", help="auto | train | freeze-affine | freeze-stats"),
    optimizer: str = typer.Option("adamw", help="sgd (momentum 0.9) | adam | adamw"),
    lr: float = typer.Option(1e-3, help="Base learning rate."),
    wd: float = typer.Option(1e-4, help="Weight decay."),
    lr_mult: str | None = typer.Option(
        None, "--lr-mult", help="Per-chunk multipliers, input side first, e.g. 0.1,0.33,1"
    ),
    layer_decay: float | None = typer.Option(
        None, "--layer-decay", help="timm layer-decay factor, e.g. 0.75"
    ),
    schedule: str = typer.Option("cosine", help="cosine | step | none"),
    warmup: int = typer.Option(0, "--warmup", help="Warm-up epochs."),
    epochs: int = typer.Option(5, help="Passes over the training split."),
    batch_size: int = typer.Option(32, "--batch-size", help="Images per training step."),
    patience: int = typer.Option(0, help="Early stopping patience (epochs); 0 = off."),
    augment: bool = typer.Option(True, help="RandomResizedCrop + flip (timm)."),
    crop_scale: float = typer.Option(
        0.08, "--crop-scale", help="Smallest share of the image a random crop keeps."
    ),
    color_jitter: float = typer.Option(
        0.0, "--color-jitter", help="Brightness/contrast/saturation jitter strength; 0 = off."
    ),
    head: str = typer.Option("linear", help="Fresh head: linear | mlp"),
    head_init: str = typer.Option("kaiming", "--head-init", help="kaiming | xavier"),
    head_scale: float = typer.Option(1.0, "--head-scale", help="Scale the fresh head's init."),
    reinit: str | None = typer.Option(None, help="Re-initialise blocks, e.g. last:2 (hybrid)."),
    seed: int = typer.Option(0, help="Seed for the head init, data order and augmentation."),
    device: str = opt.Device,
    precision: str = typer.Option(
        "auto",
        help="auto (AMP on CUDA; on CPU the --from run's, else fp32) | fp32 | bf16 | fp16",
    ),
    workers: str = opt.Workers,
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Run directory (resumes if it has a checkpoint)."
    ),
    runs_dir: Path = opt.RunsDir,
    allow_outside: bool = opt.AllowOutside,
) -> None:
    """Fine-tune: unfreeze blocks, gradually or at once; resumable; a run like fit's."""
    from featpipe.data.datasets import scan
    from featpipe.finetuning.config import FinetuneConfig
    from featpipe.finetuning.stage import finetune as run_finetune

    config = FinetuneConfig(
        backbone=backbone,
        weights=weights,
        image_size=image_size,
        unfreeze=unfreeze,
        gradual=gradual,
        bn=bn,
        optimizer=optimizer,
        lr=lr,
        wd=wd,
        lr_mult=_floats(lr_mult, "--lr-mult"),
        layer_decay=layer_decay,
        schedule=schedule,
        warmup=warmup,
        epochs=epochs,
        batch_size=batch_size,
        patience=patience,
        augment=augment,
        crop_scale=crop_scale,
        color_jitter=color_jitter,
        head=head,
        head_init=head_init,
        head_scale=head_scale,
        from_run=str(from_run) if from_run else None,
        reinit=reinit,
        seed=seed,
        device=device,
        precision=precision,
        workers=opt.auto_int(workers, "--workers"),
    )
    dataset = scan(data, allow_outside=allow_outside)
    with progress_bar("fine-tune") as bar:

        def update(epoch: int, done: int, total: int, seconds: float) -> None:
            rate = done / seconds if seconds > 0 else 0.0
            bar.update(done, total, rate, f"fine-tune epoch {epoch + 1}/{epochs}")

        run, result = run_finetune(dataset, config, out, runs_dir, progress=update)
    history = result.history
    table = Table(title=f"fine-tune {result.backbone} ({result.freezing})")
    for column in (
        "epoch",
        "stage",
        "trainable",
        "train loss",
        "val loss",
        f"val {result.metric}",
        "img/s",
    ):
        table.add_column(column, justify="right")
    for i, epoch in enumerate(history["epoch"]):
        table.add_row(
            str(epoch + 1),
            history["stage"][i],
            human_count(history["trainable"][i]),
            f"{history['train_loss'][i]:.4f}",
            f"{history['val_loss'][i]:.4f}",
            f"{history['val_metric'][i]:.4f}",
            f"{history['train_images_per_s'][i]:.1f}",
        )
    console().print(table)
    metric = result.metric
    kept = (
        f"best epoch {result.best_epoch + 1}"
        if result.best_epoch >= 0
        else "no epoch beat the starting head; kept it"
    )
    if result.start_val is not None:  # a start score of 0.0 is a score too
        plain(f"start (the --from head): val {metric} {result.start_val:.4f}")
    plain(f"{kept}: val {metric} {result.val_score:.4f}, test {result.test_score:.4f}")
    if result.cam is not None:
        plain(f"CAM overlays ({', '.join(result.cam.classes)}): {run.path / result.cam.file}")
    elif result.cam_note:
        plain(result.cam_note)
    plain(f"run: {run.path}")

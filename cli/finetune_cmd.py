"""``featpipe finetune``: unfreeze backbone blocks and train end to end; a run like fit's."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from featpipe.data.datasets import scan
from featpipe.finetuning.config import FinetuneConfig
from featpipe.progress import Phase

from . import options as opt
from .render import console, human_count, plain, progress_bar


@opt.with_options(FinetuneConfig, "config")
def finetune(
    data: Path = typer.Argument(..., help="ImageFolder tree or CSV manifest."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Run directory (resumes if it has a checkpoint)."
    ),
    runs_dir: Path = opt.RunsDir,
    allow_outside: bool = opt.AllowOutside,
    *,
    config: FinetuneConfig,
) -> None:
    """Fine-tune: unfreeze blocks, gradually or at once; resumable; a run like fit's."""
    with progress_bar("fine-tune") as bar:
        bar.status(Phase("scanning", f"scanning {data}"))
        dataset = scan(data, allow_outside=allow_outside)  # a wrong path: no torch
        from featpipe.finetuning.stage import finetune as run_finetune  # torch: after the scan

        step = [f"fine-tune epoch {{}}/{config.epochs}"]  # the stage says when the refit begins

        def update(epoch: int, done: int, total: int, seconds: float) -> None:
            rate = done / seconds if seconds > 0 else 0.0
            bar.update(done, total, rate, step[0].format(epoch + 1))

        def status(phase: Phase) -> None:
            if phase.name == "refitting":
                step[0] = f"{phase.message}, epoch {{}}"
            bar.status(phase)

        run, result = run_finetune(dataset, config, out, runs_dir, progress=update, status=status)
    history = result.history
    ema = "val_metric_ema" in history
    table = Table(title=f"fine-tune {result.backbone} ({result.freezing})")
    columns = ["epoch", "stage", "trainable", "train loss", "val loss", f"val {result.metric}"]
    columns += ["val loss (EMA)", f"val {result.metric} (EMA)"] if ema else []
    for column in [*columns, "img/s"]:
        table.add_column(column, justify="right")
    for i, epoch in enumerate(history["epoch"]):
        table.add_row(
            str(epoch + 1),
            history["stage"][i],
            human_count(history["trainable"][i]),
            f"{history['train_loss'][i]:.4f}",
            f"{history['val_loss'][i]:.4f}",
            f"{history['val_metric'][i]:.4f}",
            *(
                [f"{history['val_loss_ema'][i]:.4f}", f"{history['val_metric_ema'][i]:.4f}"]
                if ema
                else []
            ),
            f"{history['train_images_per_s'][i]:.1f}",
        )
    console().print(table)
    metric = result.metric
    kept = (
        f"best epoch {result.best_epoch + 1}"
        + (" (its EMA weights)" if result.kept_weights == "ema" else "")
        + (" by val loss" if config.select_by == "loss" else "")
        if result.best_epoch >= 0
        else "no epoch beat the starting head; kept it"
    )
    if result.start_val is not None:  # a start score of 0.0 is a score too
        plain(f"start (the --from head): val {metric} {result.start_val:.4f}")
    tta = f" (test-time augmentation: {result.tta})" if result.tta != "none" else ""
    scores = [
        f"{split} {metric} {interval or f'{value:.4f}'}"  # bare where it has no interval
        for split, value, interval in (
            ("val", result.val_score, result.interval("val")),
            ("test", result.test_score, result.interval("test")),
        )
        if value == value  # NaN: not scored (no test split)
    ]
    plain(f"{kept}, with 95% intervals: {', '.join(scores)}{tta}")
    if result.trained_on == "train+val":
        before = result.test_before_refit
        was = f"; before the refit, test {metric} {before[metric]:.4f}" if before else ""
        epochs = result.best_epoch + 1
        trained = f"for the {epochs} epoch(s) val chose" if epochs else "(val kept the start head)"
        plain(
            f"test is the network refitted on train + val ({result.trained_images:,} "
            f"images) {trained}{was}"
        )
    if result.soft_labelled:
        plain(
            f"trained on soft labels for {result.soft_labelled:,} of "
            f"{result.trained_images:,} images ({config.soft_labels}); val and test scored on "
            "the hard labels"
        )
    if result.tta_note:
        plain(result.tta_note)
    trust = result.trust
    for split, scored in trust.intervals.items():
        others = [f"{k} {v.format()}" for k, v in scored.items() if k != metric]
        if others:
            plain(f"  {split}: " + "  ".join(others))
    if trust.gain is not None:
        plain(str(trust.gain))
    elif trust.gain_note:
        plain(trust.gain_note)
    for line in trust.warnings:
        plain(f"warning: {line}")
    if result.cam is not None:
        plain(f"CAM overlays ({', '.join(result.cam.classes)}): {run.path / result.cam.file}")
    elif result.cam_note:
        plain(result.cam_note)
    plain(f"run: {run.path}")

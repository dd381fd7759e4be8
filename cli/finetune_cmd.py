"""``featpipe finetune`` and ``featpipe inspect``."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table
from rich.tree import Tree

from featpipe.errors import FeatpipeError

from . import options as opt
from .fit_cmd import RunsDir
from .render import console, plain, progress_bar


def _floats(text: str | None, option: str) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise FeatpipeError(f"{option} {text}: write numbers separated by commas") from None


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def register(app: typer.Typer) -> None:
    @app.command()
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
        from_run: Path | None = typer.Option(
            None, "--from", help="LP-FT: start from this run's head."
        ),
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
        epochs: int = typer.Option(5),
        batch_size: int = typer.Option(32, "--batch-size"),
        patience: int = typer.Option(0, help="Early stopping patience (epochs); 0 = off."),
        augment: bool = typer.Option(True, help="RandomResizedCrop + flip (timm)."),
        crop_scale: float = typer.Option(
            0.08, "--crop-scale", help="Smallest share of the image a random crop keeps."
        ),
        color_jitter: float = typer.Option(0.0, "--color-jitter"),
        head: str = typer.Option("linear", help="Fresh head: linear | mlp"),
        head_init: str = typer.Option("kaiming", "--head-init", help="kaiming | xavier"),
        head_scale: float = typer.Option(1.0, "--head-scale", help="Scale the fresh head's init."),
        reinit: str | None = typer.Option(None, help="Re-initialise blocks, e.g. last:2 (hybrid)."),
        seed: int = typer.Option(0),
        device: str = opt.Device,
        precision: str = typer.Option(
            "auto",
            help="auto (AMP on CUDA; on CPU the --from run's, else fp32) | fp32 | bf16 | fp16",
        ),
        workers: str = opt.Workers,
        out: Path | None = typer.Option(
            None, "--out", "-o", help="Run directory (resumes if it has a checkpoint)."
        ),
        runs_dir: Path = RunsDir,
    ) -> None:
        """Fine-tune: unfreeze blocks, gradually or at once; resumable; a run like fit's."""
        from featpipe.finetuning.trainer import FinetuneConfig
        from featpipe.finetuning.trainer import finetune as run_finetune

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
            warmup_epochs=warmup,
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
        with progress_bar("fine-tune") as bar:

            def update(epoch: int, done: int, total: int, seconds: float) -> None:
                rate = done / seconds if seconds > 0 else 0.0
                bar.update(done, total, rate, f"fine-tune epoch {epoch + 1}/{epochs}")

            path, result = run_finetune(data, config, out, runs_dir, progress=update)
        history = json.loads((path / "curves.json").read_text())[0]["history"]
        table = Table(title=f"fine-tune {result['backbone']} ({config.gradual or config.unfreeze})")
        for column in (
            "epoch",
            "stage",
            "trainable",
            "train loss",
            "val loss",
            f"val {result['metric']}",
            "img/s",
        ):
            table.add_column(column, justify="right")
        for i, epoch in enumerate(history["epoch"]):
            table.add_row(
                str(epoch + 1),
                history["stage"][i],
                _count(history["trainable"][i]),
                f"{history['train_loss'][i]:.4f}",
                f"{history['val_loss'][i]:.4f}",
                f"{history['val_metric'][i]:.4f}",
                f"{history['train_images_per_s'][i]:.1f}",
            )
        console().print(table)
        start = result.get("start_val")
        kept = (
            f"best epoch {result['best_epoch'] + 1}"
            if result["best_epoch"] >= 0
            else "no epoch beat the starting head; kept it"
        )
        console().print(
            (f"start (the --from head): val {result['metric']} {start:.4f}\n" if start else "")
            + f"{kept}: val {result['metric']} {result['val']['mean']:.4f}, "
            f"test {result['test']['mean']:.4f}"
            + ("  (CAM overlays: cam.png)" if result.get("cam") else "")
        )
        plain(f"run: {path}")

    @app.command()
    def inspect(
        backbone: str = typer.Argument(..., help="timm name or tv/<name>."),
        weights: str = opt.Weights,
        image_size: int | None = opt.ImageSize,
        depth: int = typer.Option(2, help="Tree depth."),
        unfreeze: str = typer.Option("head", help="Show trainable/frozen under this spec."),
        export: str | None = typer.Option(
            None, help="torchscript | onnx: write a file for Netron."
        ),
        out: Path | None = typer.Option(None, "--out", "-o", help="Export path."),
    ) -> None:
        """Blocks and stages with output shapes and parameter counts (names for --unfreeze)."""
        from featpipe.backbones.build import BackboneSpec
        from featpipe.finetuning.inspect import describe, export_for_netron

        spec = BackboneSpec(backbone, weights, image_size=image_size)
        if export:
            if export not in ("torchscript", "onnx"):
                raise FeatpipeError(f"--export {export}: choose torchscript or onnx")
            target = out or Path(f"{spec.slug}.{'pt' if export == 'torchscript' else 'onnx'}")
            export_for_netron(spec, export, target)
            plain(f"wrote {target}: open it in Netron (https://netron.app)")
            return
        d = describe(spec, depth, unfreeze)

        def label(node) -> str:
            shape = "×".join(str(s) for s in node.shape[1:]) if node.shape else "-"
            return (
                f"[bold]{node.name}[/] [dim]{node.kind}[/]  out {shape}  "
                f"[green]{_count(node.trainable)} trainable[/] / {_count(node.frozen)} frozen"
            )

        def grow(tree: Tree, node) -> None:
            for child in node.children:
                grow(tree.add(label(child)), child)

        tree = Tree(label(d.root))
        grow(tree, d.root)
        console().print(
            f"{d.model}: input {'×'.join(map(str, d.input_size))}, embedding {d.embedding_dim}"
        )
        console().print(tree)
        blocks = Table(title="blocks (what last:N counts; names work in --unfreeze)")
        for column in ("#", "block", "params", f"trainable under '{unfreeze}'"):
            blocks.add_column(column)
        for i, block in enumerate(d.blocks):
            blocks.add_row(
                str(i), block["name"], _count(block["params"]), "yes" if block["trainable"] else ""
            )
        console().print(blocks)
        if d.stages:
            stages = Table(title="feature stages (timm feature_info)")
            for column in ("module", "channels", "reduction (stride)"):
                stages.add_column(column)
            for s in d.stages:
                stages.add_row(s["module"], str(s["channels"]), str(s["reduction"]))
            console().print(stages)

    @app.command()
    def advise(
        data: Path = typer.Argument(..., help="A labelled dataset."),
        backbone: str = opt.Backbone,
        weights: str = opt.Weights,
        cache_dir: Path = opt.CacheDir,
        image_size: int | None = opt.ImageSize,
        precision: str = opt.Precision,
    ) -> None:
        """Measure size and domain similarity; name the quadrant and the next command."""
        from featpipe.reports.advise import advise as run_advise

        options = {"cache_dir": cache_dir, "image_size": image_size, "precision": precision}
        advice = run_advise(data, backbone, weights, options)
        e = advice.evidence
        table = Table(title=f"evidence for {data} with {backbone}")
        table.add_column("measure")
        table.add_column("value", justify="right")
        table.add_column("reads as")
        conf = e["source_head_confidence"]
        rows = [
            (
                "train images (smallest class)",
                f"{e['train_images']} ({e['images_per_class_min']})",
                f"{advice.size} (< {e['thresholds']['small_per_class']} per class is small)",
            ),
            ("linear probe, pretrained", f"{e['linear_probe_pretrained']:.4f}", ""),
            ("linear probe, random init", f"{e['linear_probe_random']:.4f}", ""),
            (
                "transfer gain (error removed)",
                f"{e['transfer_gain']:.3f}",
                f"similar if ≥ {e['thresholds']['similar_gain']}",
            ),
            (
                "ImageNet head confidence",
                "-" if conf is None else f"{conf:.3f}",
                f"similar if ≥ {e['thresholds']['similar_confidence']}",
            ),
            ("train − val accuracy (best head)", f"{e['best_head']['train_val_gap']:.3f}", ""),
            (
                "few-shot accuracy",
                ", ".join(f"{p['shots']}: {p['accuracy']:.3f}" for p in e["few_shot"]),
                "",
            ),
        ]
        for row in rows:
            table.add_row(*row)
        console().print(table)
        console().print(f"quadrant: [bold]{advice.size} dataset, {advice.similarity} domain[/]")
        console().print(f"strategy: {advice.strategy}")
        plain(f"next:\n{advice.command}")

"""``featpipe advise``: measure a dataset against a backbone and name the next command."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from featpipe.extraction.options import ExtractOptions
from featpipe.extraction.stage import scanned

from . import options as opt
from .render import console, plain, progress_bar


@opt.with_extract_options
def advise(
    data: Path = typer.Argument(..., help="A labelled dataset."),
    backbone: str = opt.Backbone,
    runs_dir: Path = opt.RunsDir,
    *,
    extraction: ExtractOptions,
) -> None:
    """Measure size and domain similarity; name the quadrant and the next command."""
    with progress_bar(f"advise: loading features of {data}") as bar:
        dataset = scanned(data, None, None, extraction, bar.status)  # a wrong path: no torch
        from featpipe.reports.advise import advise as run_advise  # torch: after the scan

        def progress(label: str):  # per-batch callback of one extraction, named on the bar
            return lambda p: bar.update(p.done, p.total, p.images_per_second, f"extract ({label})")

        advice = run_advise(
            dataset,
            backbone,
            extraction.weights,
            extraction,
            status=bar.status,
            progress=progress,
            runs_dir=runs_dir,
        )
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

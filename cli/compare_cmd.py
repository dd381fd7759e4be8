"""``featpipe compare``: backbones × datasets, one leaderboard."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from featpipe.errors import FeatpipeError
from featpipe.reports.compare import Experiment, Row, read_experiment
from featpipe.reports.compare import compare as run_compare

from . import options as opt
from .fit_cmd import grid_from, parse_fixed
from .render import console, progress_bar


def _num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def leaderboard(rows: list[Row]) -> Table:
    metric = rows[0].metric if rows else "accuracy"
    table = Table(title=f"backbone × dataset leaderboard (by val {metric})")
    for column in (
        "dataset",
        "backbone",
        "best head",
        f"val {metric}",
        f"test {metric}",
        "test macro-F1",
        "pretrained − random",
        "extract s",
        "fit s",
    ):
        table.add_column(
            column, justify="left" if column in ("dataset", "backbone", "best head") else "right"
        )
    for row in sorted(rows, key=lambda r: (r.dataset, -r.val)):
        table.add_row(
            row.dataset,
            row.backbone,
            row.chosen,
            _num(row.val),
            _num(row.test),
            _num(row.macro_f1),
            _num(row.gap, 3) if row.gap is not None else "",
            _num(row.extract_seconds, 1),
            _num(row.fit_seconds, 1),
        )
    return table


def compare(
    data: list[str] = typer.Option([], "--data", "-d", help="Datasets (several allowed)."),
    backbone: list[str] = typer.Option(
        [], "--backbone", "-b", help="MODEL[@WEIGHTS] specs (several); add @none controls."
    ),
    experiment: Path | None = typer.Option(
        None, "--experiment", "-e", help="TOML/YAML experiment file."
    ),
    sweep: list[str] = typer.Option([], "--sweep", help="Grid items option=v1,v2 …"),
    set_: list[str] = typer.Option([], "--set", help="Fixed head option: name=value."),
    seeds: int = typer.Option(1, help="Seeds per config."),
    runs_dir: Path = opt.RunsDir,
    cache_dir: Path = opt.CacheDir,
    precision: str = opt.Precision,
    engine: str = opt.Engine,
    image_size: int | None = opt.ImageSize,
    device: str = opt.Device,
) -> None:
    """Extract what is missing, sweep heads per pair, print one leaderboard."""
    if experiment:
        exp = read_experiment(experiment)
    else:
        if not data or not backbone:
            raise FeatpipeError("compare needs --data and --backbone, or --experiment FILE")
        exp = Experiment(
            data=data,
            backbones=backbone,
            sweep=grid_from(sweep, None),
            head=parse_fixed(set_),
            seeds=seeds,
            runs_dir=str(runs_dir),
            extract={
                "cache_dir": cache_dir,
                "precision": precision,
                "engine": engine,
                "image_size": image_size,
                "device": device,
            },
        )
    with progress_bar("extract") as bar:
        rows = run_compare(
            exp,
            progress=lambda model: lambda p: bar.update(p.done, p.total, p.images_per_second),
        )
    console().print(leaderboard(rows))

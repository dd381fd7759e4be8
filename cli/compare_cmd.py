"""``featpipe compare``: backbones × datasets, one leaderboard."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer
from rich.table import Table

from featpipe.errors import FeatpipeError
from featpipe.extraction.options import ExtractOptions
from featpipe.fitting.options import SweepOptions
from featpipe.options import given
from featpipe.reports.compare import Experiment, Row, read_experiment
from featpipe.reports.compare import compare as run_compare

from . import options as opt
from .fit_cmd import GridOption, SetOption, SweepOption, grid_from, parse_fixed
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


@opt.with_extract_options
@opt.with_options(SweepOptions, "sweeping", panel="Sweep options")
def compare(
    data: list[str] = typer.Option(
        [], "--data", "-d", help="Datasets: folders or CSV manifests (several allowed)."
    ),
    backbone: list[str] = typer.Option(
        [], "--backbone", "-b", help="MODEL[@WEIGHTS] specs (several); add @none controls."
    ),
    experiment: Path | None = typer.Option(
        None,
        "--experiment",
        "-e",
        help="TOML/YAML experiment file instead of --data/--backbone and the head options; "
        "extraction options typed here override its [extract] table.",
    ),
    sweep: list[str] = SweepOption,
    set_: list[str] = SetOption,
    grid: Path | None = GridOption,
    runs_dir: Path = opt.RunsDir,
    *,
    sweeping: SweepOptions,
    extraction: ExtractOptions,
) -> None:
    """Extract what is missing, sweep heads per pair, print one leaderboard."""
    if experiment:
        exp = read_experiment(experiment)
        if data or backbone:
            raise FeatpipeError(
                "--experiment names the datasets and backbones: drop --data/--backbone, "
                "or drop --experiment"
            )
        # What was typed here wins over the file's (which keeps the rest).
        exp.options = replace(exp.options, **given(sweeping))
        exp.extract = replace(exp.extract, **given(extraction))
    else:
        if not data or not backbone:
            raise FeatpipeError("compare needs --data and --backbone, or --experiment FILE")
        exp = Experiment(
            data=data,
            backbones=backbone,
            sweep=grid_from(sweep, grid),
            head=parse_fixed(set_),
            options=sweeping,
            extract=extraction,
            runs_dir=str(runs_dir),
        )
    with progress_bar("compare: starting") as bar:
        rows = run_compare(
            exp,
            progress=lambda model: (
                lambda p: bar.update(p.done, p.total, p.images_per_second, f"extract {model}")
            ),
            status=bar.status,
        )
    console().print(leaderboard(rows))

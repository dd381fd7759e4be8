"""``featpipe fit``: heads on cached features (extracting first if needed), ranked."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from featpipe.extraction.options import ExtractOptions
from featpipe.extraction.stage import scanned
from featpipe.fitting.options import SweepOptions
from featpipe.fitting.verdict import compared_line
from featpipe.heads.config import (
    parse_assignments,
    parse_grid_args,
    parse_value,
    read_grid_file,
    varying,
)
from featpipe.runs.metrics import Repeats
from featpipe.stats import Interval
from featpipe.stats.paired import format_p

from . import options as opt
from . import views_options as vopt
from .render import console, plain, progress_bar

if TYPE_CHECKING:
    from featpipe.fitting.run import SweepResult


def parse_fixed(items: list[str]) -> dict[str, Any]:
    """``--set name=value`` items, typed by the head-config parser (errors name ``--set``)."""
    return parse_assignments(items, "set")


def grid_from(sweep: list[str], grid_file: Path | None) -> dict[str, list]:
    """``--grid FILE`` then ``--sweep`` items (which win), typed by the same parser."""
    grid = read_grid_file(grid_file, "grid") if grid_file else {}
    grid.update(parse_grid_args(sweep, "sweep"))
    return grid


def _fmt(mean: float, std: float, seeds: int, interval: Interval | None = None) -> str:
    """``0.6818 [0.53, 0.81]`` for one seed; ``0.6818 ± 0.0100`` (the first seed's interval
    after it) for several; ``-`` where not scored."""
    if mean != mean:  # NaN: not evaluated
        return "-"
    if interval is not None and seeds == 1:
        return interval.format()
    text = f"{mean:.4f}" + (f" ± {std:.4f}" if seeds > 1 else "")
    return text + (f" [{interval.low:.2f}, {interval.high:.2f}]" if interval else "")


def _against_best(result: SweepResult) -> dict[str, str]:
    """Each config's label → ``best``, ``tied (p = 0.41)`` or ``worse (p = 0.006)``."""
    ranking = result.verdict.ranking
    if ranking is None:
        return {}
    cells = {ranking.best: "best"}
    for c in ranking.comparisons:
        cells[c.name] = ("tied" if c.tied else "worse") + f" ({format_p(c.p_holm)})"
    return cells


def leaderboard(result: SweepResult, seeds: int, limit: int = 10) -> Table:
    metric = result.metric
    ranked = sorted(result.candidates, key=lambda c: -c.mean(metric))
    keys = varying([c.config for c in result.candidates])
    against = _against_best(result)
    sizes = result.split_sizes
    n_val = sizes.get("val") if result.selection == "val" else sizes.get("train")
    table = Table(
        title=f"head leaderboard (selection on {result.selection}, by {metric}; 95% intervals, "
        f"val n={n_val}, test n={sizes.get('test', 0)})"
    )
    columns = ("#", "head", f"val {metric}", "vs best on val", f"test {metric}", "fit s")
    for column in columns:
        table.add_column(column, justify="right" if column != "head" else "left")
    for rank, cand in enumerate(ranked[:limit], start=1):
        chosen = cand is result.best
        name = cand.config.label(keys)
        val = result.interval("val", cand)
        test = result.interval("test", cand)
        table.add_row(
            str(rank),
            ("[bold green]" if chosen else "") + name,
            _fmt(cand.mean(metric), cand.std(metric), seeds, val),
            against.get(name, ""),
            _fmt(cand.mean(metric, "test"), cand.std(metric, "test"), seeds, test)
            if chosen
            else "",
            f"{sum(cand.fit_seconds):.2f}",
        )
    return table


def print_fit(run: Any, result: SweepResult, seeds: int) -> None:
    out = console()
    out.print(leaderboard(result, seeds))
    if result.few_shot:
        table = Table(
            title="few-shot (accuracy against examples per class; 95% interval over the draws "
            "and the test images)"
        )
        for column in ("shots", "per class", "split", "accuracy", "± std of draws", "draws", "n"):
            table.add_column(column, justify="right")
        for p in result.few_shot:
            table.add_row(
                str(p.shots),
                str(p.per_class),
                p.split,
                p.interval.format() if p.interval else f"{p.mean:.4f}",
                f"{p.std:.4f}",
                str(p.draws),
                str(p.interval.n) if p.interval else "",
            )
        out.print(table)
    if result.few_shot_note:
        plain(result.few_shot_note)
    verdict = result.verdict
    if verdict.ranking is not None:
        plain(compared_line(result.selection, seeds, verdict.ranking))
    keys = varying([c.config for c in result.candidates])
    refitted = " (refitted on train + val)" if result.trained_on == "train+val" else ""
    plain(f"chosen: {result.best.config.label(keys)}{refitted}")
    for split in ("val", "test"):
        scored = verdict.intervals.get(split, {})
        if scored:
            plain(f"  {split}: " + "  ".join(f"{k} {v}" for k, v in scored.items()))
    for line in verdict.warnings:
        plain(f"warning: {line}")
    if result.repeats is not None:
        print_repeats(result.repeats)
    if result.refit_note:
        plain(result.refit_note)
    plain(f"run: {run.path}")


def print_repeats(repeats: Repeats) -> None:
    """Each metric over the splits, and how often each config was chosen."""
    n = len(repeats.chosen)
    plain(f"over {n} splits (re-drawn: {repeats.redrawn}; {repeats.seconds:.1f} s):")
    for metric, interval in repeats.summary.items():
        plain(
            f"  test {metric} {interval.format()} ({interval.method}; "
            f"std across splits {repeats.std[metric]:.3g})"
        )
    counts = Counter(repeats.chosen)
    plain("  chosen: " + ", ".join(f"{label} ×{k}" for label, k in counts.most_common()))


# The head options fit and compare share (compare runs fit for every dataset × backbone pair);
# their sweep options are SweepOptions'.
SetOption = typer.Option([], "--set", help="Fixed head option NAME=VALUE (several allowed).")
SweepOption = typer.Option(
    [], "--sweep", help="Grid items OPTION=V1,V2 … over any head option (several allowed)."
)
GridOption = typer.Option(None, "--grid", help="Grid file (TOML, YAML or JSON); --sweep items win.")


@opt.with_extract_options
@opt.with_options(SweepOptions, "sweeping", panel="Sweep options")
def fit(
    data: Path = typer.Argument(..., help="ImageFolder tree, CSV manifest or image folder."),
    backbone: str = typer.Option(
        "tf_efficientnet_lite0",
        "--backbone",
        "-b",
        help="MODEL[@WEIGHTS], '+' to concatenate backbones (a+tv/b).",
    ),
    head: str | None = typer.Option(None, help="linear | mlp | logreg | linearsvc | ridge | knn"),
    set_: list[str] = SetOption,
    sweep: list[str] = SweepOption,
    grid: Path | None = GridOption,
    runs_dir: Path = opt.RunsDir,
    views: int = vopt.Views,
    view_mode: str = vopt.ViewMode,
    crop_scale: float = vopt.CropScale,
    hflip: float = vopt.Hflip,
    color_jitter: float = vopt.ColorJitter,
    view_seed: int = vopt.ViewSeed,
    *,
    sweeping: SweepOptions,
    extraction: ExtractOptions,
) -> None:
    """Fit heads on cached features (extracting first if needed); save and rank them."""
    fixed = parse_fixed(set_)
    if head:
        fixed["head"] = parse_value("head", head)
    grid_values = grid_from(sweep, grid)
    with progress_bar(f"fit: loading features of {data}") as bar:
        dataset = scanned(data, None, None, extraction, bar.status)  # a wrong path: no torch
        from featpipe.fitting.stage import fit as fit_heads  # torch: after the options parsed

        run, result = fit_heads(
            dataset,
            backbone,
            sweeping,
            grid=grid_values,
            head=fixed,
            runs_dir=runs_dir,
            extract_options=extraction,
            progress=lambda model: (
                lambda p: bar.update(p.done, p.total, p.images_per_second, f"extract {model}")
            ),
            status=bar.status,
            views=views,
            view_mode=view_mode,
            augment=vopt.augment(crop_scale, hflip, color_jitter, view_seed),
            device=extraction.device,
        )
    print_fit(run, result, sweeping.seeds)

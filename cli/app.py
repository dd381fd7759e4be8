"""``featpipe``: the root command, ``extract``, ``models`` and ``demo``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
import typer
from rich.markup import escape
from rich.table import Table

from featpipe.errors import FeatpipeError
from featpipe.extraction.stage import ExtractResult, Progress

from . import options as opt
from .argv import expand
from .cache_cmd import cache_app
from .compare_cmd import register as register_compare
from .datasets_cmd import datasets_app
from .finetune_cmd import register as register_finetune
from .fit_cmd import register as register_fit
from .render import console, plain, progress_bar
from .use_cmd import register as register_use

app = typer.Typer(
    name="featpipe",
    help="Run a frozen vision backbone once, cache its embeddings, fit heads in seconds.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(cache_app, name="cache")
app.add_typer(datasets_app, name="datasets")
register_fit(app)
register_compare(app)
register_use(app)
register_finetune(app)


def run_extract(
    data: Path, backbone: str, options: opt.ExtractOptions, name: str | None = None
) -> ExtractResult:
    """Extract with a rich progress bar; shared by every command that needs features."""
    from featpipe.extraction.stage import extract

    rank = int(os.environ.get("RANK", "0"))
    label = f"extract {backbone}" + (f" [rank {rank}]" if "RANK" in os.environ else "")
    with progress_bar(label) as bar:

        def update(p: Progress) -> None:
            bar.update(p.done, p.total, p.images_per_second)

        # Under torchrun each rank shows its own part; rank 0 reports the total.
        return extract(data, backbone, name=name, progress=update, **options.kwargs())


@app.command()
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


@app.command()
def models(
    filter: str = typer.Option("*", "--filter", "-f", help="Glob on the name, e.g. '*lite*'."),
    offline: bool = typer.Option(False, "--offline", help="Only models with offline weights."),
    limit: int = typer.Option(40, help="Show at most this many rows."),
) -> None:
    """List backbones: any timm name, tv/<name> for torchvision; offline weights first."""
    from featpipe.backbones.build import list_backbones

    rows = list_backbones(filter, offline_only=offline)
    table = Table(title=f"backbones matching '{filter}' ({len(rows)})")
    for column in ("name", "library", "offline weights"):
        table.add_column(column)
    for row in rows[:limit]:
        table.add_row(row["name"], row["library"], row["offline"] or "-")
    console().print(table)
    if len(rows) > limit:
        console().print(f"… {len(rows) - limit} more: narrow with --filter or raise --limit")


@app.command()
def demo(
    data_dir: Path = typer.Option(Path("data"), help="Where the bundled dataset is written."),
    dataset: str = typer.Option("elpv", help="Bundled dataset to use."),
    backbone: str = opt.Backbone,
    cache_dir: Path = opt.CacheDir,
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where the run is saved."),
) -> None:
    """The quick start: write a bundled real dataset as images, extract with real weights,
    then fit a sweep of heads and print the leaderboard."""
    from featpipe.data.bundled import prepare_dataset
    from featpipe.fitting.stage import fit

    from .fit_cmd import print_fit

    root = prepare_dataset(dataset, data_dir / dataset)
    plain(f"dataset: {root}")
    options = opt.ExtractOptions(
        "auto",
        "avg",
        None,
        None,
        "auto",
        "auto",
        "float32",
        "auto",
        "auto",
        "auto",
        cache_dir,
        "skip",
    )
    result = run_extract(root, backbone, options)
    plain(result.summary())
    run, sweep = fit(
        root,
        backbone,
        grid={"head": ["linear", "logreg"], "lr": [1e-3, 1e-2]},
        runs_dir=runs_dir,
        extract_options={"cache_dir": cache_dir},
    )
    print_fit(run, sweep, seeds=1)


def main(argv: list[str] | None = None) -> int:
    """Entry point: a user error prints one line and exits 2; bugs keep their traceback."""
    try:
        args = expand(list(sys.argv[1:] if argv is None else argv))
        app(args=args, standalone_mode=False, prog_name="featpipe")
    except FeatpipeError as exc:
        console(stderr=True).print(f"[bold red]error:[/] {escape(exc.render(opt.flag))}")
        return 2
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        console(stderr=True).print("interrupted: finished batches are kept; rerun to resume")
        return 130
    except click.exceptions.Exit as exc:
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())

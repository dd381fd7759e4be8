"""``featpipe demo``: the quick start on a bundled real dataset."""

from __future__ import annotations

from pathlib import Path

import typer

from featpipe.data.bundled import prepare_dataset
from featpipe.extraction.options import ExtractOptions

from . import options as opt
from .extract_cmd import run_extract
from .fit_cmd import print_fit
from .render import plain, progress_bar


def demo(
    data_dir: Path = typer.Option(Path("data"), help="Where the bundled dataset is written."),
    dataset: str = typer.Option("elpv", help="Bundled dataset to use."),
    backbone: str = opt.Backbone,
    cache_dir: Path = opt.CacheDir,
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where the run is saved."),
) -> None:
    """The quick start: a bundled real dataset, real weights, a sweep of heads, a leaderboard.

    Writes the dataset as images, extracts it and fits linear and logistic heads."""
    from featpipe.fitting.stage import fit  # torch: only when the demo runs

    root = prepare_dataset(dataset, data_dir / dataset)
    plain(f"dataset: {root}")
    options = ExtractOptions(cache_dir=cache_dir)
    result = run_extract(root, backbone, options)
    plain(result.summary())
    with progress_bar("demo: fitting heads") as bar:
        run, sweep = fit(
            root,
            backbone,
            # the linear head at its defaults (the default sweep's recipe) with three weight
            # decays, beside scikit-learn's logistic regression on standardised features
            grid={"head": ["linear", "logreg"], "wd": [0.0, 1e-2, 0.1]},
            runs_dir=runs_dir,
            extract_options=options,
            status=bar.status,
        )
    print_fit(run, sweep, seeds=1)

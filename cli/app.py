"""``featpipe``: the root command. One module per command group, each named after it
(``fit_cmd.fit`` is ``featpipe fit``); every command is a module-level function registered
here, so that a reader or a tool can import any of them."""

from __future__ import annotations

import sys

import click
import typer
from rich.markup import escape

from featpipe.errors import FeatpipeError

from . import options as opt
from .advise_cmd import advise
from .argv import expand
from .cache_cmd import cache_app
from .compare_cmd import compare
from .datasets_cmd import datasets_app
from .demo_cmd import demo
from .export_cmd import export
from .extract_cmd import extract
from .finetune_cmd import finetune
from .fit_cmd import fit
from .inspect_cmd import inspect
from .models_cmd import models
from .predict_cmd import predict
from .render import console
from .report_cmd import report
from .results_cmd import results

app = typer.Typer(
    name="featpipe",
    help="Run a frozen vision backbone once, cache its embeddings, fit heads in seconds.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# In the order of the flow: data → extract → cache → fit → finetune → reports → use.
app.add_typer(datasets_app, name="datasets")
for command in (extract, models, demo):
    app.command()(command)
app.add_typer(cache_app, name="cache")
for command in (fit, results, compare, finetune, inspect, advise, report, predict, export):
    app.command()(command)


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

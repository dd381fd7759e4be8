"""``featpipe``: the root command. One module per command group, each named after it
(``fit_cmd.fit`` is ``featpipe fit``); every command is a module-level function registered
here, so that a reader or a tool can import any of them."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from importlib.metadata import version
from typing import NoReturn

import typer
from rich.markup import escape

# typer bundles its own click (since 0.26) and raises these, never the installed click's
# (pyproject bounds typer to the versions tested for this).
from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError

from featpipe.errors import FeatpipeError

from . import options as opt
from .advise_cmd import advise
from .argv import expand
from .cache_cmd import cache_app
from .compare_cmd import compare
from .datasets_cmd import datasets_app, show_warning
from .demo_cmd import demo
from .export_cmd import export
from .extract_cmd import extract
from .finetune_cmd import finetune
from .fit_cmd import fit
from .help import Group, house_style
from .inspect_cmd import inspect
from .models_cmd import models
from .predict_cmd import predict
from .render import console
from .report_cmd import report
from .results_cmd import results
from .retrieve_cmd import retrieve

app = typer.Typer(
    name="featpipe",
    cls=Group,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    """``--version``: what a bug report needs. Only this flag imports torch."""
    if not value:
        return
    import torch

    if torch.cuda.is_available():
        device = f"cuda ({torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} visible)"
    else:
        device = f"cpu ({torch.get_num_threads()} threads)"
    console().print(
        f"featpipe {version('featpipe')}, torch {torch.__version__}, timm {version('timm')}, "
        f"device {device}",
        markup=False,
    )
    raise typer.Exit()


@app.callback()
def root(
    show_version: bool = typer.Option(
        False,
        "--version",
        callback=_version,
        is_eager=True,
        help="Show the versions of featpipe, torch and timm and the device, then exit.",
    ),
) -> None:
    """Run a frozen vision backbone once, cache its embeddings, fit heads in seconds."""


# In the order of the flow: data → extract → cache → fit → finetune → reports → use.
app.add_typer(datasets_app, name="datasets")
for command in (extract, models, demo):
    app.command()(command)
app.add_typer(cache_app, name="cache")
for command in (
    fit,
    results,
    compare,
    retrieve,
    finetune,
    inspect,
    advise,
    report,
    predict,
    export,
):
    app.command()(command)
house_style(app)


def main(argv: list[str] | None = None) -> int:
    """Entry point: a user error prints one line and exits 2; bugs keep their traceback."""
    try:
        args = expand(list(sys.argv[1:] if argv is None else argv))
        with warnings.catch_warnings():
            warnings.showwarning = show_warning  # a corrected input: one line, like errors
            # a command's typer.Exit(code) comes back as its value (standalone_mode off)
            returned = app(args=args, standalone_mode=False, prog_name="featpipe")
    except FeatpipeError as exc:
        console(stderr=True).print(f"[bold red]error:[/] {escape(exc.render(opt.flag))}")
        return 2
    except NoArgsIsHelpError as exc:  # a bare group: its help is the answer, not an error
        console().print(exc.format_message(), markup=False, highlight=False)
        return 0
    except ClickException as exc:
        console(stderr=True).print(f"[bold red]error:[/] {escape(_usage_line(exc))}")
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        console(stderr=True).print("interrupted: finished batches are kept; rerun to resume")
        return 130
    except typer.Exit as exc:
        return exc.exit_code
    return returned if isinstance(returned, int) else 0


def run() -> NoReturn:
    """The ``featpipe`` program (console script and ``python -m featpipe``): :func:`main`, then
    out without the interpreter's teardown.

    When a command returns, what it wrote is closed and durable (the cache commits each
    part atomically, runs write their files whole); all the teardown still does is free
    memory the system frees anyway and unregister torch's operator libraries one by one
    (``weakref.finalize`` hooks of ``torch.library``), about 0.9 s after any command that
    loaded timm (`featpipe extract` on 3,000 PNGs, 2-core Xeon, one run each: 20.34 s against
    19.36 s; 3 alternated rounds of whole processes in README "Without the teardown").
    So the output is flushed and the process exits with the command's status.
    """
    code = main()
    for stream in (sys.stdout, sys.stderr):
        # a reader that left early (`| head`), or a stream already closed
        with contextlib.suppress(BrokenPipeError, ValueError):
            stream.flush()
    os._exit(code)


def _usage_line(exc: ClickException) -> str:
    """Click's message (with its "Did you mean …?") and where help is, on one line."""
    message = " ".join(exc.format_message().split())
    if isinstance(exc, UsageError):
        ctx = getattr(exc, "ctx", None)
        message += f" (see: {ctx.command_path if ctx else 'featpipe'} --help)"
    return message


if __name__ == "__main__":
    run()

"""Options shared by every command that may run a backbone (extract, fit, compare, …)."""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import typer

from featpipe.backbones.weights import WEIGHTS_HELP
from featpipe.cache.catalog import DEFAULT_CACHE_DIR
from featpipe.options import Declared, auto_int, declared
from featpipe.runs.record import DEFAULT_RUNS_DIR

# Python parameters whose flag is not ``--`` + the name with dashes.
_FLAGS = {
    "from_run": "--from",
    "data": "DATA",
    "entry": "ENTRY",
    "backbone": "--backbone",
    "fmt": "--format",
}


def flag(param: str) -> str:
    """The command-line spelling of a library parameter, for errors raised from Python."""
    return _FLAGS.get(param, "--" + param.replace("_", "-"))


Backbone = typer.Option(
    "tf_efficientnet_lite0",
    "--backbone",
    "-b",
    help="timm model name, or tv/<name> for torchvision (see: featpipe models).",
)
Weights = typer.Option(
    "auto",
    "--weights",
    "-w",
    help=WEIGHTS_HELP,
)
Pool = typer.Option("avg", help="avg | max | avgmax (concatenated) | cls (ViT).")
Layer = typer.Option(None, help="Intermediate feature layer: index or module name (timm).")
ImageSize = typer.Option(None, "--image-size", help="Override the model's input size (px).")
Precision = typer.Option("auto", help="auto (probe) | fp32 | bf16 | fp16 (CUDA).")
Engine = typer.Option("auto", help="auto (probe) | torch | onnxruntime (CPU, fp32).")
Dtype = typer.Option("float32", help="Stored dtype: float32 | float16.")
Device = typer.Option(
    "auto", help="auto | cpu | cuda | cuda:N (fit: also where the torch heads train)."
)
BatchSize = typer.Option("auto", "--batch-size", help="Images per batch, or auto (probe).")
Workers = typer.Option("auto", help="DataLoader worker processes, or auto.")
AllowOutside = typer.Option(
    False,
    "--allow-outside",
    help="Let a CSV manifest list files outside its own folder (refused by default).",
)
CacheDir = typer.Option(DEFAULT_CACHE_DIR, "--cache-dir", help="Cache root directory.")
OnError = typer.Option("skip", "--on-error", help="skip (record and go on) | fail.")
Name = typer.Option(None, help="Dataset name in the cache (default: folder name).")
JpegDraft = typer.Option(
    False,
    "--jpeg-draft",
    help="Decode JPEGs at reduced scale (faster; the pixels, so the embeddings, differ from "
    "the model's own preprocessing). Recorded in the cache key.",
)
Decode = typer.Option(
    "pil",
    "--decode",
    help="pil: the model's exact PIL preprocessing in workers | tensor: JPEGs decoded in "
    "batches on the device (CUDA or CPU) and resized there, antialiased (faster on a GPU; "
    "the embeddings differ slightly). Recorded in the cache key.",
)
VerifyContent = typer.Option(
    False,
    "--verify-content",
    help="Reuse a cached row only if its file's full SHA-256 matches (reads every file; by "
    "default size, mtime and the first and last 64 KiB are compared).",
)
RunsDir = typer.Option(DEFAULT_RUNS_DIR, "--runs-dir", help="Where runs are written and read.")


@dataclass
class ExtractOptions:
    """Every option that shapes an extraction, as one value: the cache key's (weights, pool,
    layer, image size, precision, engine, dtype, JPEG draft, decoder) and how it runs. Commands
    that may extract declare them once, through :func:`with_extract_options`, and pass them on."""

    weights: str = Weights.default
    pool: str = Pool.default
    layer: str | None = Layer.default
    image_size: int | None = ImageSize.default
    precision: str = Precision.default
    engine: str = Engine.default
    dtype: str = Dtype.default
    device: str = Device.default
    batch_size: str = BatchSize.default
    workers: str = Workers.default
    cache_dir: Path = CacheDir.default
    on_error: str = OnError.default
    draft: bool = JpegDraft.default
    decode: str = Decode.default
    allow_outside: bool = AllowOutside.default
    verify_content: bool = VerifyContent.default

    def kwargs(self) -> dict[str, Any]:
        """The options as :func:`featpipe.extract` keyword arguments."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["batch_size"] = auto_int(self.batch_size, "batch_size")
        values["workers"] = auto_int(self.workers, "workers")
        return values

    def given(self) -> dict[str, Any]:
        """The keyword arguments whose values differ from the defaults (what a user typed)."""
        default = ExtractOptions().kwargs()
        return {k: v for k, v in self.kwargs().items() if v != default[k]}


# ExtractOptions field → (annotation, the typer option that declares it)
_EXTRACT_PARAMS: dict[str, tuple[Any, Any]] = {
    "weights": (str, Weights),
    "pool": (str, Pool),
    "layer": (str | None, Layer),
    "image_size": (int | None, ImageSize),
    "precision": (str, Precision),
    "engine": (str, Engine),
    "dtype": (str, Dtype),
    "draft": (bool, JpegDraft),
    "decode": (str, Decode),
    "device": (str, Device),
    "batch_size": (str, BatchSize),
    "workers": (str, Workers),
    "on_error": (str, OnError),
    "cache_dir": (Path, CacheDir),
    "allow_outside": (bool, AllowOutside),
    "verify_content": (bool, VerifyContent),
}


def _in_panel(option: Any, panel: str | None) -> Any:
    """The option, listed by ``--help`` under its own heading after the command's own."""
    option = copy.copy(option)
    option.rich_help_panel = panel
    return option


def _typer_option(option: Declared, panel: str | None) -> Any:
    """The typer option of a declared library option: its flag (typer's own ``--x/--no-x``
    for a boolean with no explicit flag), help and command-line default."""
    short = [option.spec.short] if option.spec.short else []
    names = [option.flag, *short] if option.spec.flag or short else []
    return typer.Option(option.cli_default, *names, help=option.spec.help, rich_help_panel=panel)


def _with_parameters(
    command: Callable[..., Any],
    param: str,
    added: list[inspect.Parameter],
    build: Callable[[dict[str, Any]], Any],
) -> Callable[..., Any]:
    """``command`` with ``added`` keyword-only parameters in its signature, whose values
    ``build`` turns into the one object the command receives as ``param``.

    typer reads a command's parameters from its signature, so the wrapper's signature is the
    command's own (without ``param``) followed by the added ones.
    """
    signature = inspect.signature(command, eval_str=True)
    own = [p for name, p in signature.parameters.items() if name != param]
    names = [p.name for p in added]

    @functools.wraps(command)
    def wrapper(**values: Any) -> Any:
        given = {name: values.pop(name) for name in names}
        return command(**values, **{param: build(given)})

    parameters = own + added
    wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    del wrapper.__wrapped__  # typer must read the wrapper's signature, not the command's
    return wrapper


def with_options(
    cls: type, param: str, panel: str | None = None, exclude: tuple[str, ...] = ()
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command every option that ``cls`` declares (:mod:`featpipe.options`), received as
    one ``cls`` value in its ``param`` parameter: the flags, help and defaults are the library's
    own declaration, written once. Options in ``exclude`` (and those declared ``cli=False``)
    stay out of the command line and keep their defaults."""
    options = [o for o in declared(cls) if o.spec.cli and o.name not in exclude]

    def build(given: dict[str, Any]) -> Any:
        return cls(**{o.name: o.from_cli(given[o.name]) for o in options})

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        added = [
            inspect.Parameter(
                o.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=_typer_option(o, panel),
                annotation=o.cli_annotation,
            )
            for o in options
        ]
        return _with_parameters(command, param, added, build)

    return decorate


def with_extract_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give ``command`` every extract option, received as one :class:`ExtractOptions` in its
    ``extraction`` parameter: each command that may extract accepts the same flags (all that
    change the cache key among them), declared here once."""
    added = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=_in_panel(option, "Extraction options"),
            annotation=kind,
        )
        for name, (kind, option) in _EXTRACT_PARAMS.items()
    ]
    return _with_parameters(command, "extraction", added, lambda given: ExtractOptions(**given))

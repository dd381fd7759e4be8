"""``featpipe cache``: list, inspect, verify and remove cache entries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from featpipe.cache.catalog import entry_info, find_entries, list_entries, remove_entry
from featpipe.cache.entry import read_meta
from featpipe.cache.entry import verify as verify_entry
from featpipe.cache.export import export_entry
from featpipe.cache.views import is_views_path
from featpipe.data.datasets import SPLITS
from featpipe.errors import ArgumentError, FeatpipeError

from . import options as opt
from .render import console, human_bytes, human_time, plain

cache_app = typer.Typer(help="Inspect and manage the feature cache.", no_args_is_help=True)


ENTRY_HELP = (
    "Entry path, dataset/stem, dataset/backbone (e.g. elpv/tv_mobilenet_v2), stem or key prefix; "
    "add :LAYER for one layer's entry (elpv/vit_small_patch16_224:-2)."
)


@cache_app.command("ls")
def ls(cache_dir: Path = opt.CacheDir) -> None:
    """Table of entries: dataset, backbone, N, D, dtype, size on disk, created."""
    rows = list_entries(cache_dir)
    table = Table(title=f"feature cache: {cache_dir} ({len(rows)} entries)")
    for column in ("dataset", "backbone", "key", "N", "D", "dtype", "precision", "size", "created"):
        justify = "right" if column in ("N", "D", "size") else "left"
        table.add_column(column, justify=justify)
    for r in rows:
        if r.error:
            table.add_row(
                r.dataset,
                r.backbone,
                "",
                "",
                "",
                "",
                "",
                human_bytes(r.size_bytes),
                f"[red]{r.error}[/]",
            )
            continue
        table.add_row(
            r.dataset,
            f"{r.label} (views)" if is_views_path(r.path) else r.label,
            r.key[:8],
            str(r.n),
            str(r.dim),
            r.dtype,
            r.precision,
            human_bytes(r.size_bytes),
            human_time(r.created),
        )
    console().print(table)


def _few(values: list[str], limit: int = 8) -> str:
    shown = ", ".join(values[:limit])
    return shown + (f", … {len(values) - limit} more" if len(values) > limit else "")


def summary_rows(meta: dict[str, Any]) -> list[tuple[str, str]]:
    """An entry as a person reads it: what made the numbers, what they are, where they came
    from. The full key fields and provenance are ``--json``."""
    key = meta["key_fields"]
    transform = key["transform"]
    settings = meta["provenance"].get("settings", {})
    last = meta["provenance"].get("last_run", {})
    versions = meta["provenance"].get("versions", {})
    size = "x".join(str(v) for v in transform["input_size"][1:])
    described = settings.get("weights")
    weights = f"{described}  [{key['weights']}]" if described else key["weights"]
    splits = [(name, meta["splits"][name]) for name in SPLITS if name in meta["splits"]]
    classes = meta["class_names"]
    rows = [
        ("dataset", f"{meta['dataset']}  ({meta['dataset_root']}, {meta['layout']})"),
        ("backbone", str(meta["backbone"])),
        ("weights", weights),
        (
            "input",
            f"{size} px, crop {transform['crop_pct']} {transform['crop_mode']}, "
            f"{transform['interpolation']}"
            + (", JPEG draft" if transform["jpeg_draft"] else "")
            + (", tensor decoding" if "decode" in transform else ""),
        ),
        (
            "features",
            f"pool {meta['pool']}, layer {key['layer'] or 'last'}, computed in "
            f"{meta['precision']}"
            + (f" by {key['engine']}" if key.get("engine") else "")  # its own arithmetic
            + f", stored as {meta['dtype']}",
        ),
        ("rows", f"N={meta['n']}  D={meta['dim']}  task {meta['task']}"),
        (
            "splits",
            ", ".join(f"{name} {count}" for name, count in splits) + f"  ({meta['split_source']})",
        ),
    ]
    if classes:
        rows.append(("classes", f"{len(classes)}: {_few(classes)}"))
    skipped = str(meta["n_skipped"])
    if meta["skipped_examples"]:
        skipped += " (e.g. " + "; ".join(meta["skipped_examples"][:2]) + ")"
    rows.append(("skipped", skipped))
    if last:
        rate = f" at {last['images_per_s']} images/s" if last.get("rows_extracted") else ""
        rows.append(
            (
                "last run",
                f"{last.get('rows_extracted', 0)} rows extracted{rate} on "
                f"{meta['provenance'].get('device', '?')}, "
                f"{human_time(meta['updated'])}; torch {versions.get('torch', '?')}, "
                f"timm {versions.get('timm', '?')}",
            )
        )
    rows.append(
        (
            "stored",
            f"{human_bytes(meta['size_bytes'])} in {meta['shards']} shard(s), created "
            f"{human_time(meta['created'])}, key {meta['key'][:12]}",
        )
    )
    return rows


@cache_app.command()
def info(
    entry: str = typer.Argument(..., help=ENTRY_HELP),
    cache_dir: Path = opt.CacheDir,
    as_json: bool = typer.Option(
        False, "--json", help="Print everything the entries record (key fields, provenance)."
    ),
) -> None:
    """A short summary of each matching entry: backbone, weights, input, rows, splits, skips."""
    metas = [entry_info(path) for path in find_entries(cache_dir, entry)]
    if as_json:
        print(json.dumps(metas, indent=1, sort_keys=True, default=str))
        return
    for meta in metas:
        plain(meta["path"])
        for field, value in summary_rows(meta):
            plain(f"  {field:<9} {value}")


@cache_app.command()
def export(
    entry: str = typer.Argument(..., help=ENTRY_HELP),
    fmt: str = typer.Option(
        ..., "--format", "-f", help="parquet (one file) | npy (a folder: features.npy, rows.csv)."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Output file or folder (default: <dataset>-<stem>.parquet|-npy)."
    ),
    cache_dir: Path = opt.CacheDir,
) -> None:
    """Write an entry's embeddings with relpath, label and split columns, block by block."""
    paths = find_entries(cache_dir, entry)
    if len(paths) > 1:
        names = ", ".join(f"{p.parent.name}/{p.stem}" for p in paths)
        raise ArgumentError("entry", f"{entry} matches {len(paths)} entries ({names}): name one")
    written = export_entry(paths[0], fmt, out)
    plain(f"{written}: {read_meta(paths[0])['n']} rows as {fmt}")


@cache_app.command()
def verify(
    entry: str | None = typer.Argument(None, help="Entry to check (default: all)."),
    cache_dir: Path = opt.CacheDir,
) -> None:
    """Read every byte of the entries and their shards; check checksums, NaN/inf and shape."""
    listed = {e.path: e for e in list_entries(cache_dir)}
    paths = find_entries(cache_dir, entry) if entry else list(listed)
    bad = 0
    for path in paths:
        problems = verify_entry(path)
        # which feature set it is (a layer's entry is named by its model alone)
        named = f"  {listed[path].label}" if path in listed and not listed[path].error else ""
        if problems:
            bad += 1
            console().print(f"[red]FAIL[/] {escape(str(path))}{escape(named)}")
            for problem in problems:
                plain(f"  - {problem}")
        else:
            console().print(f"[green]ok[/]   {escape(str(path))}{escape(named)}")
    if bad:
        raise FeatpipeError(f"{bad} of {len(paths)} entries failed verification (listed above)")


@cache_app.command()
def rm(
    entry: str = typer.Argument(
        ..., help="Entry path, dataset/stem, stem, key prefix or dataset (:LAYER: that layer's)."
    ),
    cache_dir: Path = opt.CacheDir,
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Remove entries and their shards."""
    paths = find_entries(cache_dir, entry)
    if not yes:
        names = "\n  ".join(str(p) for p in paths)
        try:
            confirmed = typer.confirm(f"remove {len(paths)} entries?\n  {names}\n")
        except typer.Abort:  # no answer: input ended (a pipe, or Ctrl-D)
            console().print()  # end the prompt's line
            confirmed = False
        if not confirmed:
            plain("nothing removed (answer y to remove them, or pass --yes)", stderr=True)
            raise typer.Exit(1)
    freed = sum(remove_entry(p) for p in paths)
    console().print(f"removed {len(paths)} entries, freed {human_bytes(freed)}")

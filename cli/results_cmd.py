"""``featpipe results``: the tidy table of every run: filter, sort, export."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from featpipe.errors import ArgumentError, MissingError
from featpipe.runs.record import results_table, write_csv

from . import options as opt
from .render import console, plain

# What the printed table shows, in order, where any row has a value (--sort takes any column;
# the CSV has them all).
COLUMNS = (
    "run",
    "dataset",
    "backbone",
    "head",
    "protocol",
    "lr",
    "wd",
    "C",
    "alpha",
    "k",
    "temperature",
    "metric",
    "gallery",
    "seeds",
    "val_accuracy",
    "val_balanced_accuracy",
    "val_n",
    "test_accuracy",
    "test_n",
    "val_r2",
    "test_r2",
    "test_recall@1",
    "test_map@r",
    "fit_seconds",
    "chosen",
)
# Columns that are measurements (averaged over seeds), not part of a config's identity.
MEASURED = ("val_", "test_", "fit_seconds")


def results(
    runs_dir: Path = opt.RunsDir,
    where: list[str] = typer.Option(
        [], "--where", help="Keep rows where COLUMN=VALUE (several allowed, all must hold)."
    ),
    csv: Path | None = typer.Option(
        None, "--csv", help="Also write the matching rows, one per seed, to this CSV file."
    ),
    sort: str | None = typer.Option(
        None,
        help="Column to sort by, largest first, as the CSV names it (val_balanced_accuracy); "
        "default: the validation score.",
    ),
    limit: int = typer.Option(30, help="Rows to print (the CSV gets all)."),
) -> None:
    """The tidy results table of every run: one row per run × config (seeds averaged)."""
    rows = results_table(runs_dir)
    if not rows:
        raise MissingError(f"no runs found in {runs_dir}: fit something first")
    valid = sorted({column for row in rows for column in row})
    filters = _parse_where(where, valid)
    matching = [r for r in rows if all(_matches(r.get(c), v) for c, v in filters.items())]
    if not matching:
        raise ArgumentError("where", _no_match(filters, rows, runs_dir))
    sort = sort or _default_sort(matching)
    if sort not in valid and sort != "seeds":
        raise ArgumentError("sort", f"{sort}: no such column; choose one of {', '.join(valid)}")
    if csv:
        write_csv(matching, csv)
    grouped = _by_config(matching)
    grouped.sort(key=lambda r: _sort_key(r.get(sort)))
    shown = grouped[:limit]
    columns = [c for c in COLUMNS if any(r.get(c) not in (None, "") for r in shown)]
    # Settings every shown row shares move to the title, so the table keeps its width for
    # what differs (the run and the head stay: rows are read by them).
    shared = [
        c
        for c in columns
        if c not in ("run", "head") and not c.startswith(MEASURED) and c != "chosen"
        if len({str(r.get(c)) for r in shown}) == 1
    ]
    columns = [c for c in columns if c not in shared]
    where = " and ".join(f"{c}={v}" for c, v in filters.items())
    table = Table(
        title=f"results: {len(grouped)} configs ({len(matching)} rows) from {runs_dir}"
        + (f" where {where}" if filters else "")
        + f", by {sort}; scores with their 95% interval (the first seed's)"
        + "".join(f"\n{c}: {shown[0].get(c)}" for c in shared),
    )
    for column in columns:  # headers wrap at the underscores of the column names
        table.add_column(
            column.replace("_", " "),
            justify="right" if column.startswith(MEASURED) else "left",
            no_wrap=column == "run",
        )
    for row in shown:
        table.add_row(*(_scored_cell(row, c) for c in columns))
    console().print(table)
    if len(shown) < len(grouped):
        plain(f"showing {len(shown)} of {len(grouped)}: raise --limit or narrow with --where")
    if csv:
        plain(f"wrote {len(matching)} rows to {csv}")


def _parse_where(items: list[str], valid: list[str]) -> dict[str, str]:
    filters = {}
    for item in items:
        column, sep, value = item.partition("=")
        if not sep or not column:
            raise ArgumentError("where", f"{item}: write COLUMN=VALUE, e.g. head=linear")
        if column not in valid:
            raise ArgumentError(
                "where", f"{item}: no column {column!r}; choose one of {', '.join(valid)}"
            )
        filters[column] = value
    return filters


def _matches(cell: Any, value: str) -> bool:
    """``lr=1e-3`` matches a cell of 0.001: numbers compare as numbers, the rest as text."""
    if str(cell) == value:
        return True
    try:
        return isinstance(cell, int | float) and math.isclose(float(cell), float(value))
    except ValueError:
        return False


def _no_match(filters: dict[str, str], rows: list[dict[str, Any]], runs_dir: Path) -> str:
    present = []
    for column in filters:
        values = sorted({str(r.get(column)) for r in rows if r.get(column) not in (None, "")})
        shown = ", ".join(values[:12]) + (", …" if len(values) > 12 else "")
        present.append(f"{column} takes {shown}")
    asked = " ".join(f"{c}={v}" for c, v in filters.items())
    return f"{asked}: no row matches among {len(rows)} rows in {runs_dir} ({'; '.join(present)})"


def _default_sort(rows: list[dict[str, Any]]) -> str:
    columns = {c for row in rows for c in row}
    for candidate in ("val_accuracy", "val_r2"):
        if candidate in columns:
            return candidate
    return next((c for c in sorted(columns) if c.startswith("val_")), "run")


def _by_config(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run × config: measurements averaged over seeds (``±`` their spread), and
    ``chosen`` marked once per run, on the config the run selected."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        identity = tuple(
            sorted(
                (k, str(v))
                for k, v in row.items()
                if k != "seed" and k != "chosen" and not k.startswith(MEASURED)
            )
        )
        groups[identity].append(row)
    out = []
    for members in groups.values():
        merged = dict(members[0])
        merged["seeds"] = len(members)
        for column in {c for r in members for c in r if c.startswith(MEASURED)}:
            values = [r[column] for r in members if isinstance(r.get(column), int | float)]
            merged[column] = _Spread(values) if values else None
        merged["chosen"] = "✓" if any(r.get("chosen") is True for r in members) else ""
        out.append(merged)
    return out


class _Spread:
    """A measurement over seeds: sorts by its mean, prints ``mean ± std``."""

    def __init__(self, values: list[float]) -> None:
        self.mean = sum(values) / len(values)
        self.std = math.sqrt(sum((v - self.mean) ** 2 for v in values) / len(values))
        self.n = len(values)

    def __str__(self) -> str:
        return f"{self.mean:.4g}" + (f" ±{self.std:.1g}" if self.n > 1 else "")


def _sort_key(value: Any) -> tuple[int, Any]:
    """Best first: larger numbers first, then text in order, empty cells last."""
    number = value.mean if isinstance(value, _Spread) else value
    if isinstance(number, int | float) and not isinstance(number, bool):
        return (0, -number) if number == number else (2, 0)
    return (1, str(number)) if number not in (None, "") else (2, "")


def _scored_cell(row: dict[str, Any], column: str) -> str:
    """A score with its 95% interval where the row has one (``0.68 [0.53, 0.81]``: the CSV's
    ``<column>_low`` and ``<column>_high``), any other cell as it is."""
    low, high = row.get(f"{column}_low"), row.get(f"{column}_high")
    if isinstance(low, _Spread) and isinstance(high, _Spread):
        return f"{_cell(row.get(column))} [{low.mean:.2f}, {high.mean:.2f}]"
    if column.endswith("_n") and isinstance(row.get(column), _Spread):
        return f"{row[column].mean:.0f}"  # an image count, the same for every seed
    return _cell(row.get(column))


def _cell(value: Any) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)

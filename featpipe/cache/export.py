"""Embeddings out of featpipe in the formats other tools read: Parquet and NumPy.

The cache is HDF5, which h5py users read directly; everyone else (pandas, Polars, DuckDB,
Spark, a plain ``np.load``) gets a file they already know, with the columns that say what each
row is: ``relpath``, ``label`` (the class name, or the regression target; empty for an
unlabelled row), ``split`` and the feature vector.

Both writers stream the entry in row blocks (:func:`featpipe.cache.entry.iter_chunks`), so
memory stays flat however large the entry is, and both write to a temporary name that is renamed
when complete: an interrupted export never leaves a file that looks finished.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from featpipe.cache.entry import Features, iter_chunks, read_meta
from featpipe.errors import ArgumentError, MissingError, StorageError

FORMATS = ("parquet", "npy")


def _labels(chunk: Features) -> list[str | float | None]:
    """Each row's label as the user's data spells it: a class name, a target, or missing."""
    if chunk.task == "classification":
        return [chunk.class_names[i] if i >= 0 else None for i in chunk.labels.tolist()]
    if chunk.task == "regression":
        return [t if np.isfinite(t) else None for t in chunk.targets.tolist()]
    return [None] * len(chunk)


def _about(meta: dict[str, Any], chunk_classes: list[str]) -> dict[str, Any]:
    """What the exported file records about where its numbers came from."""
    return {
        "entry_key": meta["key"],
        "key_fields": meta["key_fields"],
        "dataset": meta["dataset"],
        "dataset_root": meta["dataset_root"],
        "task": meta["task"],
        "class_names": chunk_classes,
        "n": meta["n"],
        "dim": meta["dim"],
        "dtype": meta["dtype"],
    }


def default_out(entry: Path, fmt: str) -> Path:
    """``<dataset>-<stem>.parquet`` or ``<dataset>-<stem>-npy/`` in the current folder."""
    stem = f"{entry.parent.name}-{entry.stem}"
    return Path(f"{stem}.parquet") if fmt == "parquet" else Path(f"{stem}-npy")


def export_entry(
    entry: str | Path, fmt: str, out: str | Path | None = None, rows: int | None = None
) -> Path:
    """Write cache entry ``entry`` as ``fmt`` (``parquet`` or ``npy``) to ``out``; return it.

    ``parquet``: one file, columns ``relpath``, ``label``, ``split`` and ``features`` (a
    fixed-size list per row), one row group per block of ``rows``; the key fields and class
    names are in the schema metadata under ``featpipe``. ``npy``: a folder holding
    ``features.npy`` (N×D, written block by block into a memory map), ``rows.csv``
    (``relpath,label,split``) and ``meta.json``.
    """
    if fmt not in FORMATS:
        raise ArgumentError("format", f"{fmt}: choose one of {', '.join(FORMATS)}")
    entry = Path(entry)
    out = Path(out) if out is not None else default_out(entry, fmt)
    if out.exists():
        raise StorageError(f"{out} already exists: choose another output or remove it")
    meta = read_meta(entry)
    writer = _write_parquet if fmt == "parquet" else _write_npy
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    try:
        writer(tmp, meta, iter_chunks(entry, rows))
        os.replace(tmp, out)
    except OSError as exc:
        # Reading a damaged shard and writing to a full disk both raise OSError: name both.
        raise StorageError(
            f"cannot export {entry} to {out} ({exc}): check free space and the output folder, "
            "and the entry with featpipe cache verify"
        ) from None
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
    return out


def _write_parquet(path: Path, meta: dict[str, Any], chunks: Iterator[Features]) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingError("parquet export needs pyarrow: pip install pyarrow") from None
    value = pa.from_numpy_dtype(np.dtype(meta["dtype"]))
    label = pa.string() if meta["task"] == "classification" else pa.float64()
    schema = pa.schema(
        [
            ("relpath", pa.string()),
            ("label", label),
            ("split", pa.string()),
            ("features", pa.list_(value, int(meta["dim"]))),
        ]
    )
    writer = None
    try:
        for chunk in chunks:
            if writer is None:
                about = json.dumps(_about(meta, chunk.class_names))
                schema = schema.with_metadata({"featpipe": about})
                writer = pq.ParquetWriter(path, schema)
            flat = pa.array(np.ascontiguousarray(chunk.X).reshape(-1), type=value)
            table = pa.table(
                {
                    "relpath": pa.array(chunk.relpath.tolist(), pa.string()),
                    "label": pa.array(_labels(chunk), label),
                    "split": pa.array(chunk.split.tolist(), pa.string()),
                    "features": pa.FixedSizeListArray.from_arrays(flat, int(meta["dim"])),
                },
                schema=schema,
            )
            writer.write_table(table)
        if writer is None:  # an entry with no rows still gets a valid, empty file
            schema = schema.with_metadata({"featpipe": json.dumps(_about(meta, []))})
            writer = pq.ParquetWriter(path, schema)
    finally:
        if writer is not None:
            writer.close()


def _write_npy(folder: Path, meta: dict[str, Any], chunks: Iterator[Features]) -> None:
    folder.mkdir(parents=True)
    n, dim = int(meta["n"]), int(meta["dim"])
    features = np.lib.format.open_memmap(
        folder / "features.npy", mode="w+", dtype=np.dtype(meta["dtype"]), shape=(n, dim)
    )
    class_names: list[str] = []
    with (folder / "rows.csv").open("w", newline="", encoding="utf-8") as handle:
        rows = csv.writer(handle)
        rows.writerow(["relpath", "label", "split"])
        start = 0
        for chunk in chunks:
            features[start : start + len(chunk)] = chunk.X
            start += len(chunk)
            class_names = chunk.class_names
            labels = ["" if v is None else v for v in _labels(chunk)]
            rows.writerows(zip(chunk.relpath.tolist(), labels, chunk.split.tolist(), strict=True))
    features.flush()
    del features
    (folder / "meta.json").write_text(json.dumps(_about(meta, class_names), indent=1) + "\n")

"""Embeddings leave featpipe as Parquet or NumPy, streamed block by block; ``cache info`` reads
as a summary (the full record behind ``--json``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import TINY, console_script, write_image
from featpipe.cache.export import export_entry
from featpipe.errors import ArgumentError, StorageError
from featpipe.extraction.stage import extract


@pytest.fixture
def entry(tree: Path, cache_dir: Path) -> Path:
    return extract(tree, cache_dir=cache_dir, **TINY).entry


def test_parquet_export_streams_blocks_with_relpath_label_split(entry: Path, tmp_path: Path):
    from featpipe.cache.entry import load_features

    out = export_entry(entry, "parquet", tmp_path / "tiny.parquet", rows=5)
    feats = load_features(entry)
    parquet = pq.ParquetFile(out)
    assert parquet.metadata.num_row_groups == 3  # 12 rows in blocks of 5: streamed
    table = parquet.read()
    assert table.column_names == ["relpath", "label", "split", "features"]
    assert table.column("relpath").to_pylist() == feats.relpath.tolist()
    assert table.column("split").to_pylist() == feats.split.tolist()
    assert table.column("label").to_pylist() == [feats.class_names[i] for i in feats.labels]
    np.testing.assert_array_equal(np.stack(table.column("features").to_numpy(False)), feats.X)
    about = json.loads(parquet.schema_arrow.metadata[b"featpipe"])
    assert about["class_names"] == ["ants", "bees"] and about["entry_key"] == feats.meta["key"]
    with pytest.raises(StorageError, match="already exists"):
        export_entry(entry, "parquet", out)
    with pytest.raises(ArgumentError, match="format csv: choose one of parquet, npy"):
        export_entry(entry, "csv", tmp_path / "x.csv")


def test_npy_export_of_a_regression_with_an_unlabelled_row(tmp_path: Path, cache_dir: Path):
    rows = ["path,label"]
    for i in range(6):
        write_image(tmp_path / "ds" / f"{i}.png", seed=i)
        rows.append(f"{i}.png,{'NaN' if i == 5 else f'{i / 4:.2f}'}")
    (tmp_path / "ds" / "m.csv").write_text("\n".join(rows) + "\n")
    result = extract(tmp_path / "ds" / "m.csv", cache_dir=cache_dir, **TINY)
    out = export_entry(result.entry, "npy", tmp_path / "out", rows=4)
    assert sorted(p.name for p in out.iterdir()) == ["features.npy", "meta.json", "rows.csv"]
    np.testing.assert_array_equal(np.load(out / "features.npy"), result.load().X)
    with (out / "rows.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [r["relpath"] for r in table] == [f"{i}.png" for i in range(6)]
    assert table[1]["label"] == "0.25" and table[5] == {
        "relpath": "5.png",
        "label": "",
        "split": "predict",
    }
    assert json.loads((out / "meta.json").read_text())["task"] == "regression"


def test_cli_cache_export_and_its_errors(entry: Path, cache_dir: Path, tmp_path: Path):
    done = console_script(
        "cache", "export", "tiny", "--format", "npy", "--cache-dir", cache_dir, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / f"tiny-{entry.stem}-npy" / "features.npy").is_file()
    bad = console_script("cache", "export", "tiny", "--format", "csv", "--cache-dir", cache_dir)
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "error: --format csv: choose one of parquet, npy"
    )
    again = console_script(
        "cache", "export", "tiny", "-f", "npy", "--cache-dir", cache_dir, cwd=tmp_path
    )
    assert again.returncode == 2 and "already exists" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1


def test_cli_cache_info_is_a_summary_with_json_behind_an_option(entry: Path, cache_dir: Path):
    done = console_script("cache", "info", "tiny", "--cache-dir", cache_dir)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) <= 14  # was ~120 lines of key JSON
    fields = {line[:11].strip(): line[12:] for line in lines[1:]}
    assert fields["backbone"] == "test_efficientnet"
    assert fields["weights"].startswith("none (random init, seed 0)")
    assert fields["input"].startswith("32x32 px, crop 0.95 center, bicubic")
    assert fields["features"] == "pool avg, layer last, computed in fp32, stored as float32"
    assert fields["rows"] == "N=12  D=256  task classification"
    assert fields["splits"] == "train 8, val 2, test 2  (stratified)"
    assert fields["classes"] == "2: ants, bees" and fields["skipped"] == "0"
    assert fields["last run"].startswith("12 rows extracted at")
    full = console_script("cache", "info", "tiny", "--cache-dir", cache_dir, "--json")
    record = json.loads(full.stdout)
    assert record[0]["key_fields"]["model"] == "test_efficientnet"
    assert record[0]["splits"] == {"test": 2, "train": 8, "val": 2}

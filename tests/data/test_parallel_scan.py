"""The two-process scan of a large class tree finds what the serial scan finds, in order."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import featpipe.data.datasets as datasets
from conftest import make_tree, write_image
from featpipe.data.datasets import Dataset, scan
from featpipe.errors import DataError

pytestmark = pytest.mark.skipif(not datasets._fork_available(), reason="Linux with 2+ CPUs only")


def _scan_both(root: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Dataset, Dataset, int]:
    """The serial scan, the parallel one (forced), and how many process pools it made."""
    serial = scan(root)
    pools = []

    class Counted(datasets.ProcessPoolExecutor):
        def __init__(self, *args, **kwargs) -> None:
            pools.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(datasets, "PARALLEL_FILES", 0)
    monkeypatch.setattr(datasets, "ProcessPoolExecutor", Counted)
    return serial, scan(root), len(pools)


def _same(a: Dataset, b: Dataset) -> None:
    assert a.items == b.items
    assert a.rejected == b.rejected
    assert a.class_names == b.class_names and a.digest() == b.digest()


def test_class_tree_with_oddities_scans_the_same_in_two_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "data"
    for c in ("ants", "bees", "cats", "dogs", "eels"):
        for i in range(3):
            write_image(root / c / f"{c}_{i}.png", seed=i)
    write_image(root / "cats" / "deep" / "er" / "x.png", seed=9)  # nested folders
    (root / "bees" / "notes.txt").write_text("not an image")
    (root / "dogs" / "loop").symlink_to(".")  # a loop inside the second half
    (root / "eels" / "gone.png").symlink_to("nowhere.png")
    serial, parallel, pools = _scan_both(root, monkeypatch)
    assert pools == 1
    _same(serial, parallel)
    assert {r.relpath for r in parallel.rejected} == {
        "bees/notes.txt",
        "dogs/loop",
        "eels/gone.png",
    }


def test_split_layout_scans_the_same_in_two_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "hymenoptera"
    make_tree(root, split="train", per_class=4)
    make_tree(root, split="val", per_class=2, seed=1)
    serial, parallel, pools = _scan_both(root, monkeypatch)
    assert pools == 1
    _same(serial, parallel)
    assert parallel.split_counts() == {"train": 8, "val": 4}


def test_a_folder_reached_from_both_halves_falls_back_to_one_serial_walk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "data"
    for c in ("ants", "bees", "cats", "dogs"):
        for i in range(2):
            write_image(root / c / "sub" / f"{c}_{i}.png", seed=i)
    os.symlink(root / "ants" / "sub", root / "dogs" / "also")  # dogs (2nd half) reaches ants/sub
    serial, parallel, pools = _scan_both(root, monkeypatch)
    assert pools == 1
    _same(serial, parallel)
    assert any(
        r.relpath == "dogs/also" and "same folder as ants/sub" in r.reason
        for r in parallel.rejected
    )


def test_an_empty_class_is_the_same_error_in_two_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "data"
    for c in ("ants", "bees", "cats"):
        write_image(root / c / f"{c}.png", seed=0)
    (root / "dogs").mkdir()
    (root / "dogs" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="dogs has no images") as serial:
        scan(root)
    monkeypatch.setattr(datasets, "PARALLEL_FILES", 0)
    with pytest.raises(DataError, match="dogs has no images") as parallel:
        scan(root)
    assert str(serial.value) == str(parallel.value)

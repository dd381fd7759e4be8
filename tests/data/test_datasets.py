from __future__ import annotations

import math
from pathlib import Path

import pytest

from conftest import make_tree, write_image
from featpipe.data.datasets import scan
from featpipe.data.splits import stratified_split
from featpipe.errors import FeatpipeError


def test_imagefolder_without_splits_gets_a_stratified_split(tree: Path) -> None:
    ds = scan(tree)
    assert ds.layout == "imagefolder" and ds.task == "classification"
    assert ds.class_names == ["ants", "bees"]
    assert len(ds) == 12
    per_class = {(i.label, i.split) for i in ds.items}
    assert {(0, "train"), (0, "val"), (0, "test"), (1, "train")} <= per_class
    assert scan(tree).digest() == ds.digest()  # deterministic


def test_split_folders_like_hymenoptera(tmp_path: Path) -> None:
    root = tmp_path / "hymenoptera_data"
    make_tree(root, split="train", per_class=4)
    make_tree(root, split="val", per_class=2, seed=1)
    ds = scan(root)
    assert ds.layout == "imagefolder-splits" and ds.split_source == "folders"
    assert ds.split_counts() == {"train": 8, "val": 4}
    assert ds.items[0].relpath.startswith("train/ants/")


def test_csv_classification_regression_and_split_column(tmp_path: Path) -> None:
    for i in range(4):
        write_image(tmp_path / "img" / f"{i}.png", seed=i)
    (tmp_path / "cls.csv").write_text(
        "path,label,split\nimg/0.png,cat,train\nimg/1.png,dog,train\nimg/2.png,cat,val\n"
        "img/3.png,dog,test\n"
    )
    ds = scan(tmp_path / "cls.csv")
    assert ds.task == "classification" and ds.class_names == ["cat", "dog"]
    assert [i.split for i in ds.items] == ["train", "train", "val", "test"]
    (tmp_path / "reg.csv").write_text(
        "path,label\nimg/0.png,0.0\nimg/1.png,0.3333\nimg/2.png,1.0\nimg/3.png,0.6667\n"
        "img/missing.png,1.0\n"
    )
    reg = scan(tmp_path / "reg.csv")
    assert reg.task == "regression" and reg.class_names == []
    assert [i.target for i in reg.items] == [0.0, 0.3333, 1.0, 0.6667]
    assert reg.rejected[0].relpath == "img/missing.png" and "not found" in reg.rejected[0].reason


def test_numeric_integer_labels_are_classes_in_numeric_order(tmp_path: Path) -> None:
    rows = ["path,label"]
    for i, label in enumerate([2, 10, 1, 2]):
        write_image(tmp_path / f"{i}.png", seed=i)
        rows.append(f"{i}.png,{label}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    ds = scan(tmp_path / "m.csv")
    assert ds.task == "classification" and ds.class_names == ["1", "2", "10"]


def test_unlabelled_folder(tmp_path: Path) -> None:
    for i in range(3):
        write_image(tmp_path / "new" / f"{i}.jpg", seed=i, fmt="JPEG")
    ds = scan(tmp_path / "new")
    assert ds.task == "none" and ds.layout == "unlabelled" and len(ds) == 3
    assert all(math.isnan(i.target) and i.label == -1 for i in ds.items)


def test_non_image_files_are_recorded_not_dropped(tree: Path) -> None:
    (tree / "ants" / "notes.txt").write_text("not an image")
    ds = scan(tree)
    assert [r.relpath for r in ds.rejected] == ["ants/notes.txt"]
    assert "not an image" in ds.rejected[0].reason


def test_empty_class_folder_and_empty_dataset_are_errors(tree: Path, tmp_path: Path) -> None:
    (tree / "wasps").mkdir()
    with pytest.raises(FeatpipeError, match=r"class folder .*wasps has no images"):
        scan(tree)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FeatpipeError, match="no images found"):
        scan(tmp_path / "empty")
    with pytest.raises(FeatpipeError, match="does not exist"):
        scan(tmp_path / "nowhere")


def test_stratified_split_is_stratified_and_stable_under_growth() -> None:
    paths = [f"c{c}/{i}.png" for c in range(3) for i in range(100)]
    labels = [c for c in range(3) for _ in range(100)]
    splits = stratified_split(paths, labels)
    for c in range(3):
        mine = [s for s, label in zip(splits, labels, strict=True) if label == c]
        assert mine.count("val") == 15 and mine.count("test") == 15
    grown = stratified_split([*paths, "c0/new.png"], [*labels, 0])
    moved = sum(a != b for a, b in zip(splits, grown, strict=False))
    assert moved <= 2  # adding one image moves at most a boundary item

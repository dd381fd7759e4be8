from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from conftest import make_tree, write_image
from featpipe.data.datasets import DataWarning, scan
from featpipe.data.splits import stratified_split
from featpipe.errors import ArgumentError, DataError, FeatpipeError


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


# --- Bad input (issue 11): nothing wrong gets in, nothing right gets lost --------------------


def _manifest(folder: Path, text: str, n_images: int = 4) -> Path:
    for i in range(n_images):
        write_image(folder / "img" / f"{i}.png", seed=i)
    path = folder / "m.csv"
    path.write_text(text)
    return path


def test_manifest_paths_outside_its_folder_are_refused_unless_allowed(tmp_path: Path) -> None:
    outside = write_image(tmp_path / "outside.png", seed=9)
    manifest = _manifest(
        tmp_path / "ds",
        f"path,label\nimg/0.png,cat\n../outside.png,dog\n{outside},dog\nimg/1.png,dog\n",
    )
    refused = r"allow_outside is off, and .*m.csv names files outside .* on lines 3, 4"
    with pytest.raises(ArgumentError, match=refused) as e:
        scan(manifest)
    assert e.value.param == "allow_outside" and "../outside.png" in str(e.value)
    with pytest.warns(DataWarning, match=r"dropped 1 exact duplicate row\(s\) \(line 4\)"):
        ds = scan(manifest, allow_outside=True)
    assert [i.relpath for i in ds.items] == ["img/0.png", str(outside.resolve()), "img/1.png"]
    assert all((ds.root / i.relpath).is_file() for i in ds.items)


def test_one_file_under_two_spellings_is_one_item(tmp_path: Path) -> None:
    manifest = _manifest(
        tmp_path, "path,label\nimg/0.png,cat\n./img/../img/0.png,cat\nimg/1.png,dog\n"
    )
    with pytest.warns(DataWarning, match=r"m.csv: dropped 1 exact duplicate row\(s\) \(line 3\)"):
        ds = scan(manifest)
    assert [i.relpath for i in ds.items] == ["img/0.png", "img/1.png"]
    (tmp_path / "img" / "same.png").symlink_to("0.png")
    manifest.write_text("path,label\nimg/0.png,cat\nimg/same.png,dog\nimg/1.png,dog\n")
    with pytest.raises(
        DataError,
        match=r"lines 2 and 3 list the same file img/0.png with "
        r"different labels \(cat and dog\): keep one row per file",
    ):
        scan(manifest)


def test_same_image_in_two_splits_is_refused(tmp_path: Path) -> None:
    manifest = _manifest(
        tmp_path, "path,label,split\nimg/0.png,0,train\nimg/1.png,1,train\nimg/0.png,0,test\n"
    )
    with pytest.raises(
        DataError,
        match=r"lines 2 and 4 .* img/0.png with different splits "
        r"\(train and test\)",
    ):
        scan(manifest)


def test_missing_labels_are_unlabelled_rows_never_a_class(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, "path,label\nimg/0.png,NaN\nimg/1.png,nan\nimg/2.png,\n")
    ds = scan(manifest)
    assert ds.task == "none" and ds.class_names == [] and ds.split_counts() == {"predict": 3}
    with pytest.raises(DataError, match=r"has no labels .* nothing to fit regression on"):
        scan(manifest, task="regression")
    rows = ["path,label"] + [f"img/{i}.png,{i / 3:.4f}" for i in range(7)] + ["img/7.png,NaN"]
    manifest.write_text("\n".join(rows) + "\n")
    for i in range(8):
        write_image(tmp_path / "img" / f"{i}.png", seed=i)
    reg = scan(manifest)
    assert reg.task == "regression" and reg.class_names == []
    assert reg.split_counts()["predict"] == 1 and len(reg) == 8
    assert sum(v for k, v in reg.split_counts().items() if k != "predict") == 7
    unlabelled = [i for i in reg.items if i.split == "predict"]
    assert [i.relpath for i in unlabelled] == ["img/7.png"] and math.isnan(unlabelled[0].target)
    manifest.write_text("path,label\nimg/0.png,1\nimg/1.png,\nimg/2.png,2\nimg/3.png,NA\n")
    cls = scan(manifest)
    assert cls.task == "classification" and cls.class_names == ["1", "2"]
    assert [(i.label, i.split) for i in cls.items if i.split == "predict"] == [(-1, "predict")] * 2


def test_infinite_label_is_refused(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, "path,label\nimg/0.png,0.5\nimg/1.png,inf\n")
    with pytest.raises(DataError, match=r"line 3: label 'inf' is not a finite number"):
        scan(manifest)


def test_directory_symlink_loops_are_read_once_and_reported(tree: Path) -> None:
    (tree / "ants" / "loop").symlink_to(".")
    (tree / "bees" / "deep").mkdir()
    (tree / "bees" / "deep" / "up").symlink_to("../..")
    ds = scan(tree)
    assert len(ds) == 12 and len({i.relpath for i in ds.items}) == 12
    reasons = {r.relpath: r.reason for r in ds.rejected}
    assert reasons["ants/loop"].startswith("directory symlink loop: leads back to ants")
    assert reasons["bees/deep/up"].startswith("directory symlink loop: leads back to .")
    (tree / "loop").symlink_to(".")  # at the top: not a class either
    assert scan(tree).class_names == ["ants", "bees"]


def test_broken_and_looping_file_symlinks_are_recorded(tree: Path) -> None:
    (tree / "ants" / "gone.png").symlink_to("nowhere.png")
    (tree / "bees" / "a.png").symlink_to("b.png")
    (tree / "bees" / "b.png").symlink_to("a.png")
    reasons = {r.relpath: r.reason for r in scan(tree).rejected}
    assert reasons == {
        "ants/gone.png": "broken symlink: its target nowhere.png does not exist",
        "bees/a.png": "symlink loop: the link leads back to itself, not to a file",
        "bees/b.png": "symlink loop: the link leads back to itself, not to a file",
    }
    manifest = tree / "m.csv"
    manifest.write_text("path,label\nants/ants_000.png,a\nants/gone.png,a\nbees/a.png,b\n")
    reasons = {r.relpath: r.reason for r in scan(manifest).rejected}
    assert reasons["ants/gone.png"].startswith("broken symlink")
    assert reasons["bees/a.png"].startswith("symlink loop")


def test_unlistable_folder_is_recorded(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests run as root, who can list a chmod 000 folder: simulate the refusal instead.
    make_tree(tree / "bees" / "private", classes=("x",), per_class=2)
    real = os.scandir

    def scandir(path):
        if Path(path).name == "private":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    ds = scan(tree)
    assert len(ds) == 12
    assert {r.relpath: r.reason for r in ds.rejected} == {
        "bees/private": "cannot list folder (Permission denied): its files are unread"
    }

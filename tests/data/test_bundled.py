"""Bundled real datasets are written as real image files that scan like user folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featpipe.data.bundled import FASHION_DIR, prepare_dataset, write_elpv_soft_labels
from featpipe.data.datasets import scan
from featpipe.data.soft_labels import read_soft_labels
from featpipe.errors import FeatpipeError


def test_elpv_classification_tree_regression_csv_and_soft_labels(tmp_path: Path) -> None:
    root = prepare_dataset("elpv", tmp_path / "elpv", per_class=5)
    ds = scan(root)
    assert ds.class_names == ["defective", "functional"] and len(ds) == 10
    img = Image.open(root / ds.items[0].relpath)
    assert img.size == (300, 300) and img.mode == "L"
    assert np.asarray(img).std() > 10  # a real photo, not a blank
    reg = scan(root / "defect_probability.csv")
    assert reg.task == "regression" and len(reg) == 10
    assert {i.target >= 0.5 for i in reg.items} == {True, False}
    soft = read_soft_labels(root / "soft_labels.csv", ds)  # [defective, functional]
    assert len(soft.probabilities) == 10
    for item in reg.items:
        np.testing.assert_allclose(soft.probabilities[item.relpath], [item.target, 1 - item.target])
    written = (root / "soft_labels.csv").read_bytes()
    (root / "soft_labels.csv").unlink()  # a tree prepared before the file existed
    assert write_elpv_soft_labels(root).read_bytes() == written
    assert prepare_dataset("elpv", root, per_class=5) == root  # idempotent
    with pytest.raises(FeatpipeError, match="already holds another prepared dataset"):
        prepare_dataset("elpv", root, per_class=6)


def test_mnist_5k_has_no_split_folders(tmp_path: Path) -> None:
    ds = scan(prepare_dataset("mnist-5k", tmp_path / "digits", per_class=20))
    assert ds.class_names == [str(d) for d in range(10)] and len(ds) == 200
    assert ds.split_source == "stratified" and ds.split_counts()["train"] == 140


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Debian dataset-fashion-mnist not installed")
def test_fashion_mnist_keeps_train_and_test_folders(tmp_path: Path) -> None:
    ds = scan(prepare_dataset("fashion-mnist", tmp_path / "fm", per_class=2))
    assert ds.split_counts() == {"test": 20, "train": 20}
    assert "Ankle_boot" in ds.class_names and ds.split_source == "folders"

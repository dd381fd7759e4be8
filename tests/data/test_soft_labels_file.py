"""Soft labels are read once and checked line by line against the dataset they label."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import make_tree
from featpipe.data.datasets import scan
from featpipe.data.soft_labels import read_soft_labels
from featpipe.errors import ArgumentError


@pytest.fixture
def dataset(tmp_path: Path):
    return scan(make_tree(tmp_path / "imgs", classes=("ants", "bees"), per_class=3))


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_columns_in_any_order_come_back_in_the_dataset_class_order(dataset, tmp_path) -> None:
    csv = write(
        tmp_path / "soft.csv",
        "path,bees,ants\nants/ants_000.png,0.25,0.75\n./bees/../bees/bees_001.png,1,0\n",
    )
    soft = read_soft_labels(csv, dataset)
    assert dataset.class_names == ["ants", "bees"]
    np.testing.assert_array_equal(soft.probabilities["ants/ants_000.png"], [0.75, 0.25])
    np.testing.assert_array_equal(soft.probabilities["bees/bees_001.png"], [0.0, 1.0])
    items = {item.relpath: item for item in dataset.items}
    listed = [items["ants/ants_000.png"], items["bees/bees_002.png"], items["ants/ants_001.png"]]
    # the unlisted images keep their one-hot labels
    np.testing.assert_array_equal(soft.targets(listed, 2), [[0.75, 0.25], [0.0, 1.0], [1.0, 0.0]])
    assert soft.covered(listed) == 1 and len(soft.sha256) == 64


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("path,ants\nants/ants_000.png,1\n", "header ['path', 'ants']: write path, then each"),
        ("file,ants,bees\nants/ants_000.png,1,0\n", "header ['file', 'ants', 'bees']"),
        ("path,ants,bees\nants/nope.png,1,0\n", "line 2: ants/nope.png is not an image of"),
        ("path,ants,bees\nants/ants_000.png,0.5,0.6\n", "line 2: the probabilities sum to 1.1"),
        ("path,ants,bees\nants/ants_000.png,1.5,-0.5\n", "line 2: probabilities must be finite"),
        ("path,ants,bees\nants/ants_000.png,x,1\n", "line 2: ['x', '1'] are not all numbers"),
        ("path,ants,bees\nants/ants_000.png,1\n", "line 2: 2 values for 3 columns"),
        (
            "path,ants,bees\nants/ants_000.png,1,0\nants/ants_000.png,0,1\n",
            "line 3: ants/ants_000.png is listed twice",
        ),
        ("path,ants,bees\n", "lists no images"),
    ],
)
def test_a_bad_file_is_refused_naming_the_file_and_the_line(
    text, message, dataset, tmp_path
) -> None:
    csv = write(tmp_path / "soft.csv", text)
    with pytest.raises(ArgumentError) as caught:
        read_soft_labels(csv, dataset)
    assert str(caught.value).startswith(f"soft_labels {csv}: ") and message in str(caught.value)


def test_an_unreadable_or_binary_file_and_a_regression_are_refused(dataset, tmp_path) -> None:
    with pytest.raises(ArgumentError, match="cannot read it"):
        read_soft_labels(tmp_path / "missing.csv", dataset)
    binary = tmp_path / "soft.csv"
    binary.write_bytes(b"path,ants,bees\n\xff\xfe\n")
    with pytest.raises(ArgumentError, match="is not UTF-8 text"):
        read_soft_labels(binary, dataset)
    rows = [f"{item.relpath},{i}.5" for i, item in enumerate(dataset.items)]
    manifest = write(dataset.root / "values.csv", "path,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(ArgumentError, match="is not a classification"):
        read_soft_labels(binary, scan(manifest))

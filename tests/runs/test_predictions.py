"""predictions.npz: per-image outputs round-trip without pickle; pairing by image paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from featpipe.errors import DataError
from featpipe.runs.predictions import RunPredictions, SplitOutputs, paired


def recorded() -> RunPredictions:
    rng = np.random.default_rng(0)
    paths = np.array([f"img/{i}.png" for i in range(20)])
    y = rng.integers(0, 2, 20)
    out = rng.normal(size=(20, 2)).astype(np.float32)
    return RunPredictions("classification", 2, {"test": SplitOutputs(paths, y, out)})


def test_round_trip_reads_the_same_arrays_and_predictions(tmp_path: Path) -> None:
    original = recorded()
    original.save(tmp_path / "p.npz")
    back = RunPredictions.load(tmp_path / "p.npz")
    assert back.task == "classification" and back.n_classes == 2
    a, b = original.splits["test"], back.splits["test"]
    assert np.array_equal(a.relpath, b.relpath) and np.array_equal(a.y, b.y)
    assert np.array_equal(a.outputs, b.outputs) and b.outputs.dtype == np.float32
    p = back.on("test")
    assert p is not None and np.array_equal(p.pred, a.outputs.argmax(axis=1))
    assert back.on("val") is None
    with np.load(tmp_path / "p.npz", allow_pickle=False) as data:  # arrays only
        assert {k for k in data.files} >= {"test/relpath", "test/y", "test/outputs"}


def test_pairing_needs_the_same_images_in_the_same_order() -> None:
    part = recorded().splits["test"]
    assert paired(part, part)
    assert not paired(part, SplitOutputs(part.relpath[::-1], part.y, part.outputs))
    assert not paired(part, SplitOutputs(part.relpath[:5], part.y[:5], part.outputs[:5]))


def test_a_damaged_file_names_itself(tmp_path: Path) -> None:
    bad = tmp_path / "predictions.npz"
    bad.write_bytes(b"not an npz")
    with pytest.raises(DataError, match=r"predictions\.npz is damaged"):
        RunPredictions.load(bad)


def test_outputs_align_to_another_run_s_order_of_the_same_images() -> None:
    part = recorded().splits["test"]
    order = np.random.default_rng(1).permutation(len(part.relpath))
    shuffled = part.relpath[order]
    back = part.aligned(shuffled)
    assert back is not None and np.array_equal(back.relpath, shuffled)
    assert np.array_equal(back.y, part.y[order])
    assert np.array_equal(back.outputs, part.outputs[order])
    assert paired(back, SplitOutputs(shuffled, part.y[order], part.outputs))
    assert part.aligned(part.relpath[:-1]) is None  # an image fewer
    other = part.relpath.copy()
    other[3] = "img/elsewhere.png"
    assert part.aligned(other) is None  # another image
    twice = part.relpath.copy()
    twice[3] = twice[4]
    assert part.aligned(twice) is None  # an image twice

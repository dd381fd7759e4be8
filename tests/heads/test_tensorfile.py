"""Heads saved block by block are safetensors files that safetensors itself reads back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from featpipe.errors import StorageError
from featpipe.heads.tensorfile import TensorBlocks, write_safetensors


def test_blocks_and_tensors_read_back_as_written(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(103, 7)).astype(np.float32)
    tensors = {
        "bank": TensorBlocks(
            bank.shape, bank.dtype, lambda: (bank[s : s + 10] for s in range(0, 103, 10))
        ),
        "targets": torch.arange(103),
        "mean": rng.normal(size=7),  # float64
        "flags": torch.tensor([True, False, True]),
        "empty": torch.empty(0, 7),
        "odd": np.arange(3, dtype=np.int16),  # a header padded to 8 bytes, data 6 bytes
    }
    path = tmp_path / "head.safetensors"
    write_safetensors(path, tensors)
    back = load_file(str(path))
    assert set(back) == set(tensors)
    np.testing.assert_array_equal(back["bank"].numpy(), bank)
    assert back["targets"].dtype == torch.int64 and back["targets"].tolist() == list(range(103))
    np.testing.assert_array_equal(back["mean"].numpy(), tensors["mean"])
    assert back["flags"].tolist() == [True, False, True] and back["empty"].shape == (0, 7)
    assert back["odd"].dtype == torch.int16 and back["odd"].tolist() == [0, 1, 2]
    header = int.from_bytes(path.read_bytes()[:8], "little")
    assert header % 8 == 0


def test_blocks_that_do_not_fill_their_shape_are_refused(tmp_path: Path) -> None:
    short = np.zeros((4, 3), np.float32)
    blocks = TensorBlocks((5, 3), short.dtype, lambda: [short])
    with pytest.raises(StorageError, match=r"bank gave 48 bytes of the 60 its shape \(5, 3\)"):
        write_safetensors(tmp_path / "x.safetensors", {"bank": blocks})

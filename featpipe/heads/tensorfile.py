"""Saving a head's tensors as one safetensors file, a tensor larger than memory block by block.

A head is saved as safetensors (no pickle). ``safetensors.torch.save_file`` takes every tensor
in memory and copies each into one bytes object; a k-NN head fitted on a cache streamed from
disk (:mod:`featpipe.fitting.streaming`) has a bank as large as the entry's train features,
which the memory budget says not to hold. :func:`write_safetensors` writes the same format (an
8-byte little-endian header length, the JSON header padded with spaces to 8 bytes, then every
tensor's bytes in header order, with no gaps) from :class:`TensorBlocks` as well as from
tensors, so the streamed head is written a block at a time and read back by
``safetensors.torch.load_file`` like any other (the tests hold the two to each other).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from featpipe.errors import StorageError

# numpy dtype → safetensors dtype name (the ones heads hold)
DTYPES = {
    np.dtype(np.float64): "F64",
    np.dtype(np.float32): "F32",
    np.dtype(np.float16): "F16",
    np.dtype(np.int64): "I64",
    np.dtype(np.int32): "I32",
    np.dtype(np.int16): "I16",
    np.dtype(np.int8): "I8",
    np.dtype(np.uint8): "U8",
    np.dtype(np.bool_): "BOOL",
}


@dataclass(frozen=True)
class TensorBlocks:
    """A tensor given as its leading-axis blocks, in order: ``blocks()`` yields arrays whose
    rows, stacked, make ``shape`` (read once, when the file is written)."""

    shape: tuple[int, ...]
    dtype: np.dtype
    blocks: Callable[[], Iterable[np.ndarray]]

    @classmethod
    def of(cls, value: torch.Tensor | np.ndarray) -> TensorBlocks:
        """A tensor in memory as one block."""
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
        return cls(tuple(array.shape), array.dtype, lambda: [array])

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


def write_safetensors(
    path: Path, tensors: Mapping[str, torch.Tensor | np.ndarray | TensorBlocks]
) -> None:
    """Write ``tensors`` to ``path`` in the safetensors format, each from its blocks."""
    parts = {
        name: value if isinstance(value, TensorBlocks) else TensorBlocks.of(value)
        for name, value in tensors.items()
    }
    header, offset = {}, 0
    for name, part in parts.items():
        dtype = np.dtype(part.dtype)
        if dtype not in DTYPES:
            raise StorageError(f"{path}: cannot save {name} as safetensors ({dtype})")
        header[name] = {
            "dtype": DTYPES[dtype],
            "shape": list(part.shape),
            "data_offsets": [offset, offset + part.nbytes],
        }
        offset += part.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(text)) + text)
        for name, part in parts.items():
            little = np.dtype(part.dtype).newbyteorder("<")
            written = 0
            for block in part.blocks():
                data = np.ascontiguousarray(block, dtype=little)
                out.write(data.tobytes())
                written += data.nbytes
            if written != part.nbytes:
                raise StorageError(
                    f"{path}: {name} gave {written} bytes of the {part.nbytes} its shape "
                    f"{part.shape} needs (did the data change while it was written?)"
                )

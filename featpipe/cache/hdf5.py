"""HDF5 files as the cache writes them: built in memory, sealed with a checksum.

HDF5 itself is not crash-safe: a process killed while h5py holds a file open for writing can
leave it unreadable, and a full disk under h5py's writes ends in tracebacks from its destructors
(or a segfault). So h5py never writes to disk here: it builds a file in memory
(:func:`in_memory_file`), and its bytes (:func:`file_image`) go to disk through
:func:`~featpipe.cache.durable.atomic_write`.

HDF5's fletcher32 filter checks feature chunks on read, but nothing checks attributes and small
datasets: :func:`checksum` covers them, so that an edited label, split or row key is refused.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import h5py
import numpy as np

_STR = h5py.string_dtype("utf-8")


def in_memory_file() -> h5py.File:
    """An HDF5 file that lives in memory: h5py builds it, :func:`file_image` takes its bytes."""
    return h5py.File(f"featpipe-{uuid.uuid4().hex}.h5", "w", driver="core", backing_store=False)


def file_image(f: h5py.File) -> bytes:
    f.flush()
    return f.id.get_file_image()


def write_strings(group: h5py.Group, name: str, values: list[str]) -> None:
    group.create_dataset(name, data=np.array(values, dtype=object), dtype=_STR)


def decode_all(values: list[bytes]) -> list[str]:
    """A string column's UTF-8 values decoded in one call (``asstr`` decodes one by one)."""
    return b"\0".join(values).decode().split("\0") if values else []


def _attr_text(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return repr(value.tolist())
    return repr(value.item() if hasattr(value, "item") else value)


Column = list[str] | np.ndarray  # a string column as written, or a numeric one


def write_columns(group: h5py.Group, columns: dict[str, Column]) -> None:
    """Write each column: a list of strings as UTF-8 strings, an array as itself."""
    for name, values in columns.items():
        if isinstance(values, list):
            write_strings(group, name, values)
        else:
            group[name] = values


def checksum(
    f: h5py.Group, read: dict[str, Any] | None = None, written: dict[str, Column] | None = None
) -> str:
    """SHA-256 of a file's attributes and every dataset but ``features`` (whose chunks carry
    fletcher32 checksums): the cheap check against edited or damaged rows. ``read``, if given,
    receives every dataset's values as read, so that the caller need not read them again.
    ``written``: columns as :func:`write_columns` wrote them, hashed from memory rather than
    read back (the same bytes: 0.2 s of a 200,000-row entry's commit)."""
    written = written or {}
    h = hashlib.sha256()
    for name in sorted(f.attrs):
        if name != "checksum":
            h.update(f"@{name}={_attr_text(f.attrs[name])}\n".encode())
    names: list[str] = []
    f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    for name in sorted(set(names) - {"features"}):
        ds = f[name]
        if isinstance(written.get(name), list) and ds.shape:
            data = "\0".join(written[name]).encode()  # what the join below gives when read
            h.update(f"{name}:{ds.dtype.str}:{ds.shape}:{len(data)}\n".encode())
            h.update(data)
            continue
        values = np.asarray(written[name], ds.dtype) if name in written else ds[()]
        if read is not None:
            read[name] = values
        if h5py.check_string_dtype(ds.dtype) is None:
            data = np.ascontiguousarray(values).tobytes()
        elif ds.shape:
            data = b"\0".join(values.tolist())  # the stored UTF-8, as asstr().encode() gives
        else:
            data = ds.asstr()[()].encode()
        h.update(f"{name}:{ds.dtype.str}:{ds.shape}:{len(data)}\n".encode())
        h.update(data)
    return h.hexdigest()


def seal_checksum(f: h5py.File, written: dict[str, Column] | None = None) -> None:
    f.attrs["checksum"] = checksum(f, written=written)


def checksum_ok(f: h5py.File, read: dict[str, Any] | None = None) -> bool:
    return "checksum" in f.attrs and f.attrs["checksum"] == checksum(f, read)

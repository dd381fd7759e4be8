"""The cache directory as a whole: where entries live, what is in them, and request memos.

A *request memo* remembers which key a request (model name, ``--weights``, ``--pool``, … as
typed, plus the weights file's size and mtime and the library versions) resolved to, together
with the settings the speed probe chose. With it, a rerun that hits the cache needs neither
torch nor timm (about 7 s of imports on a small machine): it scans the dataset, reads one JSON
file and compares one digest.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from featpipe.backbones.spec import BackboneSpec
from featpipe.cache.durable import atomic_write, remove_stale_temporaries
from featpipe.cache.entry import entry_meta, open_entry, parts_dir, size_on_disk
from featpipe.cache.key import KeyFields, entry_stem
from featpipe.errors import MissingError, StorageError

DEFAULT_CACHE_DIR = Path(os.environ.get("FEATPIPE_CACHE", "cache"))


def ensure_writable(cache_dir: Path) -> Path:
    """Create the cache directory and prove we can write there, before any work is done."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        probe = cache_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StorageError(
            f"cache directory {cache_dir} is not writable ({exc.strerror or exc}): "
            "pass --cache-dir DIR or fix its permissions"
        ) from None
    return cache_dir


def entry_path(cache_dir: Path, dataset: str, model_slug: str, digest: str) -> Path:
    return cache_dir / dataset / f"{entry_stem(model_slug, digest)}.h5"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def machine_signature() -> str:
    """What a speed probe's answer depends on: CPU model, core count, GPU presence."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next((ln.split(":", 1)[1].strip() for ln in handle if "model name" in ln), cpu)
    except OSError:
        pass
    gpu = "gpu" if Path("/dev/nvidia0").exists() else "nogpu"
    return f"{platform.node()}|{cpu}|{os.cpu_count()}|{gpu}"


@dataclass(frozen=True)
class Request:
    """An extract request: the backbone spec and run options as typed, plus what could silently
    change their meaning behind the same strings (``weights_detail``: the weights file's size and
    mtime, or the offline package's version; see ``WeightsChoice.detail``). The digest leaves
    the ``--weights`` spelling out and keeps what it resolved to, so ``auto`` that finds the
    offline package and ``offline`` (or a file by two paths) share one memo and one fast hit."""

    spec: BackboneSpec
    weights_detail: str
    precision: str
    engine: str
    batch_size: int | None
    dtype: str
    device: str

    @property
    def digest(self) -> str:
        fields = asdict(self)
        del fields["spec"]["weights"]  # weights_detail says what they resolved to
        fields["versions"] = [_version(d) for d in ("featpipe", "torch", "torchvision", "timm")]
        # What this machine chose (a probe), or may refuse (an engine for the device auto finds)
        if "auto" in (self.precision, self.engine, self.device) or self.batch_size is None:
            fields["machine"] = machine_signature()
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _memo_path(cache_dir: Path, request: Request) -> Path:
    return cache_dir / ".requests" / f"{request.digest[:32]}.json"


def recall(cache_dir: Path, request: Request) -> tuple[KeyFields, dict[str, Any]] | None:
    path = _memo_path(cache_dir, request)
    try:
        memo = json.loads(path.read_text())
        return KeyFields(**memo["fields"]), memo["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remember(
    cache_dir: Path, request: Request, fields: KeyFields, settings: dict[str, Any]
) -> None:
    path = _memo_path(cache_dir, request)
    path.parent.mkdir(parents=True, exist_ok=True)
    memo = {"fields": asdict(fields), "settings": settings}
    atomic_write(path, json.dumps(memo).encode())
    remove_stale_temporaries(path.parent)


@dataclass
class EntrySummary:
    path: Path
    dataset: str
    backbone: str
    n: int
    dim: int
    dtype: str
    precision: str
    pool: str
    size_bytes: int
    created: float
    key: str
    error: str = ""
    layer: str | None = None  # the layer(s) its features come from; None: the model's output

    @property
    def label(self) -> str:
        """``MODEL`` or ``MODEL:LAYER``, as backbone specs name a layer's feature set."""
        return self.backbone if self.layer is None else f"{self.backbone}:{self.layer}"


def list_entries(cache_dir: Path) -> list[EntrySummary]:
    """Every entry under ``cache_dir``; unreadable ones are listed with their error."""
    rows = []
    for path in sorted(cache_dir.glob("*/*.h5")):
        try:
            with open_entry(path) as f:
                a = f.attrs
                rows.append(
                    EntrySummary(
                        path,
                        str(a["dataset"]),
                        str(a["backbone"]),
                        int(a["n"]),
                        int(a["dim"]),
                        str(a["dtype"]),
                        str(a["precision"]),
                        str(a["pool"]),
                        size_on_disk(path),
                        float(a["created"]),
                        str(a["key"]),
                        layer=json.loads(a["key_fields"])["layer"],
                    )
                )
        except StorageError as exc:
            rows.append(
                EntrySummary(
                    path,
                    path.parent.name,
                    path.stem,
                    0,
                    0,
                    "",
                    "",
                    "",
                    size_on_disk(path),
                    path.stat().st_mtime,
                    "",
                    str(exc),
                )
            )
    return rows


def find_entries(cache_dir: Path, selector: str) -> list[Path]:
    """Entries matching a path, ``dataset/stem``, ``dataset/backbone`` (the stem without its
    key, e.g. ``elpv/tv_mobilenet_v2``), a stem, a key prefix, or a dataset name. Any of these
    but a path may end in ``:LAYER`` to select the entries of that layer only
    (``elpv/vit_small_patch16_224:-2``; a stem never holds a colon)."""
    direct = Path(selector)
    if direct.suffix == ".h5" and direct.is_file():
        return [direct]
    named, colon, layer = selector.partition(":")
    found = []
    for path in sorted(cache_dir.glob("*/*.h5")):
        backbone, _, stem_key = path.stem.rpartition("-")
        names = (f"{path.parent.name}/{path.stem}", f"{path.parent.name}/{backbone}", path.stem)
        if named in (*names, path.parent.name) or (
            len(named) >= 4 and stem_key.startswith(named[:8])
        ):
            found.append(path)
    if colon:
        found = [path for path in found if _layer(path) == layer]
    if not found:
        raise MissingError(
            f"no cache entry matches '{selector}' in {cache_dir}: see featpipe cache ls"
        )
    return found


def _layer(path: Path) -> str | None:
    """The layer an entry's features come from (None for the model's output, or unreadable)."""
    try:
        with open_entry(path) as f:
            return json.loads(f.attrs["key_fields"])["layer"]
    except StorageError:
        return None


def entry_info(path: Path) -> dict[str, Any]:
    with open_entry(path) as f:
        meta = entry_meta(f)
        meta["shards"] = int(f["source/shard_names"].shape[0])
        meta["class_names"] = list(f["class_names"].asstr()[:])
        splits, counts = np.unique(f["split"].asstr()[:], return_counts=True)
        meta["splits"] = dict(zip(splits.tolist(), counts.tolist(), strict=True))
        meta["skipped_examples"] = [
            f"{p}: {r}"
            for p, r in zip(
                f["skipped/relpath"].asstr()[:5], f["skipped/reason"].asstr()[:5], strict=True
            )
        ]
    meta["path"] = str(path)
    meta["size_bytes"] = size_on_disk(path)
    return meta


def remove_entry(path: Path) -> int:
    """Delete an entry and its shards; returns the bytes freed."""
    freed = size_on_disk(path)
    shutil.rmtree(parts_dir(path), ignore_errors=True)
    path.unlink(missing_ok=True)
    if path.parent.is_dir() and not any(path.parent.iterdir()):
        path.parent.rmdir()
    return freed

"""Turn what a user points at (a folder or a CSV manifest) into a list of items.

An item is what the cache keys a row by: the image's path relative to the dataset root plus a
file fingerprint (size and modification time, read with one ``stat``). Labels and splits live
here, not in the cache rows, so that relabelling a dataset never re-runs the backbone.

Supported inputs, in the conventions users already have:

* ImageFolder: ``root/<class>/**/<image>``, optionally under ``train/``, ``val/`` and ``test/``
  split folders (the course material's ``hymenoptera_data`` layout);
* a CSV manifest with a header ``path,label[,split]``; a numeric, non-integer label column makes
  it a regression dataset;
* an unlabelled folder of images, for prediction.

Without split folders or a split column, a deterministic stratified split is assigned
(:mod:`featpipe.data.splits`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from featpipe.data.images import is_image_name
from featpipe.data.splits import regression_strata, stratified_split
from featpipe.errors import FeatpipeError

Task = Literal["classification", "regression", "none"]

SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
PATH_COLUMNS = ("path", "filepath", "file", "filename", "image")
LABEL_COLUMNS = ("label", "target", "class", "y")


@dataclass(frozen=True)
class Item:
    """One image: where it is, what it is, and the fingerprint that keys its cached row."""

    relpath: str
    size: int
    mtime_ns: int
    label: int = -1
    target: float = math.nan
    split: str = "train"


@dataclass(frozen=True)
class Rejected:
    """A file that is in the dataset but cannot become a row (recorded, never silently lost)."""

    relpath: str
    reason: str


@dataclass
class Dataset:
    """A scanned dataset: its items in a deterministic order, classes and task."""

    name: str
    root: Path
    layout: str
    task: Task
    class_names: list[str]
    items: list[Item]
    rejected: list[Rejected] = field(default_factory=list)
    split_source: str = "stratified"

    def __len__(self) -> int:
        return len(self.items)

    def digest(self) -> str:
        """A hash of everything a cache entry records about this scan; equal means up to date."""
        h = hashlib.sha256()
        h.update(json.dumps([self.task, self.class_names, self.layout]).encode())
        for i in self.items:
            h.update(
                f"{i.relpath}\0{i.size}\0{i.mtime_ns}\0{i.label}\0{i.target}\0{i.split}\n".encode()
            )
        for r in self.rejected:
            h.update(f"!{r.relpath}\0{r.reason}\n".encode())
        return h.hexdigest()

    def split_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for item in self.items:
            counts[item.split] = counts.get(item.split, 0) + 1
        return counts


def _visible(name: str) -> bool:
    return not name.startswith(".") and not name.startswith("__")


def _walk_files(folder: Path) -> list[Path]:
    """Every visible regular file below ``folder``, in sorted order (like ImageFolder)."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if _visible(d))
        found.extend(Path(dirpath) / f for f in sorted(filenames) if _visible(f))
    return found


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p.name))


def _stat_item(path: Path, root: Path, **fields: object) -> Item:
    st = path.stat()
    return Item(path.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns, **fields)


def _scan_class_tree(
    root: Path, class_dirs: dict[str, list[Path]], split_of: dict[Path, str]
) -> tuple[list[Item], list[Rejected], list[str]]:
    """Scan ``{class name: [folders]}`` into items; an empty class is an error."""
    class_names = sorted(class_dirs)
    items: list[Item] = []
    rejected: list[Rejected] = []
    for label, name in enumerate(class_names):
        n_images = 0
        for folder in class_dirs[name]:
            for path in _walk_files(folder):
                if is_image_name(path):
                    items.append(_stat_item(path, root, label=label, split=split_of[folder]))
                    n_images += 1
                else:
                    reason = f"not an image file (extension '{path.suffix or 'none'}')"
                    rejected.append(Rejected(path.relative_to(root).as_posix(), reason))
        if n_images == 0:
            folders = ", ".join(str(f) for f in class_dirs[name])
            raise FeatpipeError(
                f"class folder {folders} has no images: add images to it or remove it"
            )
    return items, rejected, class_names


def _loose_images(folder: Path, root: Path) -> list[Rejected]:
    return [
        Rejected(p.relative_to(root).as_posix(), "image outside any class folder")
        for p in sorted(folder.iterdir())
        if p.is_file() and _visible(p.name) and is_image_name(p)
    ]


def _scan_folder(root: Path, name: str) -> Dataset:
    subdirs = _subdirs(root)
    split_dirs = [d for d in subdirs if d.name.lower() in SPLIT_ALIASES]
    if split_dirs and len(split_dirs) == len(subdirs):
        class_dirs: dict[str, list[Path]] = {}
        split_of: dict[Path, str] = {}
        for split_dir in split_dirs:
            split = SPLIT_ALIASES[split_dir.name.lower()]
            for class_dir in _subdirs(split_dir):
                class_dirs.setdefault(class_dir.name, []).append(class_dir)
                split_of[class_dir] = split
        if class_dirs:
            items, rejected, class_names = _scan_class_tree(root, class_dirs, split_of)
            for split_dir in split_dirs:
                rejected += _loose_images(split_dir, root)
            return Dataset(
                name,
                root,
                "imagefolder-splits",
                "classification",
                class_names,
                items,
                rejected + _loose_images(root, root),
                split_source="folders",
            )
    if subdirs:
        class_dirs = {d.name: [d] for d in subdirs}
        items, rejected, class_names = _scan_class_tree(
            root, class_dirs, dict.fromkeys(subdirs, "train")
        )
        splits = stratified_split([i.relpath for i in items], [i.label for i in items])
        items = [_with_split(i, s) for i, s in zip(items, splits, strict=True)]
        return Dataset(
            name,
            root,
            "imagefolder",
            "classification",
            class_names,
            items,
            rejected + _loose_images(root, root),
        )
    files = _walk_files(root)
    items = [_stat_item(p, root, split="predict") for p in files if is_image_name(p)]
    rejected = [
        Rejected(p.relative_to(root).as_posix(), f"not an image file (extension '{p.suffix}')")
        for p in files
        if not is_image_name(p)
    ]
    return Dataset(name, root, "unlabelled", "none", [], items, rejected, split_source="none")


def _with_split(item: Item, split: str) -> Item:
    return Item(item.relpath, item.size, item.mtime_ns, item.label, item.target, split)


def _pick_column(header: list[str], candidates: tuple[str, ...]) -> str | None:
    lowered = {h.strip().lower(): h for h in header}
    return next((lowered[c] for c in candidates if c in lowered), None)


def _parse_float(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def _infer_task(labels: list[str]) -> Task:
    numbers = [_parse_float(v) for v in labels]
    finite = all(n is not None and math.isfinite(n) for n in numbers)
    if finite and any(n != int(n) for n in numbers):  # type: ignore[arg-type]
        return "regression"
    return "classification"


def _scan_csv(csv_path: Path, name: str, task: Task | None) -> Dataset:
    root = csv_path.parent
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        path_col = _pick_column(header, PATH_COLUMNS)
        label_col = _pick_column(header, LABEL_COLUMNS)
        split_col = _pick_column(header, ("split", "subset", "fold"))
        if path_col is None:
            raise FeatpipeError(
                f"{csv_path}: no path column in header {header}; "
                f"name one of {', '.join(PATH_COLUMNS)}"
            )
        rows = list(reader)
    if not rows:
        raise FeatpipeError(f"{csv_path} lists no images: add rows 'path,label[,split]'")
    labels = [(r.get(label_col) or "").strip() for r in rows] if label_col else []
    for line, value in enumerate(labels, start=2):
        if not value:
            raise FeatpipeError(f"{csv_path}, line {line}: empty '{label_col}' value")
    task = task or (_infer_task(labels) if labels else "none")
    class_names: list[str] = []
    if task == "classification":
        distinct = set(labels)
        numeric = all(_parse_float(v) is not None for v in distinct)
        class_names = sorted(distinct, key=(lambda v: float(v)) if numeric else None)
    elif task == "regression":
        bad = next((v for v in labels if _parse_float(v) is None), None)
        if bad is not None:
            raise FeatpipeError(f"{csv_path}: regression target '{bad}' is not a number")
    class_index = {c: i for i, c in enumerate(class_names)}
    items: list[Item] = []
    rejected: list[Rejected] = []
    for line, row in enumerate(rows, start=2):
        raw = (row.get(path_col) or "").strip()
        path = (root / raw).resolve() if not os.path.isabs(raw) else Path(raw)
        try:
            relpath = path.relative_to(root.resolve()).as_posix()
        except ValueError:
            relpath = path.as_posix()
        if not path.is_file():
            rejected.append(Rejected(relpath, f"file not found (line {line} of {csv_path.name})"))
            continue
        if not is_image_name(path):
            rejected.append(Rejected(relpath, f"not an image file (extension '{path.suffix}')"))
            continue
        split = "train"
        if split_col:
            raw_split = (row.get(split_col) or "").strip().lower()
            if raw_split not in SPLIT_ALIASES:
                raise FeatpipeError(
                    f"{csv_path}, line {line}: unknown split '{raw_split}'; use train, val or test"
                )
            split = SPLIT_ALIASES[raw_split]
        label, target = -1, math.nan
        if task == "classification":
            label = class_index[row[label_col].strip()]  # type: ignore[index]
        elif task == "regression":
            target = float(row[label_col])  # type: ignore[index]
        st = path.stat()
        items.append(Item(relpath, st.st_size, st.st_mtime_ns, label, target, split))
    split_source = "csv" if split_col else "stratified"
    if not split_col and task != "none":
        strata: list[object] = (
            [i.label for i in items]
            if task == "classification"
            else regression_strata([i.target for i in items])
        )
        splits = stratified_split([i.relpath for i in items], strata)
        items = [_with_split(i, s) for i, s in zip(items, splits, strict=True)]
    return Dataset(name, root, "csv", task, class_names, items, rejected, split_source)


def default_name(source: Path) -> str:
    """The cache folder name of a dataset: its folder name, or ``<folder>-<stem>`` for a CSV."""
    source = source.resolve()
    if source.is_file():
        return f"{source.parent.name}-{source.stem}"
    return source.name


def scan(source: str | Path, name: str | None = None, task: Task | None = None) -> Dataset:
    """Scan a folder or CSV manifest into a :class:`Dataset` (only ``stat`` calls, no decoding)."""
    source = Path(source).expanduser()
    if not source.exists():
        raise FeatpipeError(f"dataset {source} does not exist: pass an image folder or a CSV")
    name = name or default_name(source)
    if source.is_file():
        if source.suffix.lower() != ".csv":
            raise FeatpipeError(
                f"dataset {source} is a file but not a .csv manifest: pass a folder or a CSV"
            )
        dataset = _scan_csv(source, name, task)
    else:
        dataset = _scan_folder(source.resolve(), name)
        if task == "regression":
            raise FeatpipeError(
                "--task regression needs numeric targets: pass a CSV manifest 'path,label'"
            )
    if not dataset.items:
        raise FeatpipeError(
            f"no images found in {source}: expected class subfolders (ImageFolder), "
            "train/val/test split folders, image files, or a CSV manifest"
        )
    return dataset

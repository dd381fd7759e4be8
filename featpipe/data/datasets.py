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

Nothing in the input is dropped in silence and nothing is read twice: a file that cannot become
a row (not an image, a broken symlink, a folder that cannot be listed, a symlink back into a
folder already read) is a :class:`Rejected` entry that the cache keeps under ``skipped/``, and
each real folder and each real file is read once however many names lead to it.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import math
import multiprocessing
import os
import posixpath
import stat
import time
import warnings
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from featpipe.collector import paused
from featpipe.data.images import is_image_name
from featpipe.data.splits import regression_strata, stratified_split
from featpipe.errors import ArgumentError, DataError, MissingError

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
# The split of rows without a label: featpipe predicts them and never fits on them.
UNLABELLED = "predict"
# The order splits are shown in.
SPLITS = ("train", "val", "test", UNLABELLED)
# The label cells pandas reads as missing (``pandas.read_csv``'s default ``na_values``), so a
# manifest written by pandas with NaN labels reads the same here as it does there.
MISSING_LABELS = frozenset(
    {
        "",
        "#N/A",
        "#N/A N/A",
        "#NA",
        "-1.#IND",
        "-1.#QNAN",
        "-NaN",
        "-nan",
        "1.#IND",
        "1.#QNAN",
        "<NA>",
        "N/A",
        "NA",
        "NULL",
        "NaN",
        "None",
        "n/a",
        "nan",
        "null",
    }
)


class DataWarning(UserWarning):
    """A problem in the input that featpipe corrected on its own (e.g. an exact duplicate row)."""


# A file as the quick check of make and rsync sees it: relative path, size, mtime_ns. With its
# content fingerprint, it keys the file's cached row.
RowId = tuple[str, int, int]


class FileStat(NamedTuple):
    """What one ``stat`` of a file said: its size and mtime (the quick check users know), and
    its ctime, inode and device, which no ``touch`` or ``os.utime`` can set back and which
    change when the file is replaced. The cache trusts an unchanged FileStat to mean unchanged
    content, and reads the file when it changed (the rule and its limits:
    :mod:`featpipe.cache.statrecord`)."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    device: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileStat:
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


class Item(NamedTuple):
    """One image: where it is, what it is, and what the scan's ``stat`` saw of it.

    A named tuple, immutable like the frozen dataclass it was, because a scan makes one per
    file: 202,000 frozen dataclasses took 0.29 s to build (each field set through
    ``object.__setattr__``), the named tuples 0.05 s (``_replace`` makes a changed copy)."""

    relpath: str
    stat: FileStat
    label: int = -1
    target: float = math.nan
    split: str = "train"

    @property
    def size(self) -> int:
        return self.stat.size

    @property
    def mtime_ns(self) -> int:
        return self.stat.mtime_ns

    @property
    def row_id(self) -> RowId:
        return self.relpath, self.stat.size, self.stat.mtime_ns


@dataclass(frozen=True)
class Rejected:
    """A file that is in the dataset but cannot become a row (recorded, never silently lost)."""

    relpath: str
    reason: str


@dataclass
class Dataset:
    """A scanned dataset: its items in a deterministic order, classes and task.

    ``notes`` are the corrections the scan made (they are also issued as :class:`DataWarning`).
    """

    name: str
    root: Path
    layout: str
    task: Task
    class_names: list[str]
    items: list[Item]
    rejected: list[Rejected] = field(default_factory=list)
    split_source: str = "stratified"
    notes: list[str] = field(default_factory=list)
    # The wall clock (``time.time_ns()``) before the scan's first ``stat``: a file changed
    # within a timestamp tick of it may change again unseen (see featpipe.cache.statrecord).
    scanned_ns: int = 0
    # What the scan was pointed at (the folder or the CSV manifest), so a command printed for
    # this dataset names it as the user did; not part of the digest (moving a tree keeps it).
    source: Path | None = None
    _digest: str | None = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.items)

    def digest(self) -> str:
        """A hash of everything a cache entry records about this scan; equal means up to date.

        Computed once (0.2 s at 200,000 files, asked for by the hit check and the commit): a
        scan is not changed once made; a changed one is a new :class:`Dataset`
        (``dataclasses.replace``), with its own digest."""
        if self._digest is None:
            self._digest = self._compute_digest()
        return self._digest

    def _compute_digest(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps([self.task, self.class_names, self.layout]).encode())
        h.update(  # one update: the same bytes as one per line, without 200,000 calls
            "".join(
                f"{i.relpath}\0{i.stat.size}\0{i.stat.mtime_ns}\0{i.label}\0{i.target}\0{i.split}\n"
                for i in self.items
            ).encode()
        )
        for r in self.rejected:
            h.update(f"!{r.relpath}\0{r.reason}\n".encode())
        return h.hexdigest()

    def split_counts(self) -> dict[str, int]:
        """Items per split, in the order of :data:`SPLITS`."""
        counts = Counter(item.split for item in self.items)
        return {split: counts[split] for split in SPLITS if counts[split]}


def _visible(name: str) -> bool:
    return not name.startswith(".") and not name.startswith("__")


def _unusable(path: Path, exc: OSError) -> str:
    """Why ``stat`` failed on a listed name, in words a user can act on."""
    if exc.errno == errno.ELOOP:
        return "symlink loop: the link leads back to itself, not to a file"
    if path.is_symlink() and isinstance(exc, FileNotFoundError):
        return f"broken symlink: its target {os.readlink(path)} does not exist"
    return f"cannot read ({exc.strerror or exc})"


_NAME = attrgetter("name")


class _Walk:
    """One scan's walk of a folder tree: each real folder is listed once, problems are recorded.

    ``os.walk(followlinks=True)`` follows ``a/loop -> .`` until the path is too long, turning 24
    files into hundreds of rows under every split; a folder here is identified by its device and
    inode, so a second way into it (a loop or another link) is recorded instead of read again.

    Paths are relative ``str`` (``""`` is the root) and every name costs one ``stat``, from its
    ``os.DirEntry``: per-file ``Path`` objects and ``relative_to`` were three quarters of the
    scan's time. The walk is serial: listing and stat-ing 30,000 files in 10 class folders
    (local disk, warm cache, a loaded 2-core machine, best of 5) took 191 ms serially, 191 ms
    on 2 threads, 216 ms on 4 and 231 ms on 10. Threads may pay on a network filesystem, where
    each ``stat`` waits on the server; that was not measured.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.base = os.fspath(root)
        self.rejected: list[Rejected] = []
        self.read: dict[tuple[int, int], str] = {}
        self._claim("", root.stat())

    def path(self, rel: str) -> str:
        return f"{self.base}/{rel}" if rel else self.base

    def reject(self, rel: str, reason: str) -> None:
        self.rejected.append(Rejected(rel, reason))

    def _claim(self, rel: str, st: os.stat_result) -> bool:
        """Mark folder ``rel`` as read; False (and recorded) if another name already read it."""
        first = self.read.get((st.st_dev, st.st_ino))
        if first is None:
            self.read[(st.st_dev, st.st_ino)] = rel or "."
            return True
        if first == "." or rel.startswith(first + "/"):
            reason = f"directory symlink loop: leads back to {first}, which is read once"
        else:
            reason = f"same folder as {first}, which is read once"
        self.reject(rel, reason)
        return False

    def list(self, rel: str) -> tuple[list[tuple[str, os.stat_result]], list[str]]:
        """The regular files (with their ``stat``) and the new folders directly in ``rel``."""
        try:
            with os.scandir(self.path(rel)) as it:
                entries = sorted((e for e in it if _visible(e.name)), key=_NAME)
        except OSError as exc:
            self.reject(rel, f"cannot list folder ({exc.strerror or exc}): its files are unread")
            return [], []
        prefix = f"{rel}/" if rel else ""
        files: list[tuple[str, os.stat_result]] = []
        folders: list[str] = []
        for entry in entries:
            child = prefix + entry.name
            try:
                st = entry.stat()  # follows links; for other names, the lstat scandir allows
            except OSError as exc:
                self.reject(child, _unusable(Path(entry.path), exc))
                continue
            if stat.S_ISDIR(st.st_mode):
                if (st.st_dev, st.st_ino) in self.read:
                    self._claim(child, st)  # records why it is not read again
                else:
                    folders.append(child)
            elif stat.S_ISREG(st.st_mode):
                files.append((child, st))
            else:
                self.reject(child, "not a regular file")
        return files, folders

    def enter(self, rel: str) -> bool:
        try:
            return self._claim(rel, os.stat(self.path(rel)))
        except OSError as exc:
            self.reject(rel, _unusable(Path(self.path(rel)), exc))
            return False

    def files(self, rel: str) -> list[tuple[str, os.stat_result]]:
        """Every visible regular file below ``rel``, in sorted order (like ImageFolder)."""
        if not self.enter(rel):
            return []
        found, folders = self.list(rel)
        for sub in folders:
            found += self.files(sub)
        return found

    def reject_loose(self, files: list[tuple[str, os.stat_result]]) -> None:
        """Images beside the class folders belong to no class; other files there (a README, a
        manifest) are not part of the dataset."""
        for rel, _ in files:
            if is_image_name(rel):
                self.reject(rel, "image outside any class folder")


def _basename(rel: str) -> str:
    return rel.rpartition("/")[2]


def _not_an_image(path: str | Path) -> str:
    return f"not an image file (extension '{Path(path).suffix or 'none'}')"


# A file of a class tree: relative path, what its stat saw, label, split of its folder.
_Found = tuple[str, FileStat, int, str]

# A class tree of more files than this is scanned by two processes on Linux (:func:`_scan_classes`).
PARALLEL_FILES = 20_000


class _ClassScan(NamedTuple):
    """What walking one class's folders found: its images (relative path, stat, split of its
    folder), the rejected names in walk order, and the folders it claimed (device, inode →
    relative path)."""

    images: list[tuple[str, FileStat, str]]
    rejected: list[Rejected]
    claimed: dict[tuple[int, int], str]


# One class's folders, each with the split it holds.
_ClassFolders = list[tuple[str, str]]


def _walk_classes(
    walk: _Walk, folders: list[_ClassFolders], draw: bool = False
) -> list[_ClassScan]:
    """Walk each class's folders with ``walk``, one :class:`_ClassScan` per class. ``draw``:
    assign each class's train/val/test split here (:func:`stratified_split` draws every class
    on its own, so a class's split is the same drawn here or with the others), where the two
    processes of a large tree share the hashing."""
    scans = []
    for class_folders in folders:
        rejected_before, claimed_before = len(walk.rejected), set(walk.read)
        images = []
        for folder, split in class_folders:
            for rel, st in walk.files(folder):
                if is_image_name(rel):
                    images.append((rel, FileStat.of(st), split))
                else:
                    walk.reject(rel, _not_an_image(rel))
        if draw:
            drawn = stratified_split([rel for rel, _, _ in images], [0] * len(images))
            images = [(rel, st, s) for (rel, st, _), s in zip(images, drawn, strict=True)]
        claimed = {k: v for k, v in walk.read.items() if k not in claimed_before}
        scans.append(_ClassScan(images, walk.rejected[rejected_before:], claimed))
        del walk.rejected[rejected_before:]
    return scans


def _walk_packed(walk: _Walk, folders: list[_ClassFolders], draw: bool) -> list[tuple[Any, ...]]:
    """:func:`_walk_classes` in a child process, its images packed as one string of paths and
    one integer array of stats per class: 100,000 FileStat tuples pickled and rebuilt cost
    more than walking them."""
    packed = []
    for scan in _walk_classes(walk, folders, draw):
        paths = "\0".join(rel for rel, _, _ in scan.images)
        stats = np.array([st for _, st, _ in scan.images], dtype=np.int64).reshape(-1, 5)
        splits = [split for _, _, split in scan.images]
        packed.append(((paths, stats, splits), scan.rejected, scan.claimed))
    return packed


def _unpack(paths: str, stats: np.ndarray, splits: list[str]) -> list[tuple[str, FileStat, str]]:
    relpaths = paths.split("\0") if paths else []
    return list(zip(relpaths, map(FileStat._make, stats.tolist()), splits, strict=True))


def _fork_available() -> bool:
    return hasattr(os, "fork") and os.uname().sysname == "Linux" and (os.cpu_count() or 1) > 1


def _scan_classes(walk: _Walk, folders: list[_ClassFolders], draw: bool) -> list[_ClassScan]:
    """Walk every class, in two processes when the tree is large.

    Listing and ``stat``-ing hold the GIL (two threads scanned 200,000 files no faster than
    one), so a forked child walks the second half of the classes while this process walks the
    first: at 200,000 files the walk took 0.87 s against 1.37 s (benchmarks/results/scale.md).
    The child starts from this walk's folders, so the two together find what one serial walk
    finds, in the same order; should both halves reach one folder (a link from one class into
    another), the serial walk runs instead, which reads it once and records the second way in.
    Below :data:`PARALLEL_FILES` (estimated from the first class) a fork costs more than it
    saves; it is Linux only (a fork of a process with threads is not safe on macOS).
    """
    if len(folders) < 2 or not _fork_available():
        return _walk_classes(walk, folders, draw)
    try:
        with os.scandir(walk.path(folders[0][0][0])) as it:
            estimate = sum(1 for _ in it) * len(folders)
    except OSError:
        estimate = 0
    if estimate < PARALLEL_FILES:
        return _walk_classes(walk, folders, draw)
    half, read_before = len(folders) // 2, dict(walk.read)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: a fork with threads
            second = pool.submit(_walk_packed, walk, folders[half:], draw)
        first = _walk_classes(walk, folders[:half], draw)
        rest = [
            _ClassScan(_unpack(*images), rejected, claimed)
            for images, rejected, claimed in second.result()
        ]
    seen = set(walk.read)
    for scan in rest:
        if seen & scan.claimed.keys():  # a folder reached from both halves: walk it serially
            walk.read = read_before
            return _walk_classes(walk, folders, draw)
        seen |= scan.claimed.keys()
        walk.read.update(scan.claimed)
    return first + rest


def _scan_class_tree(
    walk: _Walk, class_dirs: dict[str, list[str]], split_of: dict[str, str], draw: bool = False
) -> tuple[list[_Found], list[str]]:
    """Scan ``{class name: [folders]}`` into files; an empty class is an error. ``draw``: each
    file's split is drawn (:func:`stratified_split`, per class) instead of its folder's."""
    class_names = sorted(class_dirs)
    found: list[_Found] = []
    folders = [[(f, split_of[f]) for f in class_dirs[name]] for name in class_names]
    for label, (name, scan) in enumerate(
        zip(class_names, _scan_classes(walk, folders, draw), strict=True)
    ):
        walk.rejected += scan.rejected
        if not scan.images:
            listed = ", ".join(walk.path(f) for f in class_dirs[name])
            raise DataError(f"class folder {listed} has no images: add images to it or remove it")
        found += [(rel, st, label, split) for rel, st, split in scan.images]
    return found, class_names


def _split_layout(root: Path, folders: list[str]) -> bool:
    """True for ``root/{train,val,test}/<class>/`` (every folder a split, some with classes)."""
    splits = [d for d in folders if d.lower() in SPLIT_ALIASES]
    probe = _Walk(root)  # a throwaway: the real walk records what this one finds again
    return bool(splits) and len(splits) == len(folders) and any(probe.list(d)[1] for d in splits)


def _scan_folder(root: Path, name: str) -> Dataset:
    scanned_ns = time.time_ns()
    walk = _Walk(root)
    top_files, folders = walk.list("")
    if _split_layout(root, folders):
        class_dirs: dict[str, list[str]] = {}
        split_of: dict[str, str] = {}
        for split_dir in folders:
            if not walk.enter(split_dir):
                continue
            split_files, class_folders = walk.list(split_dir)
            walk.reject_loose(split_files)
            for class_dir in class_folders:
                class_dirs.setdefault(_basename(class_dir), []).append(class_dir)
                split_of[class_dir] = SPLIT_ALIASES[split_dir.lower()]
        found, class_names = _scan_class_tree(walk, class_dirs, split_of)
        walk.reject_loose(top_files)
        items = [Item(rel, st, label, math.nan, split) for rel, st, label, split in found]
        return Dataset(
            name,
            root,
            "imagefolder-splits",
            "classification",
            class_names,
            items,
            walk.rejected,
            split_source="folders",
            scanned_ns=scanned_ns,
        )
    if folders:
        class_dirs = {d: [d] for d in folders}
        found, class_names = _scan_class_tree(
            walk, class_dirs, dict.fromkeys(folders, "train"), draw=True
        )
        walk.reject_loose(top_files)
        items = [Item(rel, st, label, math.nan, split) for rel, st, label, split in found]
        return Dataset(
            name,
            root,
            "imagefolder",
            "classification",
            class_names,
            items,
            walk.rejected,
            scanned_ns=scanned_ns,
        )
    items = [
        Item(rel, FileStat.of(st), split=UNLABELLED) for rel, st in top_files if is_image_name(rel)
    ]
    for rel, _ in top_files:
        if not is_image_name(rel):
            walk.reject(rel, _not_an_image(rel))
    return Dataset(
        name,
        root,
        "unlabelled",
        "none",
        [],
        items,
        walk.rejected,
        split_source="none",
        scanned_ns=scanned_ns,
    )


def _pick_column(header: list[str], candidates: tuple[str, ...]) -> str | None:
    lowered = {h.strip().lower(): h for h in header}
    return next((lowered[c] for c in candidates if c in lowered), None)


def _parse_float(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def _lines(lines: list[int]) -> str:
    shown = ", ".join(str(n) for n in lines[:5])
    more = f" and {len(lines) - 5} more" if len(lines) > 5 else ""
    return f"line{'s' if len(lines) > 1 else ''} {shown}{more}"


@dataclass(frozen=True)
class _Row:
    """One manifest row, parsed: where it was, which file it names, what it says about it."""

    line: int
    listed: str
    label: str | None
    split: str | None


def _read_manifest(csv_path: Path) -> tuple[list[_Row], bool]:
    """The rows of a manifest (a missing label read as ``None``) and whether it names splits."""
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        path_col = _pick_column(header, PATH_COLUMNS)
        label_col = _pick_column(header, LABEL_COLUMNS)
        split_col = _pick_column(header, ("split", "subset", "fold"))
        if path_col is None:
            raise DataError(
                f"{csv_path}: no path column in header {header}; "
                f"name one of {', '.join(PATH_COLUMNS)}"
            )
        rows: list[_Row] = []
        for record in reader:
            line = reader.line_num
            listed = (record.get(path_col) or "").strip()
            if not listed:
                raise DataError(f"{csv_path}, line {line}: empty '{path_col}' value: fill it in")
            label = (record.get(label_col) or "").strip() if label_col else None
            split = None
            if split_col:
                raw_split = (record.get(split_col) or "").strip().lower()
                if raw_split not in SPLIT_ALIASES:
                    raise DataError(
                        f"{csv_path}, line {line}: unknown split '{raw_split}'; "
                        "use train, val or test"
                    )
                split = SPLIT_ALIASES[raw_split]
            missing = label is None or label in MISSING_LABELS
            rows.append(_Row(line, listed, None if missing else label, split))
    if not rows:
        raise DataError(f"{csv_path} lists no images: add rows 'path,label[,split]'")
    return rows, split_col is not None


def _infer_task(csv_path: Path, rows: list[_Row], requested: Task | None) -> Task:
    """Classification or regression, decided on the labelled rows only.

    A missing label is a row without a label, never a class and never a number: one NaN among
    float targets leaves a regression a regression, and a column of NaN holds no task at all.
    """
    labelled = [r for r in rows if r.label is not None]
    if not labelled:
        if requested in ("classification", "regression"):
            raise DataError(
                f"{csv_path} has no labels (no label column, or every value missing), so there "
                f"is nothing to fit {requested} on: fill in a 'label' column"
            )
        return "none"
    values = [(r, _parse_float(r.label or "")) for r in labelled]
    numbers = [n for _, n in values if n is not None]
    if len(numbers) == len(values):
        bad = next((r for r, n in values if not math.isfinite(n or 0.0)), None)
        if bad is not None:
            raise DataError(
                f"{csv_path}, line {bad.line}: label '{bad.label}' is not a finite number: "
                "fix it, or leave the cell empty for an unlabelled row"
            )
    if requested == "regression":
        bad = next((r for r, n in values if n is None), None)
        if bad is not None:
            raise DataError(
                f"{csv_path}, line {bad.line}: regression target '{bad.label}' is not a number"
            )
    if requested is not None:
        return requested
    if len(numbers) == len(values) and any(n != int(n) for n in numbers):
        return "regression"
    return "classification"


def _identify(
    csv_path: Path, root: Path, rows: list[_Row], allow_outside: bool
) -> list[tuple[_Row, str]]:
    """Each row with the path that identifies its file: resolved, relative to ``root``.

    Two spellings of one file (``img/a.png``, ``./img/../img/a.png``, a symlink) are one file.
    A path that resolves outside the manifest's folder is refused unless ``allow_outside``: a
    manifest is often shared, and it must not make featpipe read (and cache the features of)
    files elsewhere on the machine without the user saying so.
    """
    out: list[tuple[_Row, str]] = []
    outside: list[_Row] = []
    for row in rows:
        resolved = Path(os.path.realpath(root / row.listed))
        if resolved.is_relative_to(root):
            out.append((row, resolved.relative_to(root).as_posix()))
        elif allow_outside:
            out.append((row, resolved.as_posix()))
        else:
            outside.append(row)
    if outside:
        raise ArgumentError(
            "allow_outside",
            f"is off, and {csv_path} names files outside {root} on "
            f"{_lines([r.line for r in outside])} (e.g. {outside[0].listed}): move them under "
            "the manifest's folder, or allow files outside it",
        )
    return out


def _deduplicate(
    csv_path: Path, rows: list[tuple[_Row, str]]
) -> tuple[list[tuple[_Row, str]], list[str]]:
    """One row per file: exact duplicates are dropped (with a note), contradictions refused."""
    first: dict[str, _Row] = {}
    kept: list[tuple[_Row, str]] = []
    dropped: list[int] = []
    for row, key in rows:
        seen = first.get(key)
        if seen is None:
            first[key] = row
            kept.append((row, key))
            continue
        if (seen.label, seen.split) == (row.label, row.split):
            dropped.append(row.line)
            continue
        what = "labels" if seen.label != row.label else "splits"
        a, b = (seen.label, row.label) if what == "labels" else (seen.split, row.split)
        raise DataError(
            f"{csv_path}, lines {seen.line} and {row.line} list the same file {key} with "
            f"different {what} ({a or 'missing'} and {b or 'missing'}): keep one row per file"
        )
    notes = []
    if dropped:
        notes.append(
            f"{csv_path}: dropped {len(dropped)} exact duplicate row(s) ({_lines(dropped)}); "
            "each file is read once"
        )
    return kept, notes


def _stat_listed(path: Path) -> os.stat_result | str:
    """The file's ``stat``, or why it cannot be a row."""
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        return _unusable(path, exc) if path.is_symlink() else "file not found"
    except OSError as exc:
        return _unusable(path, exc)
    return st if stat.S_ISREG(st.st_mode) else "not a regular file"


def _scan_csv(csv_path: Path, name: str, task: Task | None, allow_outside: bool) -> Dataset:
    scanned_ns = time.time_ns()
    root = csv_path.parent.resolve()
    rows, has_split = _read_manifest(csv_path)
    task = _infer_task(csv_path, rows, task)
    identified, notes = _deduplicate(csv_path, _identify(csv_path, root, rows, allow_outside))
    class_names: list[str] = []
    if task == "classification":
        distinct = {r.label for r, _ in identified if r.label is not None}
        numeric = all(_parse_float(v) is not None for v in distinct)
        class_names = sorted(distinct, key=(lambda v: float(v)) if numeric else None)
    class_index = {c: i for i, c in enumerate(class_names)}
    items: list[Item] = []
    rejected: list[Rejected] = []
    for row, relpath in identified:
        listed = Path(row.listed)
        st = _stat_listed(root / listed) if is_image_name(listed) else _not_an_image(listed)
        if isinstance(st, str):  # named as the manifest spells it, so the user can find it
            where = f"line {row.line} of {csv_path.name}"
            rejected.append(Rejected(posixpath.normpath(row.listed), f"{st} ({where})"))
            continue
        label, target, split = -1, math.nan, row.split or "train"
        if row.label is None or task == "none":
            split = UNLABELLED
        elif task == "classification":
            label = class_index[row.label]
        else:
            target = float(row.label)
        items.append(Item(relpath, FileStat.of(st), label, target, split))
    split_source = "csv" if has_split else "stratified"
    if task == "none":
        split_source = "none"
    elif not has_split:
        labelled = [i for i, item in enumerate(items) if item.split != UNLABELLED]
        strata: list[object] = (
            [items[i].label for i in labelled]
            if task == "classification"
            else regression_strata([items[i].target for i in labelled])
        )
        splits = stratified_split([items[i].relpath for i in labelled], strata)
        for i, s in zip(labelled, splits, strict=True):
            items[i] = items[i]._replace(split=s)
    return Dataset(
        name, root, "csv", task, class_names, items, rejected, split_source, notes, scanned_ns
    )


def default_name(source: Path) -> str:
    """The cache folder name of a dataset: its folder name, or ``<folder>-<stem>`` for a CSV."""
    source = source.resolve()
    if source.is_file():
        return f"{source.parent.name}-{source.stem}"
    return source.name


@paused()
def scan(
    source: str | Path,
    name: str | None = None,
    task: Task | None = None,
    *,
    allow_outside: bool = False,
) -> Dataset:
    """Scan a folder or CSV manifest into a :class:`Dataset` (only ``stat`` calls, no decoding).

    ``allow_outside`` lets a manifest list files outside its own folder (refused by default).
    The scan's corrections (:attr:`Dataset.notes`) are also issued as :class:`DataWarning`.
    """
    source = Path(source).expanduser()
    if not source.exists():
        raise MissingError(f"dataset {source} does not exist: pass an image folder or a CSV")
    name = name or default_name(source)
    if source.is_file():
        if source.suffix.lower() != ".csv":
            raise DataError(
                f"dataset {source} is a file but not a .csv manifest: pass a folder or a CSV"
            )
        dataset = _scan_csv(source, name, task, allow_outside)
    else:
        dataset = _scan_folder(source.resolve(), name)
        if task == "regression":
            raise ArgumentError(
                "task", "regression needs numeric targets: pass a CSV manifest 'path,label'"
            )
    if not dataset.items:
        raise DataError(
            f"no images found in {source}: expected class subfolders (ImageFolder), "
            "train/val/test split folders, image files, or a CSV manifest"
        )
    for note in dataset.notes:
        warnings.warn(note, DataWarning, stacklevel=2)
    dataset.source = source
    return dataset

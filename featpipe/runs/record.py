"""Runs: every fit and fine-tune leaves a directory that says what was done and what came out.

``runs/<dataset>/<backbone>/<name>/``
    ``run.json``      what was asked: the run's ``kind`` (fit, finetune, compare, retrieval),
                      dataset, backbone, the backbone ``entries`` (model, weights identity,
                      transform, pooling, layer, precision: enough to rebuild the network), the
                      request,
                      featpipe's version and the run format;
    ``metrics.json``  selection, the chosen config, validation and test scores, confusion
                      matrix, few-shot curve, times (:class:`~featpipe.runs.metrics.RunMetrics`,
                      read as one on load);
    ``rows.csv``      the tidy rows (one per dataset × backbone × head × hyperparameters × seed);
    ``curves.json``   per-epoch train/validation curves of every torch head;
    ``head/``         the chosen head: ``head.safetensors`` + ``head.json`` (no pickle);
    ``selection-head/`` a fit run refitted on train + val: the chosen config as selection
                      fitted it, on train alone (fine-tuning starts from it);
    ``predictions.npz`` per-image outputs on val and test (:mod:`featpipe.runs.predictions`);
    and any files of the run's kind (a fine-tune run's backbone weights, its ``cam.png``).

There is one writer, :func:`write_run`, for every kind; each stage hands it its own record (a
fit: :func:`featpipe.fitting.run.save_run`; a fine-tune: :func:`featpipe.finetuning.stage.finish`),
so this package imports neither. It builds the whole directory under a temporary name
(``<name>.tmp``, held by a lock while it is written) and renames it, so a reader sees a complete
run or none: the rename is the commit, as in git's object store. Readers (:func:`list_runs`,
:func:`results_table`) skip a directory that is not a complete run and name it in an
:class:`IncompleteRunWarning`, so one damaged run never hides the others.
Temporary directories whose writer is gone are removed by the next write
(:func:`remove_stale_temps`).

All runs under a directory form one results table (:func:`results_table`).
"""

from __future__ import annotations

import csv
import errno
import fcntl
import json
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featpipe import __version__
from featpipe.backbones.spec import slugify
from featpipe.cache.durable import fsync_dir, fsync_tree, replace_file
from featpipe.data.datasets import DataWarning
from featpipe.errors import ArgumentError, DataError, StorageError
from featpipe.runs.metrics import FINETUNE, FIT, RETRIEVAL, RunMetrics
from featpipe.runs.predictions import FILE as PREDICTIONS_FILE
from featpipe.runs.predictions import SELECTION_TEST, RunPredictions, SplitOutputs

if TYPE_CHECKING:  # torch-free at import: the CLI reads runs without loading torch
    from featpipe.heads.fitted import FittedHead

# 2: every run has a ``kind`` and ``head/``; a fine-tune run records its backbone entry and
# its weights, so predict and export serve it like a fit run. Format 1 runs (fit runs have the
# same files; fine-tune runs had no head) are still read.
RUN_FORMAT = 2
KINDS = (FIT, FINETUNE, "compare", RETRIEVAL)  # retrieval: scores of a feature set, no head
DEFAULT_RUNS_DIR = Path(os.environ.get("FEATPIPE_RUNS", "runs"))
REQUIRED = ("run.json", "metrics.json", "rows.csv")
TEMP_SUFFIX = ".tmp"
LOCK = ".writer.lock"
# A temporary directory without a lock is a writer that died between mkdir and taking the lock
# (or a run of an older featpipe): after this long it is certainly not being written.
UNLOCKED_GRACE_S = 600.0

# A file the writer puts into the run: its bytes, or a function that writes it at a path.
FileContent = bytes | Callable[[Path], None]


class IncompleteRunWarning(DataWarning):
    """A directory under the runs directory that is not a complete run; readers skip it (the
    CLI prints it as one ``warning:`` line, like every DataWarning)."""


@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    metrics: RunMetrics

    @property
    def kind(self) -> str:
        return str(self.config.get("kind", "fit"))

    def __repr__(self) -> str:
        """One line for a notebook: what was fitted on what, the choice and its scores."""
        m = self.metrics
        metric = m.metric or "score"
        scores = ", ".join(
            f"{split} {metric}={_scored(m, split, s.mean)}"
            for split, s in (("val", m.val), ("test", m.test))
            if s.mean == s.mean
        )
        return (
            f"Run({self.kind}, {self.config.get('dataset')!r}, {self.config.get('backbone')!r}, "
            f"{m.chosen_label or '?'}, {scores}, path={str(self.path)!r})"
        )

    def head(self) -> FittedHead:
        from featpipe.heads.fitted import FittedHead  # torch, only once a head is used

        if self.kind == RETRIEVAL:
            raise DataError(
                f"run {self.path} is a retrieval run: it has no head to predict or export "
                "with; use a fit run"
            )
        if not (self.path / "head").is_dir():
            raise DataError(
                f"run {self.path} has no saved head (a {self.kind} run written by an older "
                "featpipe): run it again to predict or export with it"
            )
        return FittedHead.load(self.path / "head")

    def selection_head(self) -> FittedHead:
        """The chosen head as selection fitted it, on train alone: the run's head unless it was
        refitted on train + val (then ``selection-head/``). What may be validated on val."""
        from featpipe.heads.fitted import FittedHead  # torch, only once a head is used

        folder = self.path / "selection-head"
        return FittedHead.load(folder) if folder.is_dir() else self.head()

    def predictions(self) -> RunPredictions | None:
        """The per-image predictions the run recorded (``predictions.npz``); None for a run
        that recorded none (a retrieval run, or one written before they were kept)."""
        path = self.path / PREDICTIONS_FILE
        return RunPredictions.load(path) if path.is_file() else None

    def test_outputs(self, selection: bool = True) -> SplitOutputs | None:
        """The test outputs of the head :meth:`selection_head` loads (what a fine-tune starts
        from): recorded apart after a refit on train + val, else the run's own test outputs;
        with ``selection=False`` those of the run's own head (:meth:`head`, what a fine-tune's
        refit starts from). None where the run did not record them (written before they were
        kept)."""
        recorded = self.predictions()
        if recorded is None:
            return None
        if selection and (self.path / "selection-head").is_dir():
            return recorded.splits.get(SELECTION_TEST)
        return recorded.splits.get("test")

    def curves(self) -> list[dict[str, Any]]:
        path = self.path / "curves.json"
        return json.loads(path.read_text()) if path.exists() else []

    def rows(self) -> list[dict[str, Any]]:
        with (self.path / "rows.csv").open(newline="") as handle:
            return [{k: _typed(v) for k, v in r.items()} for r in csv.DictReader(handle)]


def _scored(metrics: RunMetrics, split: str, mean: float) -> str:
    """``0.6818 [0.53, 0.81] (n=44)`` where the run recorded the interval, else the mean."""
    interval = metrics.intervals.get(split, {}).get(metrics.metric)
    return f"{interval}" if interval is not None else f"{mean:.4f}"


def _slug(text: str) -> str:
    return slugify(text)  # the one file-name rule, shared with cache entries


def new_run_path(runs_dir: Path, dataset: str, backbone: str, kind: str = "fit") -> Path:
    """Where a new run goes: ``runs_dir/<dataset>/<backbone>/[kind-]<time>-<id>``."""
    _check_kind(kind)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    prefix = "" if kind == "fit" else f"{kind}-"
    name = f"{prefix}{stamp}-{uuid.uuid4().hex[:6]}"
    return Path(runs_dir) / _slug(dataset) / _slug(backbone) / name


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ArgumentError("kind", f"{kind}: choose one of {', '.join(KINDS)}")


def write_run(
    runs_dir: Path | None = None,
    *,
    kind: str,
    dataset: str,
    dataset_root: str,
    backbone: str,
    request: Mapping[str, Any],
    metrics: RunMetrics,
    rows: Iterable[Mapping[str, Any]],
    curves: list[dict[str, Any]] | None = None,
    entries: list[dict[str, Any]] | None = None,
    head: FittedHead | None = None,
    files: Mapping[str, FileContent] | None = None,
    extra: Mapping[str, Any] | None = None,
    path: Path | None = None,
    staging: Path | None = None,
) -> Run:
    """Write one complete run directory, atomically, and return it.

    Everything (``run.json``, ``metrics.json``, ``rows.csv``, ``curves.json``, ``head/`` and
    ``files``) is written into a temporary directory that is then renamed to ``path`` (default:
    a new directory under ``runs_dir``, see :func:`new_run_path`). ``staging`` is a directory
    that already holds files of the run (a fine-tune's work folder): the record is added to it
    and it is renamed instead; when ``staging`` is ``path`` itself (a fine-tune trains in its
    run directory, so ``--out DIR`` resumes), the record completes it in place and ``run.json``,
    written last and atomically, is the commit: readers skip the directory until it is there.
    Each row gets the dataset, backbone and run name as columns.
    ``extra`` adds kind-specific fields to ``run.json``.
    """
    _check_kind(kind)
    if path is None:
        if runs_dir is None:
            raise ArgumentError("runs_dir", "None: give runs_dir or path")
        path = new_run_path(runs_dir, dataset, backbone, kind)
    path = Path(path)
    # A fine-tune trains in its run directory (resumable with --out): staging is then the path
    # itself, and the record completes it in place, run.json last.
    in_place = staging is not None and path.exists() and path.samefile(staging)
    if path.exists() and not in_place:
        raise StorageError(f"{path} already exists: a run is never overwritten; choose a new path")
    if runs_dir is not None:
        remove_stale_temps(runs_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot write run {path}: {exc}") from None
    config = {
        "format": RUN_FORMAT,
        "featpipe": __version__,
        "kind": kind,
        "created": time.time(),
        "dataset": dataset,
        "dataset_root": dataset_root,
        "backbone": backbone,
        "entries": entries or [],
        "request": dict(request),
        **dict(extra or {}),
    }
    table = [{"dataset": dataset, "backbone": backbone, **row, "run": path.name} for row in rows]
    with _writing(path, staging) as tmp:
        for name, content in (files or {}).items():
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                content(target)
        if head is not None:
            head.save(tmp / "head")
        (tmp / "curves.json").write_text(json.dumps(curves or []))
        _write_rows(tmp / "rows.csv", table)
        record = metrics.to_dict(kind)
        (tmp / "metrics.json").write_text(json.dumps(record, indent=1, default=str))
        fsync_tree(tmp)
        # run.json last and atomically: it is what makes a directory completed in place a run.
        replace_file(tmp / "run.json", json.dumps(config, indent=1, default=str).encode())
    return Run(path, config, metrics)


@contextmanager
def _writing(final: Path, staging: Path | None) -> Iterator[Path]:
    """The directory to write a run into, renamed to ``final`` when the block succeeds.

    Without ``staging`` it is ``<final>.tmp``, locked while it is written (so a cleaner can
    tell a live writer from a dead one) and removed on failure. A ``staging`` directory holds
    the caller's own work (a fine-tune's checkpoint) and is kept on failure.
    """
    if staging is not None:
        if not staging.is_dir():
            raise StorageError(f"{staging} is not a directory: nothing to turn into a run")
        folder, lock_fd = staging, None
    else:
        folder = final.with_name(final.name + TEMP_SUFFIX)
        if folder.exists() and not _writer_alive(folder):
            shutil.rmtree(folder, ignore_errors=True)
        try:
            folder.mkdir()
            lock_fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
        except OSError as exc:
            raise StorageError(f"cannot write run {final}: {exc}") from None
    try:
        yield folder
        (folder / LOCK).unlink(missing_ok=True)
        folder.rename(final)  # a no-op when a fine-tune's directory is completed in place
        fsync_dir(final.parent)
    except OSError as exc:
        if staging is None:
            shutil.rmtree(folder, ignore_errors=True)
        if isinstance(exc, StorageError):
            raise
        full = " (disk full: free space and run again)" if exc.errno == errno.ENOSPC else ""
        raise StorageError(f"cannot write run {final}{full}: {exc}") from None
    except BaseException:
        if staging is None:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        if lock_fd is not None:
            os.close(lock_fd)


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def load_run(path: str | Path) -> Run:
    """Read a complete run; a directory that is not one raises :class:`DataError` naming
    what is missing or broken."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path} is not a featpipe run directory (no such directory)")
    missing = [name for name in REQUIRED if not (path / name).is_file()]
    if missing:
        hint = (
            f"an unfinished fine-tune: resume it with featpipe finetune --out {path}"
            if (path / "checkpoint.pt").exists()
            else "an interrupted or damaged run"
        )
        raise DataError(
            f"{path} is not a complete featpipe run: {', '.join(missing)} missing ({hint})"
        )
    try:
        config = json.loads((path / "run.json").read_text())
        metrics = json.loads((path / "metrics.json").read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is a damaged featpipe run ({exc})") from None
    if not isinstance(config, dict) or not isinstance(metrics, dict):
        raise DataError(f"{path} is a damaged featpipe run (run.json or metrics.json is no object)")
    if config.get("format", 0) > RUN_FORMAT:
        raise DataError(
            f"run {path} was written by a newer featpipe (run format {config['format']}, this "
            f"version reads {RUN_FORMAT}): upgrade featpipe to use it"
        )
    try:
        return Run(path, config, RunMetrics.from_dict(metrics))
    except ValueError as exc:
        raise DataError(f"{path} is a damaged featpipe run (metrics.json: {exc})") from None


def run_dirs(runs_dir: Path) -> list[Path]:
    """Every directory where a run can be (``<dataset>/<backbone>/<name>``), temporaries aside."""
    return sorted(
        p for p in Path(runs_dir).glob("*/*/*") if p.is_dir() and not p.name.endswith(TEMP_SUFFIX)
    )


def scan_runs(runs_dir: Path) -> tuple[list[Run], list[tuple[Path, str]]]:
    """The complete runs under ``runs_dir``, and the directories skipped with the reason."""
    runs: list[Run] = []
    skipped: list[tuple[Path, str]] = []
    for folder in run_dirs(runs_dir):
        try:
            runs.append(load_run(folder))
        except DataError as exc:
            skipped.append((folder, str(exc)))
    return runs, skipped


def list_runs(runs_dir: Path) -> list[Run]:
    """Complete runs; every skipped directory is named in an :class:`IncompleteRunWarning`."""
    runs, skipped = scan_runs(runs_dir)
    for _, reason in skipped:
        warnings.warn(f"skipped: {reason}", IncompleteRunWarning, stacklevel=2)
    return runs


def _typed(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            continue
    return {"True": True, "False": False, "": None}.get(value, value)


def results_table(runs_dir: Path, where: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """All rows of all runs, optionally filtered by ``column=value`` pairs."""
    rows: list[dict[str, Any]] = []
    for run in list_runs(runs_dir):
        try:
            rows += run.rows()
        except (OSError, ValueError, csv.Error) as exc:
            warnings.warn(
                f"skipped: {run.path} has an unreadable rows.csv ({exc})",
                IncompleteRunWarning,
                stacklevel=2,
            )
    for column, value in (where or {}).items():
        rows = [r for r in rows if str(r.get(column)) == value]
    return rows


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    _write_rows(path, rows)


# --------------------------------------------------------------------------------------------
# Temporary directories left by killed writers


def _writer_alive(tmp: Path) -> bool:
    """Whether a writer still holds ``tmp`` (its lock is taken, or it is too young to have one)."""
    try:
        fd = os.open(tmp / LOCK, os.O_RDWR)
    except FileNotFoundError:
        try:
            return time.time() - tmp.stat().st_mtime < UNLOCKED_GRACE_S
        except FileNotFoundError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def stale_temps(runs_dir: Path) -> list[Path]:
    """Temporary run directories whose writer is gone (killed before its rename)."""
    return sorted(
        p for p in Path(runs_dir).glob(f"*/*/*{TEMP_SUFFIX}") if p.is_dir() and not _writer_alive(p)
    )


def remove_stale_temps(runs_dir: Path) -> list[Path]:
    """Remove the temporary run directories of dead writers; returns what was removed."""
    removed = []
    for tmp in stale_temps(runs_dir):
        shutil.rmtree(tmp, ignore_errors=True)
        if not tmp.exists():
            removed.append(tmp)
    return removed

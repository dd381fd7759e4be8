"""What an attack on the cache found: nothing wrong gets in, nothing right gets lost.

Same-size replacements, edited entries, corrupt shards, a full disk (at the OS write, in the
journal and in the seal, and a real full tmpfs), temporary files of killed writers, transient
skips, a read-only cache and concurrent writers.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import fcntl
import io
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

import featpipe.cache.entry as entry_module
import featpipe.cache.hdf5 as hdf5
import featpipe.cache.statrecord as statrecord
from conftest import FEATPIPE, SLOW, TINY, console_script, flags, make_tree, write_image
from featpipe.cache.entry import load_features, parts_dir, verify
from featpipe.data.datasets import scan
from featpipe.errors import StorageError
from featpipe.extraction.stage import extract


def run(data: Path, cache_dir: Path, **overrides):
    return extract(data, cache_dir=cache_dir, **(TINY | overrides))


def rows_of(result, relpath: str) -> np.ndarray:
    features = result.load()
    return features.X[list(features.relpath).index(relpath)]


# Content fingerprints.


def test_same_size_and_mtime_with_other_content_is_recomputed(tree: Path, cache_dir: Path) -> None:
    """``cp other.png a.png; truncate -s SIZE; touch -r``: size and mtime say unchanged."""
    first = run(tree, cache_dir)
    target = tree / "ants" / "ants_001.png"
    st = target.stat()
    replacement = (tree / "bees" / "bees_004.png").read_bytes()
    assert len(replacement) <= st.st_size
    target.write_bytes(replacement + b"\0" * (st.st_size - len(replacement)))  # PNG ignores tails
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (target.stat().st_size, target.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    again = run(tree, cache_dir)
    assert not again.hit and again.n_new == 1
    np.testing.assert_allclose(  # computed in another batch: equal up to float rounding
        rows_of(again, "ants/ants_001.png"), rows_of(first, "bees/bees_004.png"), atol=1e-6
    )
    assert run(tree, cache_dir).hit


def _bmp(path: Path, seed: int) -> None:
    """An uncompressed image over 128 KiB: its middle can change with head and tail intact."""
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (200, 300, 3), dtype=np.uint8)).save(path, "BMP")


def test_a_change_in_the_middle_needs_verify_content(tree: Path, cache_dir: Path) -> None:
    big = tree / "ants" / "big.bmp"
    _bmp(big, seed=1)
    before = rows_of(run(tree, cache_dir), "ants/big.bmp")
    st = big.stat()
    data = bytearray(big.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 3000] = bytes(3000)  # black pixels in the middle rows
    big.write_bytes(bytes(data))
    os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns))
    # The quick fingerprint reads the first and last 64 KiB: the documented limit of the rule.
    assert run(tree, cache_dir).hit
    checked = console_script(
        "extract", tree, "--cache-dir", cache_dir, *flags(TINY), "--verify-content", timeout=300
    )
    assert checked.returncode == 0 and " 1 extracted" in checked.stdout, checked.stderr
    entry = next((cache_dir / "tiny").glob("*.h5"))
    features = load_features(entry)
    assert not np.allclose(features.X[list(features.relpath).index("ants/big.bmp")], before)
    assert run(tree, cache_dir, verify_content=True).hit


def _as_format_1(entry: Path) -> None:
    """Rewrite an entry and its shards as featpipe's format 1 wrote them (no fingerprints)."""
    for shard in parts_dir(entry).glob("*.h5"):
        with h5py.File(shard, "r+") as f:
            for name in ("fingerprint", "sha256", "skipped/fingerprint"):
                del f[name]
            del f.attrs["checksum"]
    with h5py.File(entry, "r+") as f:
        for name in ("fingerprint", "sha256", "source/shard_bytes"):
            del f[name]
        for name in ("checksum", "content", "content_full", "n_transient"):
            del f.attrs[name]
        f.attrs["format_version"] = 1


def test_format_1_entries_still_read_and_the_next_extract_recomputes(
    tree: Path, cache_dir: Path
) -> None:
    first = run(tree, cache_dir)
    before = first.load()
    _as_format_1(first.entry)
    np.testing.assert_array_equal(load_features(first.entry).X, before.X)
    assert any("format 1" in p for p in verify(first.entry))
    again = run(tree, cache_dir)
    assert not again.hit and again.n_new == 12
    np.testing.assert_array_equal(again.load().X, before.X)
    assert verify(again.entry) == []
    assert len(list(parts_dir(again.entry).glob("*.h5"))) == 1  # the old shard is gone


# Edited entries.


@pytest.mark.parametrize(
    "edit",
    [
        lambda f: f["label"].write_direct(np.zeros(f["label"].shape, np.int64)),
        lambda f: f.attrs.__setitem__("task", "regression"),
        lambda f: f.attrs.__setitem__("n", 11),
    ],
    ids=["zeroed-labels", "task", "n"],
)
def test_an_edited_entry_is_refused_then_rebuilt(tree: Path, cache_dir: Path, edit) -> None:
    first = run(tree, cache_dir)
    labels = first.load().labels
    assert labels.any()
    with h5py.File(first.entry, "r+") as f:
        edit(f)
    with pytest.raises(StorageError, match=r"fails its checksum.*rerun the extract.*cache rm"):
        load_features(first.entry)
    [problem] = verify(first.entry)
    assert "fails its checksum" in problem
    again = run(tree, cache_dir)
    assert not again.hit and again.n_new == 0  # the rows are sound: only the entry is rebuilt
    np.testing.assert_array_equal(again.load().labels, labels)


def test_a_verified_entry_is_not_checksummed_again_until_it_changes(
    tree: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A settled entry verified once records its FileStat beside its shards: the next process
    opens it without the checksum; an edit in place changes its stat and is refused; a damaged
    record, or ``cache verify``, checksums regardless."""
    monkeypatch.setattr(statrecord, "RACY_NS", 0)  # a test's files are milliseconds old
    entry = run(tree, cache_dir).entry
    load_features(entry)
    marker = parts_dir(entry) / entry_module.VERIFIED_NAME
    assert marker.read_text().split()[3] == str(entry.stat().st_ino)
    checksummed: list[str] = []
    checksum_ok = entry_module.checksum_ok
    monkeypatch.setattr(
        entry_module, "checksum_ok", lambda f: checksummed.append(f.filename) or checksum_ok(f)
    )

    def fresh_process_load() -> None:
        monkeypatch.setattr(entry_module, "_VERIFIED", {})
        load_features(entry)

    fresh_process_load()
    assert checksummed == []  # vouched for by the record
    assert verify(entry) == [] and len(checksummed) == 1  # cache verify checksums regardless
    marker.write_text("not a stat")
    fresh_process_load()
    assert len(checksummed) == 2  # a damaged record vouches for nothing
    with h5py.File(entry, "r+") as f:
        f["label"].write_direct(np.zeros(f["label"].shape, np.int64))
    with pytest.raises(StorageError, match="fails its checksum"):
        fresh_process_load()


def test_the_checksum_of_columns_in_memory_is_the_one_read_back() -> None:
    """commit hashes the columns it wrote from memory; a reader hashes what it reads: the two
    must agree for every kind of column (numbers, UTF-8 strings, empty columns)."""
    columns: dict[str, hdf5.Column] = {
        "relpath": ["a/1.png", "b/ünïcode 2.png", ""],
        "size": np.array([1, 2, 3], np.int64),
        "target": np.array([0.5, -1.0, 2.0]),
        "source/shard": np.array([0, 0, 1], np.int32),
        "skipped/relpath": [],
        "skipped/size": np.array([], np.int64),
    }
    with hdf5.in_memory_file() as f:
        hdf5.write_columns(f, columns)
        f.create_dataset("features", data=np.ones((3, 2), np.float32))
        f.attrs["n"] = 3
        assert hdf5.checksum(f, written=columns) == hdf5.checksum(f)
        columns["relpath"] = ["a/1.png", "b/ünïcode 2.png", "c"]  # not what the file holds
        assert hdf5.checksum(f, written=columns) != hdf5.checksum(f)


def test_a_miss_checksums_no_entry_and_a_forged_manifest_is_still_refused(
    tree: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An extract that adds rows decides its miss from the entry's manifest alone and takes
    its result's size from its own commit: it checksums no entry (0.3 s each at 200,000 rows).
    A hit is still decided only after the checksum: an entry whose manifest was edited to
    match a new scan is refused, and rebuilt."""
    first = run(tree, cache_dir)
    checksummed: list[str] = []
    checksum_ok = entry_module.checksum_ok
    monkeypatch.setattr(
        entry_module, "checksum_ok", lambda f: checksummed.append(f.filename) or checksum_ok(f)
    )
    monkeypatch.setattr(entry_module, "_VERIFIED", {})
    write_image(tree / "ants" / "new.png", seed=99)
    grown = run(tree, cache_dir)
    assert (grown.n_new, grown.n) == (1, first.n + 1) and checksummed == []
    assert entry_module.entry_header(grown.entry) == (grown.n, grown.dim, grown.n_skipped)
    write_image(tree / "bees" / "newer.png", seed=98)
    with h5py.File(grown.entry, "r+") as f:
        f.attrs["manifest"] = scan(tree).digest()  # claims to hold the new scan
    forged = run(tree, cache_dir)
    assert not forged.hit and (forged.n_new, forged.n) == (1, first.n + 2)
    assert grown.entry in {Path(name) for name in checksummed}  # refused by its checksum


def test_cache_verify_cli_names_an_edited_entry(tree: Path, cache_dir: Path) -> None:
    first = run(tree, cache_dir)
    with h5py.File(first.entry, "r+") as f:
        f["label"][0] = 1 - f["label"][0]
    done = console_script("cache", "verify", "--cache-dir", cache_dir, timeout=300)
    assert done.returncode == 2
    assert "fails its checksum" in done.stdout and "Traceback" not in done.stderr
    assert "1 of 1 entries failed verification" in done.stderr


# Corrupt and truncated shards.


def _corrupt(shard: Path) -> None:
    with h5py.File(shard, "r") as f:
        offset = f["features"].id.get_chunk_info(0).byte_offset
    data = bytearray(shard.read_bytes())
    data[offset + 100 : offset + 104] = b"\xff\xff\xff\xff"
    shard.write_bytes(bytes(data))


def _truncate(shard: Path) -> None:
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage", [_corrupt, _truncate], ids=["corrupt", "truncated"])
def test_a_damaged_shard_is_named_and_recomputed(
    tree: Path, cache_dir: Path, tmp_path: Path, damage
) -> None:
    first = run(tree, cache_dir)
    shard = next(parts_dir(first.entry).glob("*.h5"))
    damage(shard)
    with pytest.raises(StorageError, match=rf"shard .*{shard.name}.*rerun the extract command"):
        load_features(first.entry)
    again = run(tree, cache_dir)
    assert not again.hit and again.n_new == 12  # recomputed, never "cache hit"
    np.testing.assert_array_equal(again.load().X, run(tree, tmp_path / "clean").load().X)
    assert verify(again.entry) == []


def test_verify_names_a_shard_whose_object_header_is_damaged(tree: Path, cache_dir: Path) -> None:
    """Damage HDF5 reports as RuntimeError (a column's object header overwritten), not OSError:
    still a corrupt shard, moved aside and named in one line, never a traceback."""
    first = run(tree, cache_dir)
    shard = next(parts_dir(first.entry).glob("*.h5"))
    with h5py.File(shard, "r") as f:
        header = h5py.h5o.get_info(f["size"].id).addr
    data = bytearray(shard.read_bytes())
    data[header : header + 64] = b"\xab" * 64
    shard.write_bytes(bytes(data))
    done = console_script("cache", "verify", "--cache-dir", cache_dir, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"{shard.name}: corrupt (" in done.stdout + done.stderr
    assert (shard.parent / f"{shard.name}.corrupt").exists()
    again = run(tree, cache_dir)
    assert not again.hit and again.n_new == 12 and verify(again.entry) == []


# A full disk, raised by the write itself.


@contextlib.contextmanager
def disk_fills(monkeypatch: pytest.MonkeyPatch, folder: Path, budget: int, names: str = ""):
    """``os.write`` into ``folder`` (files whose name contains ``names``) writes ``budget``
    more bytes, the last write short, then fails with ENOSPC: a disk filling up."""
    real = os.write
    left = [budget]

    def write(fd: int, data) -> int:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return real(fd, data)
        if not target.startswith(str(folder)) or names not in Path(target).name:
            return real(fd, data)
        if left[0] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = min(len(data), left[0])
        left[0] -= n
        return real(fd, memoryview(data)[:n])

    monkeypatch.setattr(os, "write", write)
    yield
    monkeypatch.setattr(os, "write", real)


def test_disk_full_in_the_journal_keeps_rows_and_the_rerun_completes(
    tree: Path, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first batch (4 rows of 256 float32) and its line fit; the second's features do not.
    with (
        disk_fills(monkeypatch, cache_dir / "tiny", budget=4096 + 2000, names=".jrnl"),
        pytest.raises(StorageError, match=r"No space left.*rows already written are kept"),
    ):
        run(tree, cache_dir)
    parts = next((cache_dir / "tiny").glob("*.parts"))
    assert list(parts.glob("*.rows")) and not list(parts.glob("*.h5"))  # journal kept
    assert (parts.glob("*.jrnl").__next__().stat().st_size) == 4096 + 2000  # a short write
    resumed = run(tree, cache_dir)
    assert resumed.n == 12 and resumed.n_new == 8  # the first batch of 4 survived
    np.testing.assert_array_equal(resumed.load().X, run(tree, tmp_path / "clean").load().X)


def test_disk_full_while_sealing_keeps_the_journal_and_the_rerun_seals_it(
    tree: Path, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (
        disk_fills(monkeypatch, cache_dir / "tiny", budget=5000, names=".h5.tmp-"),
        pytest.raises(StorageError, match=r"cannot write .*\.h5 \(No space left.*kept"),
    ):
        run(tree, cache_dir)
    parts = next((cache_dir / "tiny").glob("*.parts"))
    assert list(parts.glob("*.rows")) and list(parts.glob("*.jrnl"))  # the journal is kept
    assert not list(parts.glob("*.h5*"))  # and no shard, whole or partial
    resumed = run(tree, cache_dir)
    assert resumed.n == 12 and resumed.n_new == 0  # every row came from the journal
    np.testing.assert_array_equal(resumed.load().X, run(tree, tmp_path / "clean").load().X)


@contextlib.contextmanager
def mounted(target: Path, *options: str) -> Iterator[None]:
    """A mount for this test (root only); skips where mounting is not allowed."""
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", *options, str(target)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here: {done.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


@pytest.mark.parametrize("free_kib", [12, 400], ids=["journal", "seal"])
def test_a_real_full_disk_is_one_line_and_resumes(tmp_path: Path, free_kib: int) -> None:
    """On a real (tmpfs) disk: the kernel's ENOSPC in the journal, or the free-space check
    before a seal. Before this, sealing on a full disk ended in h5py tracebacks (or rc 139)."""
    data = make_tree(tmp_path / "tiny")
    disk = tmp_path / "disk"
    with mounted(disk, "-t", "tmpfs", "-o", "size=2m", "tmpfs"):
        filler = disk / "filler"
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        filler.write_bytes(bytes(free - free_kib * 1024))
        args = ["extract", data, "--cache-dir", disk / "cache", *flags(TINY | {"batch_size": 2})]
        full = console_script(*args, timeout=300)
        assert full.returncode == 2, full.stderr
        assert "No space left on device" in full.stderr and "rerun" in full.stderr
        assert "Traceback" not in full.stderr and len(full.stderr.strip().splitlines()) == 1
        filler.unlink()
        again = console_script(*args, timeout=300)
        assert again.returncode == 0, again.stderr
        entry = next((disk / "cache" / "tiny").glob("*.h5"))
        X = load_features(entry).X
    # Bitwise against an uninterrupted run of the same settings: batch size included, since
    # oneDNN's kernels for batch 2 and batch 4 round differently on some CPUs (1e-10 here).
    np.testing.assert_array_equal(X, run(data, tmp_path / "clean", batch_size=2).load().X)


# Temporary files of dead writers.


def test_temporary_files_of_dead_writers_are_reported_then_removed(
    tree: Path, cache_dir: Path
) -> None:
    first = run(tree, cache_dir)
    parts = parts_dir(first.entry)
    dead = [
        parts / "w000-1-abc-0000.h5.tmp-999999",
        first.entry.with_name(first.entry.name + ".tmp-999998"),
    ]
    for path in dead:
        path.write_bytes(b"half a file")
    live = parts / "w000-2-def-0000.h5.tmp-4242"
    live.write_bytes(b"being written")
    with live.open("rb") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # a live writer holds its lock
        [problem] = verify(first.entry)
        assert "2 temporary file(s) of dead writers" in problem
        write_image(tree / "bees" / "bees_100.png", seed=5)  # not a hit: the writer path runs
        assert run(tree, cache_dir).n_new == 1
        assert not any(p.exists() for p in dead) and live.exists()
    live.unlink()
    assert verify(first.entry) == []


# Skips.


def test_a_file_skipped_for_permission_is_retried(
    tree: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``chmod 000`` then ``chmod 644``, simulated at the system's ``open`` (this suite may run
    as root), which PIL and ``Path.read_bytes`` (a PNG for libspng) both go through."""
    locked = str(tree / "ants" / "ants_002.png")
    real_open = io.open

    def refusing_open(file, *args, **kwargs):
        if str(file) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", locked)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(io, "open", refusing_open)
    monkeypatch.setattr(builtins, "open", refusing_open)
    first = run(tree, cache_dir)
    assert first.n == 11 and first.n_skipped == 1
    monkeypatch.undo()
    again = run(tree, cache_dir)
    assert not again.hit and again.n == 12 and again.n_new == 1 and again.n_skipped == 0
    assert run(tree, cache_dir).hit


def test_a_read_only_cache_with_the_complete_entry_is_a_hit(tree: Path, cache_dir: Path) -> None:
    first = run(tree, cache_dir)
    with mounted(cache_dir, "--bind", "-o", "ro", str(cache_dir)):
        with pytest.raises(OSError):
            (cache_dir / "probe").write_bytes(b"")
        hit = run(tree, cache_dir)
        assert hit.hit and hit.n == 12
        np.testing.assert_array_equal(hit.load().X, first.load().X)


# Concurrent writers.


def _shard_rows(cache: Path) -> int:
    total = 0
    for shard in cache.glob("*/*.parts/*.h5"):
        with h5py.File(shard, "r") as f:
            total += int(f.attrs["n"])
    return total


def test_two_concurrent_extracts_compute_each_row_once(tmp_path: Path) -> None:
    data = make_tree(tmp_path / "photos", classes=("a", "b"), per_class=40)
    cache = tmp_path / "cache"
    # The first must still be computing when the second looks its entry up (under a second, from
    # the memo, without torch): at 64 px resnet18 finished 80 images first in a loaded suite and
    # the second was a cache hit; at 160 px their forward takes six times as long.
    slower = SLOW | {"image_size": 160}
    cmd = [str(FEATPIPE), "extract", str(data), "--cache-dir", str(cache), *flags(slower)]
    subprocess.run([*cmd[:2], "--help"], capture_output=True, check=True)  # warm imports
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(cache.glob("*/*.parts/*.claim")):  # the first has claimed its rows
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0 and second.returncode == 0, err + second.stderr
    assert _shard_rows(cache) == 80  # not 160: the second waited for the first's rows
    assert "0 extracted" in second.stdout

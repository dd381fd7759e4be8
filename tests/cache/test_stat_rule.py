"""The stat rule: unchanged stats read no file, and every change of content is still caught.

A file replaced by another of the same size and mtime (renamed over it, or edited in place,
its mtime set back) changes its ctime or inode: it is read, and its row recomputed. A copied
dataset is read once, then recorded. The record only ever saves reads: missing, damaged, racy
or on an untrusted filesystem, it vouches for nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import featpipe.cache.entry as entry_module
import featpipe.cache.fingerprints as fingerprints
import featpipe.cache.statrecord as statrecord
from conftest import TINY, make_tree
from featpipe.cache.entry import open_entry, parts_dir
from featpipe.cache.statrecord import (
    RACY_NS,
    Facts,
    Trust,
    read_record,
    record_path,
    write_record,
)
from featpipe.data.datasets import FileStat, Item, scan
from featpipe.errors import DataError, StorageError
from featpipe.extraction.stage import extract


def run(data: Path, cache_dir: Path, **overrides):
    return extract(data, cache_dir=cache_dir, **(TINY | overrides))


def row(result, relpath: str) -> np.ndarray:
    features = result.load()
    return features.X[list(features.relpath).index(relpath)]


class Reads:
    """The files whose content this process fingerprints (quick) or hashes (full)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.quick: list[str] = []
        self.full: list[str] = []
        quick, full = fingerprints.quick_fingerprint, fingerprints.full_hash
        monkeypatch.setattr(
            fingerprints, "quick_fingerprint", lambda p: self.quick.append(p.name) or quick(p)
        )
        monkeypatch.setattr(
            fingerprints, "full_hash", lambda p: self.full.append(p.name) or full(p)
        )

    def clear(self) -> None:
        self.quick.clear()
        self.full.clear()


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Reads:
    return Reads(monkeypatch)


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stats are recorded however young the files: a test's files are milliseconds old, and
    waiting out RACY_NS in every test is what ``test_a_file_changed_within_the_racy_window_...``
    checks instead."""
    monkeypatch.setattr(statrecord, "RACY_NS", 0)


def _same_size_other_content(target: Path, source: Path) -> bytes:
    data = source.read_bytes()
    size = target.stat().st_size
    assert len(data) <= size
    return data + b"\0" * (size - len(data))  # PNG ignores what follows its end


@pytest.mark.parametrize("mtime_reset", ["after the rename", "before the rename"])
def test_another_file_renamed_over_with_same_size_and_mtime_is_read_and_recomputed(
    tree: Path, cache_dir: Path, reads: Reads, settled: None, mtime_reset: str
) -> None:
    first = run(tree, cache_dir)
    target, source = tree / "ants" / "ants_001.png", tree / "bees" / "bees_004.png"
    st = target.stat()
    incoming = tree / "ants" / ".incoming.png"  # hidden: never part of the dataset
    incoming.write_bytes(_same_size_other_content(target, source))
    if mtime_reset == "before the rename":
        os.utime(incoming, ns=(st.st_atime_ns, st.st_mtime_ns))
    incoming.rename(target)
    if mtime_reset == "after the rename":
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (target.stat().st_size, target.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    reads.clear()
    again = run(tree, cache_dir)
    assert not again.hit and again.n_new == 1
    assert reads.quick == ["ants_001.png"]  # its inode changed: read once, the others not
    np.testing.assert_allclose(
        row(again, "ants/ants_001.png"), row(first, "bees/bees_004.png"), atol=1e-6
    )
    reads.clear()
    assert run(tree, cache_dir).hit and reads.quick == []


def test_an_edit_in_place_with_its_mtime_set_back_is_read_and_recomputed(
    tree: Path, cache_dir: Path, reads: Reads, settled: None
) -> None:
    first = run(tree, cache_dir)
    target = tree / "ants" / "ants_001.png"
    st = target.stat()
    target.write_bytes(_same_size_other_content(target, tree / "bees" / "bees_004.png"))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert target.stat().st_ino == st.st_ino  # same inode, size and mtime: only ctime moved
    reads.clear()
    again = run(tree, cache_dir)
    assert not again.hit and again.n_new == 1 and reads.quick == ["ants_001.png"]
    np.testing.assert_allclose(
        row(again, "ants/ants_001.png"), row(first, "bees/bees_004.png"), atol=1e-6
    )


def test_a_copied_dataset_is_read_once_then_never_under_either_name(
    tree: Path, cache_dir: Path, tmp_path: Path, reads: Reads, settled: None
) -> None:
    first = run(tree, cache_dir)
    copy = shutil.copytree(tree, tmp_path / "elsewhere" / "tiny")  # same name, new inodes
    reads.clear()
    same_name = run(copy, cache_dir)
    assert same_name.hit and same_name.entry == first.entry and len(reads.quick) == 12
    reads.clear()
    assert run(copy, cache_dir).hit and reads.quick == []
    other_name = run(copy, cache_dir, name="copied")
    assert other_name.n_new == 0 and other_name.n_copied == 12  # proven by SHA-256, copied
    np.testing.assert_array_equal(other_name.load().X, first.load().X)
    reads.clear()
    assert run(copy, cache_dir, name="copied").hit and reads.quick == reads.full == []


def test_an_entry_from_before_the_record_reads_once_then_records(
    tree: Path, cache_dir: Path, reads: Reads, settled: None
) -> None:
    first = run(tree, cache_dir)
    record_path(parts_dir(first.entry)).unlink()  # as featpipe before the stat rule left it
    reads.clear()
    assert run(tree, cache_dir).hit and len(reads.quick) == 12
    reads.clear()
    assert run(tree, cache_dir).hit and reads.quick == []


def _edit_a_fingerprint(record: Path) -> None:
    with h5py.File(record, "r+") as f:
        f["fingerprint"][0] = np.frombuffer(b"0" * 32, dtype=np.uint8)


def _truncate(record: Path) -> None:
    record.write_bytes(record.read_bytes()[:100])


@pytest.mark.parametrize("damage", [_edit_a_fingerprint, _truncate], ids=["edited", "truncated"])
def test_a_damaged_record_vouches_for_nothing(
    tree: Path, cache_dir: Path, reads: Reads, settled: None, damage
) -> None:
    entry = run(tree, cache_dir).entry
    assert len(read_record(parts_dir(entry))) == 12
    damage(record_path(parts_dir(entry)))
    assert len(read_record(parts_dir(entry))) == 0
    reads.clear()
    assert run(tree, cache_dir).hit and len(reads.quick) == 12


def test_a_record_that_cannot_be_written_costs_reads_not_the_hit(
    tree: Path, cache_dir: Path, reads: Reads, settled: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only cache: the hit reads the files whose stat changed, every time."""
    entry = run(tree, cache_dir).entry
    target = tree / "ants" / "ants_001.png"
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # ctime moves, content does not

    def refuse(path: Path, data: bytes, reserve: int = 0) -> None:
        raise PermissionError(13, "Read-only file system", str(path))

    monkeypatch.setattr(statrecord, "replace_file", refuse)
    for _ in range(2):
        reads.clear()
        assert run(tree, cache_dir).hit and reads.quick == ["ants_001.png"]
    assert len(read_record(parts_dir(entry))) == 12  # the first run's, unchanged


def test_a_file_changed_within_the_racy_window_is_not_recorded(tmp_path: Path) -> None:
    """A stat seen within RACY_NS of the file's last change could be shared by a change in the
    same timestamp tick: it is not recorded, so the file is read again next time."""
    path = make_tree(tmp_path / "d", classes=("a",), per_class=1) / "a" / "a_000.png"
    stat = FileStat.of(path.stat())
    facts = Facts(["a/a_000.png"], [stat], ["f" * 32])
    parts = tmp_path / "parts"
    parts.mkdir()
    assert write_record(parts, facts, scanned_ns=stat.ctime_ns + RACY_NS // 2) == 0
    assert len(read_record(parts)) == 0
    assert write_record(parts, facts, scanned_ns=stat.ctime_ns + RACY_NS + 1) == 1
    assert read_record(parts).facts() == {"a/a_000.png": (stat, "f" * 32)}


@pytest.mark.parametrize("field", FileStat._fields)
def test_any_stat_field_that_changed_vouches_for_nothing(tmp_path: Path, field: str) -> None:
    x = FileStat(size=10, mtime_ns=20, ctime_ns=30, inode=40, device=os.stat(tmp_path).st_dev)
    y = x._replace(size=11, inode=41)
    write_record(tmp_path, Facts(["x.png", "y.png"], [x, y], ["a" * 32, "b" * 32]), 2 * 10**18)
    record = read_record(tmp_path)
    both = {"x.png": "a" * 32, "y.png": "b" * 32}
    assert record.vouched([Item("x.png", x), Item("y.png", y)]) == both  # by the digest
    assert record.vouched([Item("x.png", x)]) == {"x.png": "a" * 32}  # file by file
    changed = x._replace(**{field: getattr(x, field) + 1})
    assert record.vouched([Item("x.png", changed), Item("y.png", y)]) == {"y.png": "b" * 32}


def test_untrusted_filesystems_come_from_the_mount_table(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        "40 22 8:17 / /media/usb rw,relatime shared:2 - vfat /dev/sdb1 rw,fmask=0022\n"
        "41 22 8:18 / /media/card rw - exfat /dev/sdb2 rw\n"
        "42 22 0:52 / /mnt/remote rw,nosuid - fuse.sshfs host:/data rw,user_id=0\n"
        "43 22 0:53 / /srv/nfs rw - nfs4 server:/export rw,vers=4.2\n"
    )
    found = statrecord._untrusted_devices(mountinfo)
    assert found == {os.makedev(8, 17), os.makedev(8, 18), os.makedev(0, 52)}


def test_the_environment_variable_overrides_the_mount_table(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    device = os.stat(tmp_path).st_dev
    monkeypatch.setattr(statrecord, "_untrusted_devices", lambda: frozenset({device}))
    assert not Trust().device(device)
    monkeypatch.setenv(statrecord.TRUST_VARIABLE, "yes")
    assert Trust().device(device)
    monkeypatch.setenv(statrecord.TRUST_VARIABLE, "no")
    assert not Trust().device(device + 1)
    monkeypatch.setenv(statrecord.TRUST_VARIABLE, "sometimes")
    with pytest.raises(DataError, match="FEATPIPE_TRUST_STAT=sometimes: set it to auto"):
        Trust()


def test_with_trust_off_every_hit_reads_every_file(
    tree: Path, cache_dir: Path, reads: Reads, settled: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(tree, cache_dir)
    monkeypatch.setenv(statrecord.TRUST_VARIABLE, "no")
    reads.clear()
    assert run(tree, cache_dir).hit and len(reads.quick) == 12


def test_an_entry_is_checksummed_once_per_version_and_an_edit_is_still_refused(
    tree: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = run(tree, cache_dir).entry
    time.sleep(RACY_NS / 1e9 + 0.1)  # the entry's version is past the racy window
    sums: list[Path] = []
    checksum_ok = entry_module.checksum_ok
    monkeypatch.setattr(entry_module, "checksum_ok", lambda f: sums.append(path) or checksum_ok(f))
    for _ in range(3):
        open_entry(path).close()
    assert len(sums) == 1
    with h5py.File(path, "r+") as f:  # in place: same inode, same size
        f["label"][0] = 1 - f["label"][0]
    with pytest.raises(StorageError, match="fails its checksum"):
        open_entry(path)


def test_the_scan_records_every_stat_field(tree: Path) -> None:
    item = scan(tree).items[0]
    st = (tree / item.relpath).stat()
    assert item.stat == (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


# Counted in a fresh process: every open of a dataset file, whoever makes it.
OPENS = """
import json, os, sys
sys.path.insert(0, sys.argv[3])
root = sys.argv[1] + "/"
opened = []
def count(event, args):
    if event == "open" and isinstance(args[0], (str, os.PathLike)):
        if os.fspath(args[0]).startswith(root):
            opened.append(os.path.relpath(os.fspath(args[0]), root))
sys.addaudithook(count)
from conftest import TINY
from featpipe.extraction.stage import extract
result = extract(sys.argv[1], cache_dir=sys.argv[2], **TINY)
print(json.dumps({"hit": result.hit, "opened": opened}))
"""


def _opens(tree: Path, cache_dir: Path) -> dict:
    tests = str(Path(__file__).parents[1])
    done = subprocess.run(
        [sys.executable, "-c", OPENS, str(tree), str(cache_dir), tests],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_a_hit_on_unchanged_files_opens_none_of_them(
    tree: Path, cache_dir: Path, settled: None
) -> None:
    run(tree, cache_dir)
    assert _opens(tree, cache_dir) == {"hit": True, "opened": []}
    target = tree / "bees" / "bees_002.png"
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # only its ctime moves
    assert _opens(tree, cache_dir) == {"hit": True, "opened": ["bees/bees_002.png"]}

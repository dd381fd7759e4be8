"""fit on fresh entries pays the cache check once: one scan, no file read, one checksum each."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

import featpipe.cache.entry as entry_module
import featpipe.cache.fingerprints as fingerprints
import featpipe.cache.statrecord as statrecord
import featpipe.data.datasets as datasets
from conftest import TINY, make_tree
from featpipe.fitting.stage import fit

EXTRACT = {k: v for k, v in TINY.items() if k != "backbone"}


def test_fit_on_fresh_entries_scans_once_reads_no_file_and_checksums_each_entry_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_tree(tmp_path / "shapes", classes=("a", "b", "c"), per_class=8)
    monkeypatch.setattr(statrecord, "RACY_NS", 0)  # the files' stats are recorded at once
    options = EXTRACT | {"cache_dir": tmp_path / "cache"}

    def fit_both() -> None:
        fit(
            data,
            "test_efficientnet+test_resnet",
            head={"head": "ridge"},
            runs_dir=tmp_path / "runs",
            extract_options=options,
        )

    fit_both()  # extracts both entries
    monkeypatch.setattr(entry_module, "_VERIFIED", {})  # what a fresh process knows
    scans, reads, checksums = [], [], Counter()
    scan_folder, checksum_ok = datasets._scan_folder, entry_module.checksum_ok
    quick, full = fingerprints.quick_fingerprint, fingerprints.full_hash
    monkeypatch.setattr(datasets, "_scan_folder", lambda *a: scans.append(a) or scan_folder(*a))
    monkeypatch.setattr(fingerprints, "quick_fingerprint", lambda p: reads.append(p) or quick(p))
    monkeypatch.setattr(fingerprints, "full_hash", lambda p: reads.append(p) or full(p))
    monkeypatch.setattr(
        entry_module, "checksum_ok", lambda f: checksums.update([f.filename]) or checksum_ok(f)
    )
    fit_both()
    assert len(scans) == 1 and reads == []
    assert len(checksums) == 2 and set(checksums.values()) == {1}, checksums

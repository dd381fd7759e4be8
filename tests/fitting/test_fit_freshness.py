"""fit on fresh entries pays the cache check once: one scan, no file read, one checksum each."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import TINY_EXTRACT, CacheChecks, forget_verified
from featpipe.fitting.stage import fit


def test_fit_on_fresh_entries_scans_once_reads_no_file_and_checksums_each_entry_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settled_shapes: Path
) -> None:
    data = settled_shapes
    options = TINY_EXTRACT | {"cache_dir": tmp_path / "cache"}

    def fit_both() -> None:
        fit(
            data,
            "test_efficientnet+test_resnet",
            head={"head": "ridge"},
            runs_dir=tmp_path / "runs",
            extract_options=options,
        )

    fit_both()  # extracts both entries
    checks = CacheChecks(monkeypatch)
    fit_both()
    checks.paid_once(checksummed=0)  # verified by the call before, recorded beside them
    forget_verified(tmp_path / "cache")
    checks = CacheChecks(monkeypatch)
    fit_both()
    checks.paid_once(checksummed=2)  # unrecorded: once each, not once per open

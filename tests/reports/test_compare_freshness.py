"""compare on fresh entries pays the cache check once a call: one scan per dataset, whatever
the number of backbones, no dataset file read, one checksum per entry."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import TINY_EXTRACT, CacheChecks, forget_verified
from featpipe.extraction.options import as_extract_options
from featpipe.reports.compare import Experiment, compare


def test_compare_on_fresh_entries_scans_each_dataset_once_and_reads_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settled_shapes: Path
) -> None:
    data = settled_shapes
    experiment = Experiment(
        data=[str(data)],
        backbones=["test_efficientnet", "test_resnet"],
        head={"head": "ridge"},
        extract=as_extract_options(TINY_EXTRACT | {"cache_dir": tmp_path / "cache"}),
        runs_dir=str(tmp_path / "runs"),
    )
    compare(experiment)  # extracts both entries
    checks = CacheChecks(monkeypatch)
    rows = compare(experiment)
    assert len(rows) == 2
    checks.paid_once(checksummed=0)  # verified by the call before, recorded beside them
    forget_verified(tmp_path / "cache")
    checks = CacheChecks(monkeypatch)
    rows = compare(experiment)
    assert len(rows) == 2
    checks.paid_once(checksummed=2)  # unrecorded: once each, not once per open

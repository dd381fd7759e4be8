"""Manifest rules seen from extraction: files outside the manifest's folder only when allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import TINY, write_image
from featpipe.errors import ArgumentError
from featpipe.extraction.stage import extract


def test_extract_reads_files_outside_the_manifest_only_when_allowed(
    tmp_path: Path, cache_dir: Path
) -> None:
    for i in range(4):
        write_image(tmp_path / "ds" / f"{i}.png", seed=i)
    outside = write_image(tmp_path / "shared" / "x.png", seed=9)
    manifest = tmp_path / "ds" / "m.csv"
    manifest.write_text("path,label\n0.png,a\n1.png,b\n2.png,a\n3.png,b\n../shared/x.png,b\n")
    with pytest.raises(ArgumentError, match="allow_outside is off"):
        extract(manifest, cache_dir=cache_dir, **TINY)
    result = extract(manifest, cache_dir=cache_dir, allow_outside=True, **TINY)
    features = result.load()
    assert result.n == 5 and features.relpath[-1] == str(outside.resolve())
    assert extract(manifest, cache_dir=cache_dir, allow_outside=True, **TINY).hit

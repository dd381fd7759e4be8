"""A warm OpenVINO extraction runs without loading torch, timm or torchvision, and stores the
rows the torch path stores, bit for bit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from conftest import TINY, make_tree
from featpipe.cache.catalog import remove_entry
from featpipe.extraction import settle
from featpipe.extraction.stage import extract
from featpipe.runtime import tuning

# auto settings, so that the request is probed and its answer memoised
AUTO = TINY | {"engine": "auto", "precision": "auto", "batch_size": None}
# every setting given: memoised as given
EXPLICIT = TINY | {"engine": "openvino", "precision": "fp32", "batch_size": 4}
REPORT = """
import json, sys
import featpipe
result = featpipe.extract(sys.argv[1], **json.loads(sys.argv[2]))
loaded = sorted(m for m in ("torch", "timm", "torchvision") if m in sys.modules)
print(json.dumps({"loaded": loaded, "summary": result.summary(), "settings": result.settings}))
"""


def openvino_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe's answer without its timing: OpenVINO fp32 at batch 4 (a test may not depend
    on which engine is faster on the machine it runs on)."""
    monkeypatch.setattr(settle, "PROBE_MIN_IMAGES", 4)
    monkeypatch.setattr(
        tuning, "probe", lambda *a, **k: tuning.Settings("fp32", 4, True, "openvino")
    )


def dataset(root: Path) -> Path:
    """Colour PNGs, a grey one (collated to three channels) and a file that is no image."""
    make_tree(root, per_class=5)
    grey = np.random.default_rng(1).integers(0, 255, (50, 37), dtype=np.uint8)
    Image.fromarray(grey).save(root / "ants" / "grey.png")
    (root / "bees" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return root


def in_new_process(data: Path, options: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", REPORT, str(data), json.dumps(options)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.parametrize("request_", [AUTO, EXPLICIT], ids=["auto", "explicit"])
def test_warm_openvino_run_loads_no_torch_and_stores_the_same_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_openvino: Any, request_: dict
) -> None:
    openvino_probe(monkeypatch)
    data, cache = dataset(tmp_path / "data"), tiny_openvino(tmp_path / "cache")
    options = {k: v for k, v in request_.items() if k != "backbone"} | {"cache_dir": str(cache)}
    first = extract(data, AUTO["backbone"], **options)  # the torch path, which memoises
    assert first.settings["engine"] == "openvino" and "torch_loaded" not in first.settings
    before = first.load()
    remove_entry(first.entry)

    warm = in_new_process(data, options | {"backbone": AUTO["backbone"]})
    assert warm["loaded"] == []
    assert warm["settings"]["torch_loaded"] is False
    assert "torch not loaded" in warm["summary"] and "1 skipped" in warm["summary"]
    after = extract(data, AUTO["backbone"], **options)
    assert after.hit
    got = after.load()
    assert got.relpath.tolist() == before.relpath.tolist()
    assert "ants/grey.png" in got.relpath.tolist()
    np.testing.assert_array_equal(got.X, before.X)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"workers": 1}, "loader workers"),
        ({"decode": "tensor"}, "tensor decoding"),
    ],
)
def test_what_needs_torch_loads_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tiny_openvino: Any,
    change: dict[str, Any],
    why: str,
) -> None:
    openvino_probe(monkeypatch)
    data, cache = dataset(tmp_path / "data"), tiny_openvino(tmp_path / "cache")
    options = {k: v for k, v in AUTO.items() if k != "backbone"} | {"cache_dir": str(cache)}
    remove_entry(extract(data, AUTO["backbone"], **options | change).entry)
    run = in_new_process(data, options | change | {"backbone": AUTO["backbone"]})
    assert run["loaded"] == ["timm", "torch", "torchvision"], why
    assert "torch_loaded" not in run["settings"]


def test_without_the_ir_torch_converts_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_openvino: Any
) -> None:
    """The memo alone is not enough: the IR is written by the torch path."""
    openvino_probe(monkeypatch)
    data, cache = dataset(tmp_path / "data"), tiny_openvino(tmp_path / "cache")
    options = {k: v for k, v in AUTO.items() if k != "backbone"} | {"cache_dir": str(cache)}
    remove_entry(extract(data, AUTO["backbone"], **options).entry)
    for ir in (cache / ".openvino").iterdir():
        for path in sorted(ir.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        ir.rmdir()
    run = in_new_process(data, options | {"backbone": AUTO["backbone"]})
    assert run["loaded"] == ["timm", "torch", "torchvision"]
    assert any((cache / ".openvino").rglob("model.xml"))

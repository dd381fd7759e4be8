"""The top-level API for Python users: every stage's entry point, lazily; short reprs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

import featpipe

STAGES = [
    "extract",
    "fit",
    "finetune",
    "compare",
    "report",
    "advise",
    "predict",
    "export",
    "Head",
    "load_run",
    "Run",
    "RunMetrics",
    "load_features",
    "iter_chunks",
    "Features",
    "BackboneSpec",
    "ExtractResult",
    "scan",
    "prepare_dataset",
    "FeatpipeError",
    "ArgumentError",
    "DataError",
    "StorageError",
    "MissingError",
]


def test_dir_lists_every_stage_entry_point_and_each_resolves() -> None:
    listed = dir(featpipe)
    assert set(STAGES) <= set(listed)
    assert "importlib" not in listed and "annotations" not in listed
    for name in featpipe.__all__:
        assert getattr(featpipe, name) is not None, name
    assert issubclass(featpipe.ArgumentError, ValueError)


def test_reading_side_of_the_api_does_not_import_torch() -> None:
    script = (
        "import sys, featpipe; "
        "[getattr(featpipe, n) for n in ('load_features', 'iter_chunks', 'Features', "
        "'load_run', 'Run', 'RunMetrics', 'scan', 'FeatpipeError')]; "
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.stdout.strip() == "NO-TORCH", done.stderr


def test_reprs_are_one_short_line() -> None:
    rng = np.random.default_rng(0)
    n = 1000
    features = featpipe.Features(
        X=rng.normal(size=(n, 512)).astype(np.float32),
        labels=rng.integers(0, 2, n),
        targets=np.zeros(n),
        split=np.array(["train"] * 800 + ["val"] * 100 + ["test"] * 100),
        relpath=np.array([f"{i}.png" for i in range(n)]),
        class_names=["defective", "functional"],
        task="classification",
    )
    text = repr(features)
    assert "N=1000" in text and "D=512" in text and "train=800" in text and "defective" in text
    assert "array" not in text and len(text) < 200 and "\n" not in text
    result = featpipe.ExtractResult(
        entry=Path("cache/elpv/x.h5"),
        dataset="elpv",
        backbone="tf_efficientnet_lite0",
        n=2624,
        dim=1280,
        n_new=0,
        n_skipped=0,
        seconds=0.2,
        hit=True,
    )
    assert repr(result).startswith("ExtractResult('elpv', 'tf_efficientnet_lite0', N=2624")
    run = featpipe.Run(
        Path("runs/elpv/lite0/r1"),
        {"kind": "fit", "dataset": "elpv", "backbone": "tf_efficientnet_lite0"},
        featpipe.RunMetrics.from_dict(
            {
                "metric": "accuracy",
                "chosen_label": "mlp(lr=0.01)",
                "val": {"mean": 0.9},
                "test": {"mean": 0.88},
            }
        ),
    )
    text = repr(run)
    assert "mlp(lr=0.01)" in text and "val accuracy=0.9000" in text and "r1" in text
    assert len(repr(featpipe.Head(head="mlp", hidden=512))) < 60

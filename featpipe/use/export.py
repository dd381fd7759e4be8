"""Export a run as one deployable module: backbone(s) + pooling + preprocessing + head, as
TorchScript, ONNX or an OpenVINO IR.

The module takes ``uint8`` images [B, 3, H, W], already resized and centre-cropped to the
model's input size (the recipe is written next to it), and returns class probabilities (or
regression values). Every kind of run exports the same way (a fine-tune run with its trained
backbone weights). Every export is checked against the Python pipeline on real images before
it is reported as done; a disagreement is an error, not a warning.

The module is exported for inference only: its parameters do not require gradients, so its
outputs carry no autograd graph (no ``grad_fn``) wherever it is loaded.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featpipe.data.transforms import ImageToUint8
from featpipe.errors import ArgumentError, DataError
from featpipe.runs.record import Run
from featpipe.runtime.engines import write_onnx
from featpipe.runtime.openvino_engine import OPENVINO_PRECISIONS, openvino_core, write_openvino
from featpipe.use.predict import DeployedPipeline, RunPipeline, collect_images, load_pipeline

# Each format and the file it is written to by default (an IR's weights go to a .bin beside it).
FILES = {"torchscript": "model.pt", "onnx": "model.onnx", "openvino": "model.xml"}
FORMATS = tuple(FILES)
TOLERANCE = 1e-4
# OpenVINO computes bf16 by default on a CPU that has it: the checked numbers need fp32, asked for.
OPENVINO_CONFIG = {"INFERENCE_PRECISION_HINT": OPENVINO_PRECISIONS["fp32"]}


def _check_images(pipeline: RunPipeline, images: list[Path] | None) -> torch.Tensor:
    """A uint8 batch of real images: the given ones, or the first of the run's dataset."""
    if not images:
        root = Path(pipeline.run.config["dataset_root"])
        if not root.exists():
            raise ArgumentError(
                "check", f"not given and the run's dataset {root} is gone: pass real images"
            )
        images = [root]
    files = collect_images(images)[:8]
    transform = ImageToUint8(pipeline.data_config, pipeline.drafts[0])
    return torch.stack([transform(str(f)) for f in files])


def export(
    run: Run | str | Path,
    fmt: str,
    out: Path,
    check: list[Path] | None = None,
) -> dict[str, Any]:
    """Write the deployable module and a JSON sidecar; return the agreement check's result."""
    if fmt not in FORMATS:
        raise ArgumentError("fmt", f"{fmt}: choose one of {', '.join(FORMATS)}")
    if fmt == "openvino" and out.suffix != ".xml":
        raise ArgumentError(
            "out", f"{out}: an OpenVINO IR is an .xml file (weights: a .bin beside it)"
        )
    pipeline = load_pipeline(run)
    module = DeployedPipeline(pipeline).eval().requires_grad_(False)
    images = _check_images(pipeline, check)
    with torch.no_grad():
        expected = module(images).numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.stem}.tmp-{os.getpid()}{out.suffix}")
    # The files written, each with its final name: the file last, so that it is whole once seen.
    written = [(tmp.with_suffix(".bin"), out.with_suffix(".bin"))] if fmt == "openvino" else []
    written.append((tmp, out))
    try:
        got = _write(fmt, module, images, tmp)
        diff = float(np.abs(got - expected).max())
        if not diff <= TOLERANCE:
            raise DataError(
                f"exported {fmt} module disagrees with the Python pipeline by {diff:.2e} "
                f"(> {TOLERANCE}) on {len(images)} real images; nothing was written"
            )
        for made, final in written:
            os.replace(made, final)
    finally:
        for made, _ in written:
            made.unlink(missing_ok=True)
    head = pipeline.head
    config = pipeline.data_config
    sidecar = {
        "format": fmt,
        "input": "uint8 images [B, 3, H, W], RGB",
        "preprocess": {
            "resize_shorter_side_to": int(config["input_size"][-1] / config["crop_pct"]),
            "interpolation": config["interpolation"],
            "center_crop": list(config["input_size"][1:]),
        },
        "output": "probabilities" if head.task == "classification" else "values",
        "class_names": head.class_names,
        "run": str(pipeline.run.path),
        "check": {"images": len(images), "max_abs_diff": diff},
    }
    if fmt == "openvino":
        sidecar["compile_config"] = OPENVINO_CONFIG  # what the check ran with
    out.with_suffix(out.suffix + ".json").write_text(json.dumps(sidecar, indent=1))
    return sidecar


def _write(fmt: str, module: DeployedPipeline, images: torch.Tensor, path: Path) -> np.ndarray:
    """Write ``module`` as ``fmt`` to ``path``; load it back as its users do and return its
    outputs on ``images``."""
    if fmt == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notices
            torch.jit.trace(module, images, check_trace=False).save(str(path))
            return torch.jit.load(str(path))(images).detach().numpy()
    if fmt == "onnx":
        write_onnx(module, images, path, "outputs")
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"images": images.numpy()})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracing warns about every branch it freezes
        write_openvino(module, images, path)
    compiled = openvino_core().compile_model(str(path), "CPU", OPENVINO_CONFIG)
    return compiled({0: images.numpy()})[0]

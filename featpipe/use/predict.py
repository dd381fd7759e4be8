"""Use a run of any kind on new images: rebuild its backbone(s), apply its head.

The run records, for every backbone, the cache key fields (model, weights identity, transform,
pooling, layer, precision). Prediction rebuilds exactly that backbone and refuses to go on if
the weights it finds have another identity, so a prediction always comes from the network the
head was fitted on. A fine-tune run's entry also names the run's file with the trained backbone
weights, loaded on top: a fine-tune run predicts and exports exactly as a fit run does.

The engine is the one the key names (OpenVINO for rows it computed in bf16: its arithmetic is
not torch's) or plain torch, unless asked otherwise; a converted network is kept in the run's
folder (``.onnx/``, ``.openvino/``), since a fine-tuned one is in no cache key.

Prediction may average the head's outputs over symmetries of each image (test-time
augmentation, :mod:`featpipe.data.dihedral`); by default it does what the run's scores were
measured with (a fine-tune run's ``--tta``, none for a fit run).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from featpipe.backbones.build import Backbone, BackboneSpec, build_backbone
from featpipe.data.dihedral import TTA_VIEWS, Symmetry, apply
from featpipe.data.images import is_image_name
from featpipe.data.loader import make_loader
from featpipe.data.tensor_decode import pipeline as decoding
from featpipe.data.transforms import ImageToUint8
from featpipe.errors import ArgumentError, DataError, FeatpipeError
from featpipe.heads.fitted import CosineKNN, FittedHead
from featpipe.runs.record import Run, load_run, write_csv
from featpipe.runtime.allocator import keep_freed_memory
from featpipe.runtime.conversions import Conversions
from featpipe.runtime.devices import resolve_device
from featpipe.runtime.engines import Normalized
from featpipe.runtime.tuning import build_engine, check_engine


@dataclass
class RunPipeline:
    """The backbones and head of a run, ready to embed and classify images."""

    run: Run
    backbones: list[Backbone]
    precisions: list[str]
    drafts: list[bool]
    head: FittedHead
    engines: list[str]  # the engine each backbone's features were computed with, if it matters

    @property
    def data_config(self) -> dict[str, Any]:
        return self.backbones[0].data_config


def load_pipeline(run: Run | str | Path) -> RunPipeline:
    run = run if isinstance(run, Run) else load_run(run)
    backbones, precisions, drafts, engines = [], [], [], []
    for entry in run.config["entries"]:
        fields = entry["key_fields"]
        backbone = build_backbone(
            BackboneSpec.from_key_fields(entry["model"], entry["weights"], fields)
        )
        if backbone.weights_identity != fields["weights"]:
            raise FeatpipeError(
                f"run {run.path} was fitted on {entry['model']} weights {fields['weights']}, "
                f"but --weights {entry['weights']} now gives {backbone.weights_identity}: "
                "restore those weights to use this run"
            )
        if entry.get("state"):
            _load_trained_state(backbone, run.path / entry["state"])
        backbones.append(backbone)
        precisions.append(fields["precision"])
        drafts.append(backbone.spec.draft)
        engines.append(fields.get("engine") or "torch")  # named by reduced-precision keys only
    return RunPipeline(run, backbones, precisions, drafts, run.head(), engines)


def _load_trained_state(backbone: Backbone, path: Path) -> None:
    """Put a fine-tuned backbone's weights (safetensors: no pickle) into the rebuilt network."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise DataError(f"cannot read the trained backbone weights {path}: {exc}") from None
    try:
        backbone.module.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise DataError(
            f"{path} does not fit {backbone.spec.model} ({first}): the run is damaged"
        ) from None
    backbone.module.eval()


def collect_images(inputs: list[Path]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.is_file() and is_image_name(p))
        elif item.is_file():
            files.append(item)
        else:
            raise FeatpipeError(f"{item} does not exist: pass image files or folders")
    if not files:
        raise FeatpipeError(f"no image files found in {', '.join(map(str, inputs))}")
    return files


def embed(
    pipeline: RunPipeline,
    files: list[Path],
    device: str = "auto",
    batch_size: int = 16,
    workers: int = 0,
    engine: str = "auto",
) -> tuple[np.ndarray, list[str]]:
    """Features of ``files`` under the run's backbones (concatenated); failures get reasons.

    Each backbone decodes with the decoder its features were extracted with (``pil``, or
    ``tensor``: see :mod:`featpipe.data.tensor_decode`), so the head sees the same pixels, and
    runs on ``engine`` (``auto``: the one its features' key names, else torch)."""
    features, reasons = embed_views(
        pipeline, files, TTA_VIEWS["none"], device, batch_size, workers, engine
    )
    return features[0], reasons


def embed_views(
    pipeline: RunPipeline,
    files: list[Path],
    views: tuple[Symmetry, ...],
    device: str = "auto",
    batch_size: int = 16,
    workers: int = 0,
    engine: str = "auto",
) -> tuple[np.ndarray, list[str]]:
    """:func:`embed` for each of ``views`` (symmetries of the decoded images): an array
    [views, files, features]; each image is decoded once."""
    keep_freed_memory()
    dev = resolve_device(device)
    blocks, reasons = [], [""] * len(files)
    for i, (backbone, precision, draft) in enumerate(
        zip(pipeline.backbones, pipeline.precisions, pipeline.drafts, strict=True)
    ):
        name = pipeline.engines[i] if engine == "auto" else engine
        if name != "torch":  # torch runs whatever the key names (fp16 too, slowly on a CPU)
            check_engine(dev, precision, name, backbone.is_conv)
        settings = {"engine": name, "precision": precision, "channels_last": backbone.is_conv}
        converted = Conversions.under(
            pipeline.run.path, backbone.spec.model, f"{i}-{backbone.spec.slug}"
        )
        run_engine = build_engine(
            settings, Normalized(backbone.module, backbone.data_config), dev, converted
        )
        paths = [str(f) for f in files]
        transform, collate, finish = decoding(
            backbone.spec.decode, paths, ImageToUint8(backbone.data_config, draft), dev
        )
        loader = make_loader(
            paths, transform, batch_size, workers, dev.type == "cuda", collate_fn=collate
        )
        out = np.full((len(views), len(files), backbone.num_features), np.nan, dtype=np.float32)
        for batch in map(finish, loader):
            if batch.index:
                for v, view in enumerate(views):
                    out[v, batch.index] = run_engine(apply(batch.images, view))
            for row, reason in batch.failed:
                reasons[row] = reason
        blocks.append(out)
    return np.concatenate(blocks, axis=2), reasons


def run_tta(run: Run) -> str:
    """The test-time augmentation a run's scores were measured with: a fine-tune run's (the
    one it asked for, unless that scored worse on val: its ``metrics.json``); a fit run has
    none."""
    return run.metrics.tta


def predict(
    inputs: list[Path],
    run: Run | str | Path,
    out: Path | None = None,
    device: str = "auto",
    batch_size: int = 16,
    engine: str = "auto",
    tta: str = "run",
) -> list[dict[str, Any]]:
    """Predict every image; rows with the predicted class and per-class probabilities.

    ``tta``: average the probabilities (values, for a regression) over ``hflip`` (2 views) or
    ``dihedral`` (the 8 symmetries of the square) of each image, or ``none``; ``run``: what the
    run's scores were measured with (:func:`run_tta`)."""
    if tta != "run" and tta not in TTA_VIEWS:
        raise ArgumentError("tta", f"{tta}: choose one of run, {', '.join(TTA_VIEWS)}")
    pipeline = load_pipeline(run)
    files = collect_images(inputs)
    views = TTA_VIEWS[run_tta(pipeline.run) if tta == "run" else tta]
    X, reasons = embed_views(pipeline, files, views, device, batch_size, engine=engine)
    head = pipeline.head
    ok = np.array([not r for r in reasons])
    rows: list[dict[str, Any]] = []
    outputs = np.zeros((len(files), max(1, len(head.class_names))), np.float32)
    if ok.any():
        if head.task == "regression":
            outputs[ok, 0] = np.mean([head.predict(view[ok]) for view in X], axis=0)
        else:
            outputs[ok] = np.mean([head.predict_proba(view[ok]) for view in X], axis=0)
    for i, path in enumerate(files):
        row: dict[str, Any] = {"path": str(path)}
        if reasons[i]:
            row["error"] = reasons[i]
        elif head.task == "regression":
            row["prediction"] = float(outputs[i, 0])
        else:
            best = int(outputs[i].argmax())
            row |= {"prediction": head.class_names[best], "confidence": float(outputs[i, best])}
            row |= {
                f"prob_{c}": float(p) for c, p in zip(head.class_names, outputs[i], strict=True)
            }
        rows.append(row)
    if out is not None:
        write_csv(rows, out)
    return rows


class DeployedPipeline(nn.Module):
    """``uint8`` images [B, 3, H, W] (resized and cropped) → probabilities or values."""

    def __init__(self, pipeline: RunPipeline) -> None:
        super().__init__()
        sizes = {tuple(b.data_config["input_size"]) for b in pipeline.backbones}
        if len(sizes) > 1:
            raise FeatpipeError(
                f"backbones of run {pipeline.run.path} take different input sizes {sizes}: "
                "one exported module needs one input size"
            )
        self.embedders = nn.ModuleList(
            Normalized(b.module, b.data_config) for b in pipeline.backbones
        )
        self.head = pipeline.head.to_module()
        self.softmax = pipeline.head.task == "classification" and not _is_knn(pipeline.head)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = torch.cat([e(images) for e in self.embedders], dim=1)
        out = self.head(features)
        return torch.softmax(out, dim=1) if self.softmax else out


def _is_knn(head: FittedHead) -> bool:
    return isinstance(head.module, CosineKNN)

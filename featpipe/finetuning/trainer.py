"""The fine-tune stage: unfreeze blocks when cached features are not enough.

Everything the course material names is here and explicit: freezing at every granularity
(:mod:`featpipe.finetuning.blocks`), gradual unfreezing with the optimizer rebuilt at each step,
discriminative learning rates (multipliers, or timm's layer decay), BatchNorm modes, LP-FT
(start from the head the fit stage chose), a fresh Kaiming/Xavier head, training from scratch,
and re-initialising the last blocks.

Reproducible and resumable: each epoch's randomness (shuffling, augmentation, dropout) is seeded
from (seed, epoch), and a checkpoint is written atomically after every epoch, so a run killed at
any moment and resumed ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.data import create_transform

from featpipe.backbones.build import Backbone, BackboneSpec, build_backbone
from featpipe.data.datasets import Dataset, Item, scan
from featpipe.data.loader import make_loader
from featpipe.data.splits import hold_out
from featpipe.data.transforms import ImageToUint8, Normalize
from featpipe.errors import FeatpipeError
from featpipe.extraction.stage import default_workers
from featpipe.finetuning.blocks import all_blocks, apply_trainable, check_monotone, parse_schedule
from featpipe.finetuning.model import (
    FinetuneModel,
    GroupPlan,
    apply_bn_mode,
    bn_names,
    fresh_head,
    lr_factor,
    make_optimizer,
    param_groups,
    reinit,
)
from featpipe.heads import metrics
from featpipe.runs.record import DEFAULT_RUNS_DIR, RUN_FORMAT, _slug, _write_rows
from featpipe.runtime.allocator import keep_freed_memory
from featpipe.runtime.devices import autocast, check_precision, host_threads, resolve_device

CHECKPOINT = "checkpoint.pt"
# Called after every training batch: (epoch, images done this epoch, epoch size, seconds).
EpochProgress = Callable[[int, int, int, float], None]
DEFAULT_BACKBONE = "tf_efficientnet_lite0"


@dataclass
class FinetuneConfig:
    """Every option of a fine-tune run (recorded in the run, restored on resume)."""

    backbone: str | None = None  # None: the --from run's backbone, else DEFAULT_BACKBONE
    weights: str = "auto"
    image_size: int | None = None
    unfreeze: str = "head"
    gradual: str | None = None
    bn: str = "auto"
    optimizer: str = "adamw"
    lr: float = 1e-3
    wd: float = 1e-4
    lr_mult: list[float] | None = None
    layer_decay: float | None = None
    schedule: str = "cosine"
    warmup_epochs: int = 0
    epochs: int = 5
    batch_size: int = 32
    patience: int = 0
    augment: bool = True
    crop_scale: float = 0.08  # RandomResizedCrop keeps 8–100% of the image (timm's default)
    color_jitter: float = 0.0
    head: str = "linear"
    head_init: str = "kaiming"
    head_scale: float = 1.0
    from_run: str | None = None
    reinit: str | None = None
    seed: int = 0
    device: str = "auto"
    workers: int | None = None  # None: one decoding process per spare core
    # auto: AMP on CUDA (bf16 where supported, else fp16 with loss scaling); on CPU the
    # precision the --from run's features were cached at (so LP-FT starts exactly where fit
    # ended), else fp32.
    precision: str = "auto"


def _from_entry(config: FinetuneConfig) -> dict[str, Any] | None:
    """The cache entry record of the ``--from`` run (its one backbone), or None."""
    if not config.from_run:
        return None
    from featpipe.runs.record import load_run

    entries = load_run(config.from_run).config["entries"]
    if len(entries) != 1:
        raise FeatpipeError(f"--from {config.from_run}: LP-FT needs a single-backbone run")
    return entries[0]


def _precision(config: FinetuneConfig, device: torch.device, entry: dict[str, Any] | None) -> str:
    check_precision(device, config.precision)
    if config.precision != "auto":
        return config.precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return entry["key_fields"]["precision"] if entry else "fp32"


def _resolve_backbone(config: FinetuneConfig, entry: dict[str, Any] | None) -> FinetuneConfig:
    """With ``--from RUN`` the run names the backbone (model, weights, input size), so the run
    directory and the results table record the network that was actually trained."""
    if entry is None:
        return replace(config, backbone=config.backbone or DEFAULT_BACKBONE)
    model = entry["model"]
    size = entry["key_fields"]["transform"]["input_size"][-1]
    if config.backbone not in (None, model):
        raise FeatpipeError(
            f"--backbone {config.backbone}: run {config.from_run} was fitted on {model}; "
            "leave --backbone out when starting from a run"
        )
    if config.image_size not in (None, size):
        raise FeatpipeError(
            f"--image-size {config.image_size}: run {config.from_run} was fitted at {size} px; "
            "leave --image-size out when starting from a run"
        )
    return replace(config, backbone=model, weights=entry["weights"], image_size=size)


class TrainImages(ImageToUint8):
    """Training transform (timm ``create_transform(is_training=True)``), ``uint8`` out."""

    def __init__(self, data_config: dict[str, Any], color_jitter: float, crop_scale: float) -> None:
        self.pil_transform = create_transform(
            **data_config,
            is_training=True,
            use_prefetcher=True,
            scale=(crop_scale, 1.0),
            color_jitter=color_jitter or None,
        )
        self.draft_size = None


@dataclass
class State:
    """Everything a checkpoint holds besides tensors."""

    epoch: int = 0
    step: int = 0
    best_metric: float = -float("inf")
    best_epoch: int = -1  # -1 before any epoch: with --from, the fitted head itself
    start_metric: float | None = None
    history: dict[str, list[Any]] = field(default_factory=dict)


def _build_model(
    config: FinetuneConfig, dataset: Dataset
) -> tuple[FinetuneModel, Backbone, set[str]]:
    """The model, its backbone, and the BN layers without pretrained statistics."""
    n_out = len(dataset.class_names) if dataset.task == "classification" else 1
    if config.from_run:
        from featpipe.use.predict import load_pipeline

        pipeline = load_pipeline(config.from_run)
        if pipeline.run.metrics.get("selection", "val") != "val":
            raise FeatpipeError(
                f"--from {config.from_run}: that head was fitted on every training image "
                f"(chosen by {pipeline.run.metrics['selection']}), so fine-tuning would choose "
                "epochs on images the head has seen; fit it again with --holdout 0.15 (the "
                "same hold-out fine-tuning uses) or give the data a val split"
            )
        backbone = pipeline.backbones[0]
        if pipeline.head.class_names != dataset.class_names:
            raise FeatpipeError(
                f"--from {config.from_run}: the run's classes {pipeline.head.class_names} "
                f"differ from the dataset's {dataset.class_names}"
            )
        head = pipeline.head.to_module().train()
    else:
        backbone = build_backbone(
            BackboneSpec(config.backbone, config.weights, image_size=config.image_size)
        )
        head = fresh_head(
            backbone.num_features, n_out, config.head, config.head_init, config.head_scale
        )
    model = FinetuneModel(backbone.module, head)
    fresh = bn_names(model) if backbone.weights.kind == "none" else set()
    if config.reinit:
        fresh |= set(reinit(model, config.reinit)) & bn_names(model)
    return model, backbone, fresh


def _hold_out(items: list[Item]) -> tuple[list[Item], list[Item]]:
    held = hold_out([i.relpath for i in items], [i.label for i in items])
    return (
        [i for i, h in zip(items, held, strict=True) if not h],
        [i for i, h in zip(items, held, strict=True) if h],
    )


def _loader(
    dataset: Dataset,
    items: list[Item],
    transform: ImageToUint8,
    batch: int,
    workers: int,
    shuffle: bool,
    seed: int,
) -> torch.utils.data.DataLoader:
    return make_loader(
        [str(dataset.root / i.relpath) for i in items],
        transform,
        batch,
        workers,
        pin_memory=False,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed),
    )


def _targets(items: list[Item], index: list[int], task: str) -> torch.Tensor:
    if task == "regression":
        return torch.tensor([items[i].target for i in index], dtype=torch.float32)
    return torch.tensor([items[i].label for i in index], dtype=torch.long)


def _loss(out: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    return F.mse_loss(out.squeeze(1), y) if task == "regression" else F.cross_entropy(out, y)


class Trainer:
    """One fine-tune run in a run directory; call :meth:`run` (it resumes by itself).

    Without ``out`` the run gets a new directory under ``runs_dir``, named after the dataset
    and the (resolved) backbone.
    """

    def __init__(
        self,
        data: str | Path | Dataset,
        config: FinetuneConfig,
        out: Path | None = None,
        runs_dir: Path = DEFAULT_RUNS_DIR,
    ) -> None:
        keep_freed_memory()
        entry = _from_entry(config)
        config = _resolve_backbone(config, entry)
        self.config = config
        self.dataset = data if isinstance(data, Dataset) else scan(data)
        self.out = out or default_out(runs_dir, self.dataset.name, str(config.backbone))
        if self.dataset.task == "none":
            raise FeatpipeError(f"{self.dataset.root}: fine-tuning needs labels")
        self.train_items = [i for i in self.dataset.items if i.split == "train"]
        self.val_items = [i for i in self.dataset.items if i.split == "val"]
        self.test_items = [i for i in self.dataset.items if i.split == "test"]
        if not self.val_items:
            # The best epoch is chosen on validation data, never on test: without a val split
            # (train/ and test/ folders only), a deterministic stratified 15% of train is held out.
            self.train_items, self.val_items = _hold_out(self.train_items)
        if len(self.train_items) < 2 or not self.val_items:
            raise FeatpipeError(
                f"{self.dataset.root}: fine-tuning needs training images and a validation "
                "split to choose the best epoch on"
            )
        if not 0 < config.crop_scale <= 1:
            raise FeatpipeError(f"--crop-scale {config.crop_scale}: use a share in (0, 1]")
        self.device = resolve_device(config.device)
        if config.workers is None:
            # Resolved once and stored with the run: augmentation streams depend on it.
            gpu = self.device.type == "cuda"
            workers = default_workers(len(self.train_items), config.batch_size, gpu=gpu)
            config = replace(config, workers=workers)
            self.config = config
        torch.manual_seed(config.seed)
        self.model, self.backbone, self.fresh_bn = _build_model(config, self.dataset)
        self.model.to(self.device)
        self.channels_last = self.backbone.is_conv
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.normalize = Normalize(
            self.backbone.data_config["mean"], self.backbone.data_config["std"]
        ).to(self.device)
        self.precision = _precision(config, self.device, entry)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        steps = parse_schedule(config.gradual) if config.gradual else [(0, config.unfreeze)]
        self.steps = steps
        self.sets = check_monotone(self.model, steps)
        self.plan = GroupPlan(config.lr, config.wd, config.lr_mult, config.layer_decay)
        self.optimizer: torch.optim.Optimizer | None = None
        self.state = State()
        self.metric = metrics.primary(self.dataset.task)

    # ---------------------------------------------------------------- freezing per epoch
    def _stage(self, epoch: int) -> int:
        return max(i for i, (start, _) in enumerate(self.steps) if start <= epoch)

    def _enter(self, epoch: int, previous_stage: int | None) -> int:
        stage = self._stage(epoch)
        if stage != previous_stage:
            apply_trainable(self.model, self.sets[stage])
            self.model.train()
            apply_bn_mode(self.model, self.config.bn, self.sets[stage], self.fresh_bn)
            groups = param_groups(self.model, self.plan)
            self.optimizer = make_optimizer(self.config.optimizer, groups, self.optimizer)
        else:
            self.model.train()
            apply_bn_mode(self.model, self.config.bn, self.sets[stage], self.fresh_bn)
        return stage

    # ---------------------------------------------------------------- checkpoints
    def _save_checkpoint(self) -> None:
        assert self.optimizer is not None
        tmp = self.out / f"{CHECKPOINT}.tmp-{os.getpid()}"
        torch.save(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "state": asdict(self.state),
                "config": asdict(self.config),
            },
            tmp,
        )
        os.replace(tmp, self.out / CHECKPOINT)

    def _save_best(self) -> None:
        """The best weights so far, written under a temporary name and renamed (atomic)."""
        tmp = self.out / f"best.safetensors.tmp-{os.getpid()}"
        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, str(tmp))
        os.replace(tmp, self.out / "best.safetensors")

    def _resume(self) -> int | None:
        """Load the checkpoint, if any; returns the stage of the last trained epoch."""
        path = self.out / CHECKPOINT
        if not path.exists():
            return None
        saved = torch.load(path, map_location=self.device, weights_only=False)
        if saved["config"] != asdict(self.config):
            raise FeatpipeError(
                f"{self.out} holds a checkpoint of a run with other options: resume it with "
                "the same options, or write to a new --out directory"
            )
        self.model.load_state_dict(saved["model"])
        self.state = State(**saved["state"])
        # The optimizer was saved with the groups of the last trained epoch: rebuild those,
        # load its state, and let the loop move on to the next stage as usual.
        stage = self._enter(max(0, self.state.epoch - 1), None)
        assert self.optimizer is not None
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scaler.load_state_dict(saved["scaler"])
        return stage

    # ---------------------------------------------------------------- training
    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.normalize(images.to(self.device))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.precision):
            return self.model(x).float()

    def _epoch(
        self, epoch: int, stage: int, progress: EpochProgress | None = None
    ) -> dict[str, Any]:
        config = self.config
        seed = config.seed * 100_003 + epoch
        # Every generator this epoch can touch (dropout; timm's crops use `random`, flips torch)
        # starts from (seed, epoch), so a resumed epoch replays exactly.
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        transform = (
            TrainImages(self.backbone.data_config, config.color_jitter, config.crop_scale)
            if config.augment
            else ImageToUint8(self.backbone.data_config, draft=False)
        )
        loader = _loader(
            self.dataset,
            self.train_items,
            transform,
            config.batch_size,
            config.workers,
            shuffle=True,
            seed=seed,
        )
        assert self.optimizer is not None
        steps_per_epoch = len(loader)
        blocks = all_blocks(self.model)
        params = dict(self.model.named_parameters())
        # Running sums stay on the device: one host sync per epoch, not several per step.
        grad_sums = torch.zeros(len(blocks), device=self.device)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        seen = 0
        started = time.perf_counter()
        for batch in loader:
            if len(batch.index) < 2:
                continue  # BatchNorm cannot train on one image
            y = _targets(self.train_items, batch.index, self.dataset.task).to(self.device)
            factor = lr_factor(
                self.state.step,
                steps_per_epoch,
                config.epochs,
                config.schedule,
                config.warmup_epochs,
            )
            for group in self.optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            out = self._forward(batch.images)
            loss = _loss(out, y, self.dataset.task)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)  # gradient norms below are of true gradients
            with torch.no_grad():
                for b, block in enumerate(blocks):
                    grads = [params[p].grad for p in block.params if params[p].grad is not None]
                    if grads:
                        grad_sums[b] += torch.linalg.vector_norm(
                            torch.stack(torch._foreach_norm(grads))
                        )
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.state.step += 1
            n = len(batch.index)
            seen += n
            with torch.no_grad():
                loss_sum += loss.detach() * n
                if self.dataset.task == "classification":
                    correct += (out.argmax(1) == y).sum()
            if progress is not None:
                progress(epoch, seen, len(self.train_items), time.perf_counter() - started)
        grad_means = (grad_sums / max(1, steps_per_epoch)).tolist()
        classification = self.dataset.task == "classification"
        train_metric = float(correct) / seen if classification else float("nan")
        return {
            "train_loss": float(loss_sum) / max(seen, 1),
            "train_metric": train_metric,
            "lr": {g["name"]: g["lr"] for g in self.optimizer.param_groups},
            "grad_norm": {b.name: grad_means[i] for i, b in enumerate(blocks) if grad_means[i] > 0},
            "trainable": int(sum(p.numel() for p in self.model.parameters() if p.requires_grad)),
            "stage": self.steps[stage][1],
        }

    @torch.no_grad()
    def evaluate(self, items: list[Item]) -> tuple[dict[str, float], float, np.ndarray]:
        """Metrics, mean loss and predictions on ``items`` (eval mode)."""
        self.model.eval()
        loader = _loader(
            self.dataset,
            items,
            ImageToUint8(self.backbone.data_config, False),
            max(64, self.config.batch_size),
            self.config.workers,
            False,
            0,
        )
        outs, ys = [], []
        for batch in loader:
            if batch.index:
                outs.append(self._forward(batch.images).cpu())
                ys.append(_targets(items, batch.index, self.dataset.task))
        out, y = torch.cat(outs), torch.cat(ys)
        loss = float(_loss(out, y, self.dataset.task))
        if self.dataset.task == "regression":
            pred = out.squeeze(1).numpy()
            return metrics.regression(y.numpy(), pred), loss, pred
        pred = out.argmax(1).numpy()
        return metrics.classification(y.numpy(), pred, len(self.dataset.class_names)), loss, pred

    def run(
        self, stop_after: int | None = None, progress: EpochProgress | None = None
    ) -> dict[str, Any]:
        """Train (resuming from the checkpoint if there is one); returns the final metrics.

        ``stop_after`` ends this call after that many epochs (the run stays resumable).
        """
        with host_threads(self.device):
            return self._run(stop_after, progress)

    def _run(self, stop_after: int | None, progress: EpochProgress | None) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        stage = self._resume()
        done_now = 0
        start = time.perf_counter()
        if self.config.from_run and self.state.epoch == 0:
            # LP-FT: the fitted head is a candidate too, so fine-tuning never ends below the
            # validation score it started from (strong augmentation can make epoch 1 worse).
            val, _, _ = self.evaluate(self.val_items)
            self.state.start_metric = self.state.best_metric = val[self.metric]
            self._save_best()
        while self.state.epoch < self.config.epochs:
            epoch = self.state.epoch
            stage = self._enter(epoch, stage)
            t0 = time.perf_counter()
            record = self._epoch(epoch, stage, progress)
            record["train_images_per_s"] = len(self.train_items) / (time.perf_counter() - t0)
            val, val_loss, _ = self.evaluate(self.val_items)
            record.update({"epoch": epoch, "val_loss": val_loss, "val_metric": val[self.metric]})
            for key, value in record.items():
                self.state.history.setdefault(key, []).append(value)
            if val[self.metric] > self.state.best_metric:
                self.state.best_metric, self.state.best_epoch = val[self.metric], epoch
                self._save_best()
            self.state.epoch += 1
            self._save_checkpoint()
            done_now += 1
            patience = self.config.patience
            if patience and epoch - self.state.best_epoch >= patience:
                break
            if stop_after is not None and done_now >= stop_after:
                return {"stopped_at_epoch": self.state.epoch}
        return self._finish(time.perf_counter() - start)

    def _finish(self, seconds: float) -> dict[str, Any]:
        from safetensors.torch import load_file

        self.model.load_state_dict(load_file(str(self.out / "best.safetensors")))
        val, _, _ = self.evaluate(self.val_items)
        test = self.evaluate(self.test_items)[0] if self.test_items else {}
        result = {
            "task": self.dataset.task,
            "backbone": self.config.backbone,
            "class_names": self.dataset.class_names,
            "metric": self.metric,
            "best_epoch": self.state.best_epoch,
            "start_val": self.state.start_metric,
            "val": {"mean": val[self.metric], "std": 0.0, "all": [val]},
            "test": {"mean": test.get(self.metric, float("nan")), "std": 0.0, "all": [test]},
            "chosen": {
                "head": "finetune",
                "unfreeze": self.config.gradual or self.config.unfreeze,
                "lr": self.config.lr,
                "bn": self.config.bn,
            },
            "chosen_label": f"finetune({self.config.gradual or self.config.unfreeze})",
            "selection": "val",
            "fit_seconds": seconds,
            "extract_seconds": 0.0,
            "confusion": None,
            "few_shot": [],
        }
        if self.test_items and self.dataset.task == "classification":
            _, _, pred = self.evaluate(self.test_items)
            y = np.array([i.label for i in self.test_items])
            result["confusion"] = metrics.confusion(y, pred, len(self.dataset.class_names))
        result["cam"] = self._cam()
        self._write_run(result, val, test)
        return result

    def _cam(self, count: int = 6) -> str:
        """CAM overlays for the first validation images (``cam.png``), when the head allows."""
        from featpipe.finetuning.cam import class_activation_maps, save_cam_figure

        if self.dataset.task != "classification":
            return ""
        items = self.val_items[:count]
        transform = ImageToUint8(self.backbone.data_config, draft=False)
        images = torch.stack([transform(str(self.dataset.root / i.relpath)) for i in items])
        self.model.eval()
        x = self.normalize(images.to(self.device))
        cams = class_activation_maps(self.model.backbone, self.model.head, x)
        if cams is None:
            return ""
        maps, pred = cams
        save_cam_figure(
            images,
            maps,
            pred,
            [i.label for i in items],
            self.dataset.class_names,
            self.out / "cam.png",
        )
        return "cam.png"

    def _write_run(
        self, result: dict[str, Any], val: dict[str, float], test: dict[str, float]
    ) -> None:
        from featpipe import __version__

        config = asdict(self.config)
        run = {
            "format": RUN_FORMAT,
            "featpipe": __version__,
            "kind": "finetune",
            "created": time.time(),
            "dataset": self.dataset.name,
            "dataset_root": str(self.dataset.root),
            "backbone": self.config.backbone,
            "entries": [],
            "request": config,
            "weights_identity": self.backbone.weights_identity,
        }
        row = {
            "dataset": self.dataset.name,
            "backbone": self.config.backbone,
            "head": "finetune",
            "unfreeze": self.config.gradual or self.config.unfreeze,
            "lr": self.config.lr,
            "wd": self.config.wd,
            "bn": self.config.bn,
            "precision": self.precision,
            "seed": self.config.seed,
            **{f"val_{k}": v for k, v in val.items()},
            **{f"test_{k}": v for k, v in test.items()},
            "fit_seconds": result["fit_seconds"],
            "chosen": True,
            "run": self.out.name,
        }
        curves = [
            {
                "config": result["chosen"],
                "label": result["chosen_label"],
                "seed": self.config.seed,
                "history": self.state.history,
            }
        ]
        (self.out / "run.json").write_text(json.dumps(run, indent=1, default=str))
        (self.out / "metrics.json").write_text(json.dumps(result, indent=1))
        (self.out / "curves.json").write_text(json.dumps(curves))
        _write_rows(self.out / "rows.csv", [row])


def default_out(runs_dir: Path, dataset: str, backbone: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return (
        runs_dir
        / _slug(dataset)
        / _slug(backbone)
        / f"finetune-{stamp}-{random.randrange(16**6):06x}"
    )


def finetune(
    data: str | Path,
    config: FinetuneConfig,
    out: Path | None = None,
    runs_dir: Path = DEFAULT_RUNS_DIR,
    stop_after: int | None = None,
    progress: EpochProgress | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Fine-tune on ``data``; returns the run directory and its metrics."""
    trainer = Trainer(data, config, out, runs_dir)
    return trainer.out, trainer.run(stop_after, progress)

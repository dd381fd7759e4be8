"""The fine-tune loop: epochs, evaluation, the best epoch, and resuming from the checkpoint.

Everything the course material names is explicit: freezing at every granularity
(:mod:`featpipe.finetuning.blocks`), gradual unfreezing with the optimizer rebuilt at each stage
(the state of parameters already training carried over), discriminative learning rates
(multipliers, or timm's layer decay), BatchNorm modes, LP-FT (start from the head the fit stage
chose), a fresh Kaiming/Xavier head, training from scratch, and re-initialising the last blocks.

What the field uses to make fine-tuning on small data work is here too, each opt-in: automatic
augmentation policies and random symmetries (in the training transform), random erasing and
mixup/CutMix on the normalised batch (timm's, in that order, as timm's own training loop does),
an exponential moving average of the weights (evaluated beside the raw ones every epoch; the
better on val is kept), progressive resizing, and test-time augmentation of the final scores.

Reproducible and resumable: each epoch's randomness (shuffling, augmentation, erasing, mixing,
dropout) is seeded from (seed, epoch) in every generator it draws from (Python's, numpy's,
torch's), and a checkpoint with the weights, the optimizer and the EMA weights is written
atomically after every epoch, so a run killed at any moment and resumed ends with the same
weights as an uninterrupted one: no generator state needs saving, because none carries over
from one epoch to the next.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.data.random_erasing import RandomErasing
from timm.loss import SoftTargetCrossEntropy
from timm.utils import ModelEmaV3
from torch import nn

from featpipe.data.datasets import Item
from featpipe.data.dihedral import averaged
from featpipe.data.loader import make_loader
from featpipe.data.train_transform import RandomSymmetries, TrainImages
from featpipe.data.transforms import ImageToUint8, Normalize
from featpipe.errors import ArgumentError, StorageError
from featpipe.finetuning.blocks import all_blocks, apply_trainable, stage_sets
from featpipe.finetuning.checkpoint import Checkpointer
from featpipe.finetuning.config import FinetuneConfig, parse_progressive
from featpipe.finetuning.model import (
    GroupPlan,
    apply_bn_mode,
    build_model,
    make_optimizer,
    param_groups,
)
from featpipe.finetuning.plan import Plan
from featpipe.heads import metrics
from featpipe.heads.schedules import lr_factor
from featpipe.runtime.allocator import keep_freed_memory
from featpipe.runtime.devices import autocast, host_threads

# Called after every training batch: (epoch, images done this epoch, epoch size, seconds).
EpochProgress = Callable[[int, int, int, float], None]


@dataclass
class TrainState:
    """Everything a checkpoint holds besides tensors."""

    epoch: int = 0
    step: int = 0
    best_metric: float = -float("inf")
    best_loss: float = float("inf")
    best_epoch: int = -1  # -1 before any epoch: with a start run, the fitted head itself
    best_weights: str = "raw"  # which weights of the best epoch were kept: raw | ema
    start_metric: float | None = None
    history: dict[str, list[Any]] = field(default_factory=dict)

    def improves(self, metric: float, loss: float, select_by: str) -> bool:
        """Better on val than the best so far, by the run's ``--select-by`` (:func:`better`)."""
        return better(select_by, (metric, loss), (self.best_metric, self.best_loss))


def better(select_by: str, score: tuple[float, float], than: tuple[float, float]) -> bool:
    """Whether the val ``score`` (metric, loss) beats ``than``: on the task's metric (higher is
    better: accuracy, R²), ties broken by the lower loss; or with ``select_by="loss"`` on the
    loss, ties broken by the metric.

    The metric, tie-broken: accuracy saturates on easy or small validation sets while the loss
    still falls (seen: accuracy 1.0 from epoch 1 while val loss went 0.1455 → 0.0697); a strict
    ``>`` alone then keeps the first epoch. The loss: on ELPV's 295 val images one image is 0.34
    points of accuracy, and the best of ten epochs by accuracy was once a one-image spike (val
    0.888 against 0.881, test 0.848); the loss, which every image moves, chose a later epoch
    there (test 0.877; README "Does each addition earn its place?"). For a regression R² orders
    epochs exactly as the validation MSE does, so the two rules agree.
    """
    (metric, loss), (than_metric, than_loss) = score, than
    if select_by == "loss":
        return loss < than_loss or (loss == than_loss and metric > than_metric)
    return metric > than_metric or (metric == than_metric and loss < than_loss)


@dataclass
class Evaluation:
    """A model scored on some items: every metric, the mean loss, the raw outputs (what
    predictions.npz keeps and intervals resample) and, row for row, the position in the items
    of the image each came from (an image that failed to decode has no row)."""

    metrics: dict[str, float]
    loss: float
    outputs: np.ndarray
    index: np.ndarray

    @property
    def pred(self) -> np.ndarray:
        """The predicted classes (classification): the argmax of the outputs."""
        return self.outputs.argmax(axis=1)


def _targets(items: list[Item], index: list[int], task: str) -> torch.Tensor:
    if task == "regression":
        return torch.tensor([items[i].target for i in index], dtype=torch.float32)
    return torch.tensor([items[i].label for i in index], dtype=torch.long)


def _loss(out: torch.Tensor, y: torch.Tensor, task: str, smoothing: float = 0.0) -> torch.Tensor:
    """MSE, cross-entropy (with label ``smoothing``: training only), or with mixed batches
    (``y`` one row of class weights per image, already smoothed by timm's ``Mixup``) timm's
    soft-target cross-entropy."""
    if task == "regression":
        return F.mse_loss(out.squeeze(1), y)
    if y.ndim == 2:
        return SoftTargetCrossEntropy()(out, y)
    return F.cross_entropy(out, y, label_smoothing=smoothing)


class Trainer:
    """Trains the model a :class:`Plan` describes; :meth:`run` resumes from the checkpoint."""

    def __init__(self, plan: Plan) -> None:
        keep_freed_memory()
        self.plan = plan
        self.config: FinetuneConfig = plan.config
        self.device = plan.device
        self.precision = plan.precision
        self.checkpointer = Checkpointer(plan.out)
        torch.manual_seed(self.config.seed)
        self.model, self.backbone, self.fresh_bn = build_model(plan)
        self.model.to(self.device)
        self.channels_last = self.backbone.is_conv
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.normalize = Normalize(
            self.backbone.data_config["mean"], self.backbone.data_config["std"]
        ).to(self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.stages = self.config.stages
        self.sets = stage_sets(self.model, self.stages)
        self.groups = GroupPlan(
            self.config.lr, self.config.wd, self.config.lr_mult, self.config.layer_decay
        )
        self.optimizer: torch.optim.Optimizer | None = None
        self.state = TrainState()
        config = self.config
        # Built after the model is on its device: the average lives beside it. Constant decay
        # (no warm-up), so after k steps it is exactly the exponential average of w_0 … w_k.
        self.ema = ModelEmaV3(self.model, decay=config.ema) if config.ema else None
        self.erasing = (
            RandomErasing(config.random_erasing, mode="pixel", device=self.device)
            if config.random_erasing
            else None
        )
        # With soft labels the targets arrive as class probabilities, already smoothed
        # (:meth:`train_targets`): timm mixes such dense rows as they are in its multi-label mode.
        soft = plan.soft_labels is not None
        self.mixup = (
            Mixup(
                mixup_alpha=config.mixup,
                cutmix_alpha=config.cutmix,
                label_smoothing=0.0 if soft else config.smoothing,
                num_classes=plan.n_outputs,
                multi_label=soft,
            )
            if config.mixes
            else None
        )
        self.sizes = parse_progressive(config.progressive) if config.progressive else []
        self._check_sizes()

    def _check_sizes(self) -> None:
        """Each progressive size must fit the network: a ViT built for one patch grid refuses
        others (one image through the model in eval mode: no statistic moves, nothing drawn)."""
        if not self.sizes:
            return
        self.model.eval()
        for _, size in self.sizes:
            images = torch.zeros(1, 3, size, size, dtype=torch.uint8)
            try:
                with torch.no_grad():
                    self.forward(images)
            except Exception as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ArgumentError(
                    "progressive",
                    f"{size}: {self.config.backbone} cannot take {size} px images ({first}); "
                    "progressive resizing needs a network that takes any size (convnets do)",
                ) from None

    def train_size(self, epoch: int) -> int:
        """The side of the training images in ``epoch`` (progressive resizing), in px."""
        native = int(self.backbone.data_config["input_size"][-1])
        return ([native] + [size for start, size in self.sizes if start <= epoch])[-1]

    # ---------------------------------------------------------------- freezing per epoch
    def stage_of(self, epoch: int) -> int:
        return max(i for i, stage in enumerate(self.stages) if stage.epoch <= epoch)

    def enter(self, epoch: int, previous_stage: int | None) -> int:
        """Set what trains in ``epoch``; a new stage rebuilds the optimizer (state carried)."""
        stage = self.stage_of(epoch)
        if stage != previous_stage:
            apply_trainable(self.model, self.sets[stage])
        self.model.train()
        apply_bn_mode(self.model, self.config.bn, self.sets[stage], self.fresh_bn)
        if stage != previous_stage:
            groups = param_groups(self.model, self.groups)
            self.optimizer = make_optimizer(self.config.optimizer, groups, self.optimizer)
        return stage

    # ---------------------------------------------------------------- checkpoints
    def _snapshot(self) -> dict[str, Any]:
        assert self.optimizer is not None
        snapshot = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "state": asdict(self.state),
            "config": asdict(self.config),
        }
        if self.ema is not None:
            snapshot["ema"] = self.ema.module.state_dict()
        return snapshot

    def _resume(self) -> int | None:
        """Load the checkpoint, if any; returns the stage of the last trained epoch."""
        saved = self.checkpointer.load(self.device)
        if saved is None:
            return None
        try:
            same = FinetuneConfig(**saved["config"]) == self.config
        except (TypeError, ValueError, KeyError):
            same = False
        if not same:
            raise StorageError(
                f"{self.plan.out} holds a checkpoint of a run with other options: resume it "
                "with the same options, or write to a new output directory"
            )
        self.model.load_state_dict(saved["model"])
        if self.ema is not None:
            self.ema.module.load_state_dict(saved["ema"])
        self.state = TrainState(**saved["state"])
        # The optimizer was saved with the groups of the last trained epoch: rebuild those,
        # load its state, and let the loop move on to the next stage as usual.
        stage = self.enter(max(0, self.state.epoch - 1), None)
        assert self.optimizer is not None
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scaler.load_state_dict(saved["scaler"])
        return stage

    # ---------------------------------------------------------------- training
    def loader(
        self, items: list[Item], transform: ImageToUint8, batch: int, shuffle: bool, seed: int
    ) -> torch.utils.data.DataLoader:
        root = self.plan.dataset.root
        return make_loader(
            [str(root / i.relpath) for i in items],
            transform,
            batch,
            self.config.workers,
            pin_memory=False,
            shuffle=shuffle,
            generator=torch.Generator().manual_seed(seed),
        )

    def forward(self, images: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
        """Logits (or values) of ``model`` (default: the one training) for a batch of ``uint8``
        images, at the run's precision."""
        return self.logits(self.normalize(images.to(self.device)), model)

    def logits(self, x: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
        """Logits (or values) for a normalised batch."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.precision):
            return (self.model if model is None else model)(x).float()

    def augment_batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Random erasing, then mixup/CutMix, of a normalised batch (in place, as timm does);
        with mixing the targets become one row of class weights per image. An odd batch is
        mixed without its last image (timm mixes each image with its mirror in the batch)."""
        if self.erasing is not None:
            x = self.erasing(x)
        if self.mixup is not None:
            even = len(x) - len(x) % 2
            x, y = self.mixup(x[:even], y[:even])
        return x, y

    def train_targets(self, index: list[int]) -> torch.Tensor:
        """The training targets of the images at ``index``: labels (or values), or with soft
        labels one row of class probabilities per image (one-hot where the file lists none),
        label-smoothed here as ``F.cross_entropy`` and timm smooth a one-hot target: each row
        keeps ``1 - s`` and spreads ``s`` over all classes."""
        plan, train = self.plan, self.plan.train
        if plan.soft_labels is None:
            return _targets(train, index, plan.dataset.task)
        rows = plan.soft_labels.targets([train[i] for i in index], plan.n_outputs)
        smoothing = self.config.smoothing
        return torch.from_numpy(rows * (1 - smoothing) + smoothing / plan.n_outputs)

    def train_transform(self, epoch: int) -> ImageToUint8 | RandomSymmetries:
        """Path → ``uint8`` tensor for ``epoch``'s training images, at its size."""
        config = self.config
        data_config = dict(self.backbone.data_config)
        size = self.train_size(epoch)
        data_config["input_size"] = (3, size, size)
        transform = (
            TrainImages(
                data_config,
                config.color_jitter,
                config.crop_scale,
                auto_augment=config.auto_augment,
            )
            if config.augment
            else ImageToUint8(data_config, draft=False)
        )
        return RandomSymmetries(transform) if config.rot90 else transform

    def train_epoch(
        self, epoch: int, stage: int, progress: EpochProgress | None = None
    ) -> dict[str, Any]:
        """One pass over the training images; returns the epoch's record."""
        config = self.config
        task = self.plan.dataset.task
        train = self.plan.train
        seed = config.seed * 100_003 + epoch
        # Every generator this epoch can touch (dropout and flips use torch's; timm's crops and
        # erasing Python's; augmentation policies and mixup numpy's) starts from (seed, epoch),
        # so a resumed epoch replays exactly.
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        transform = self.train_transform(epoch)
        loader = self.loader(train, transform, config.batch_size, shuffle=True, seed=seed)
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
            y = self.train_targets(batch.index).to(self.device)
            x, target = self.augment_batch(self.normalize(batch.images.to(self.device)), y)
            factor = lr_factor(
                config.schedule,
                self.state.step,
                config.epochs * steps_per_epoch,
                config.warmup * steps_per_epoch,
            )
            for group in self.optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            out = self.logits(x)
            loss = _loss(out, target, task, config.smoothing)
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
            if self.ema is not None:
                self.ema.update(self.model)
            self.state.step += 1
            n = len(x)
            seen += n
            with torch.no_grad():
                loss_sum += loss.detach() * n
                if task == "classification":  # a mixed image counts for its larger share
                    labels = target.argmax(1) if target.ndim == 2 else target
                    correct += (out.argmax(1) == labels).sum()
            if progress is not None:
                progress(epoch, seen, len(train), time.perf_counter() - started)
        grad_means = (grad_sums / max(1, steps_per_epoch)).tolist()
        return {
            "train_loss": float(loss_sum) / max(seen, 1),
            "train_metric": float(correct) / seen if task == "classification" else float("nan"),
            "lr": {g["name"]: g["lr"] for g in self.optimizer.param_groups},
            "grad_norm": {b.name: grad_means[i] for i, b in enumerate(blocks) if grad_means[i] > 0},
            "trainable": int(sum(p.numel() for p in self.model.parameters() if p.requires_grad)),
            "stage": self.stages[stage].spec,
            "image_size": self.train_size(epoch),
        }

    def outputs(self, images: torch.Tensor, model: nn.Module, tta: str) -> torch.Tensor:
        """Logits (or values) of a batch; with test-time augmentation the log of the softmax
        averaged over the views (values averaged), so the loss and the argmax read the same."""
        if tta == "none":
            return self.forward(images, model)
        if self.plan.dataset.task == "regression":
            return averaged(lambda view: self.forward(view, model), images, tta)
        probs = averaged(lambda view: torch.softmax(self.forward(view, model), 1), images, tta)
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()

    @torch.no_grad()
    def evaluate(
        self, items: list[Item], model: nn.Module | None = None, tta: str = "none"
    ) -> Evaluation:
        """Metrics, mean loss and predictions of ``model`` (default: the one training; eval
        mode) on ``items``, with the test-time augmentation ``tta`` names."""
        dataset = self.plan.dataset
        model = self.model if model is None else model
        model.eval()
        transform = ImageToUint8(self.backbone.data_config, False)
        loader = self.loader(items, transform, max(64, self.config.batch_size), False, 0)
        outs, index = [], []
        for batch in loader:
            if batch.index:
                outs.append(self.outputs(batch.images, model, tta).cpu())
                index += batch.index
        out, y = torch.cat(outs), _targets(items, index, dataset.task)
        loss = float(_loss(out, y, dataset.task))
        outputs = out.float().numpy()
        scores = metrics.from_outputs(dataset.task, len(dataset.class_names), y.numpy(), outputs)
        return Evaluation(scores, loss, outputs, np.array(index, dtype=np.int64))

    def run(self, stop_after: int | None = None, progress: EpochProgress | None = None) -> bool:
        """Train (resuming from the checkpoint if there is one); True once every epoch ran or
        early stopping ended the run, False when ``stop_after`` epochs of this call ended it
        (the run stays resumable)."""
        with host_threads(self.device):
            return self._run(stop_after, progress)

    def _run(self, stop_after: int | None, progress: EpochProgress | None) -> bool:
        stage = self._resume()
        done_now = 0
        if self.plan.selects and self.plan.start is not None and self.state.epoch == 0:
            # LP-FT: the fitted head is a candidate too, so fine-tuning never ends below the
            # validation score it started from (strong augmentation can make epoch 1 worse).
            start = self.evaluate(self.plan.val)
            self.state.start_metric = self.state.best_metric = start.metrics[self.plan.metric]
            self.state.best_loss = start.loss
            self.checkpointer.save_best(self.model.state_dict())
        while self.state.epoch < self.plan.epochs and not self.stopped_early():
            epoch = self.state.epoch
            stage = self.enter(epoch, stage)
            t0 = time.perf_counter()
            record = self.train_epoch(epoch, stage, progress)
            record["train_images_per_s"] = len(self.plan.train) / (time.perf_counter() - t0)
            record["epoch"] = epoch
            if self.plan.selects:
                record |= self.choose(epoch)
            for key, value in record.items():
                self.state.history.setdefault(key, []).append(value)
            self.state.epoch += 1
            self.checkpointer.save(self._snapshot())
            done_now += 1
            if stop_after is not None and done_now >= stop_after:
                return self.state.epoch >= self.plan.epochs or self.stopped_early()
        return True

    def stopped_early(self) -> bool:
        """Whether early stopping ended the run: ``patience`` epochs since the best one. Asked
        before every epoch, so a run resumed after it stopped trains no further."""
        patience = self.config.patience
        last = self.state.epoch - 1
        return bool(patience) and self.plan.selects and last - self.state.best_epoch >= patience

    def choose(self, epoch: int) -> dict[str, Any]:
        """Score ``epoch``'s weights (and their EMA) on val and keep them if they beat the best
        so far; returns the epoch record's val columns."""
        metric = self.plan.metric
        val = self.evaluate(self.plan.val)
        record = {"val_loss": val.loss, "val_metric": val.metrics[metric]}
        candidates = [("raw", val, self.model)]
        if self.ema is not None:
            ema_val = self.evaluate(self.plan.val, self.ema.module)
            record["val_loss_ema"] = ema_val.loss
            record["val_metric_ema"] = ema_val.metrics[metric]
            candidates.append(("ema", ema_val, self.ema.module))
        for weights, evaluation, model in candidates:  # the EMA wins only if better
            score = evaluation.metrics[metric]
            if self.state.improves(score, evaluation.loss, self.config.select_by):
                self.state.best_metric, self.state.best_loss = score, evaluation.loss
                self.state.best_epoch, self.state.best_weights = epoch, weights
                self.checkpointer.save_best(model.state_dict())
        return record

    def load_best(self) -> None:
        self.model.load_state_dict(self.checkpointer.load_best())

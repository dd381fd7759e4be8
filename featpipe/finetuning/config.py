"""The options of a fine-tune run, validated once when the config is made.

Everything here is checked without a model, so a typo fails in a fraction of a second instead of
after the backbone loaded; what needs the model (block names in ``unfreeze``) is checked when the
trainer builds it. The config is recorded in the run and in every checkpoint, and a resume must
match it exactly.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from featpipe.choices import PRECISIONS
from featpipe.errors import ArgumentError
from featpipe.heads.config import OPTIMIZERS
from featpipe.heads.config import TORCH_HEADS as HEADS
from featpipe.heads.schedules import SCHEDULES  # one rule per name, shared with fit's heads

DEFAULT_BACKBONE = "tf_efficientnet_lite0"
BN_MODES = ("auto", "train", "freeze-affine", "freeze-stats")
HEAD_INITS = ("kaiming", "xavier")


@dataclass(frozen=True)
class Stage:
    """From ``epoch`` on, ``spec`` says what trains (a freezing spec, see ``blocks``)."""

    epoch: int
    spec: str


def parse_schedule(text: str) -> list[Stage]:
    """``"0:head,2:last:2,4:layer3,6:all"`` → stages at epochs 0, 2, 4 and 6."""
    steps: list[tuple[int, str]] = []
    for token in (t.strip() for t in text.split(",") if t.strip()):
        head, sep, rest = token.partition(":")
        if sep and head.isdigit():
            steps.append((int(head), rest))
        elif steps:
            steps[-1] = (steps[-1][0], f"{steps[-1][1]},{token}")
        else:
            raise ArgumentError("gradual", f"{text}: start with EPOCH:SPEC, e.g. 0:head,2:last:2")
    epochs = [e for e, _ in steps]
    if not epochs or epochs[0] != 0 or any(b <= a for a, b in itertools.pairwise(epochs)):
        raise ArgumentError(
            "gradual", f"{text}: epochs must start at 0 and increase strictly (got {epochs})"
        )
    return [Stage(epoch, spec) for epoch, spec in steps]


def _choice(param: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ArgumentError(param, f"{value}: choose one of {', '.join(choices)}")


def _at_least(param: str, value: float, low: float, what: str) -> None:
    if not value >= low:
        raise ArgumentError(param, f"{value}: use {what}")


@dataclass(frozen=True)
class FinetuneConfig:
    """Every option of a fine-tune run (recorded in the run, restored on resume)."""

    backbone: str | None = None  # None: the from_run's backbone, else DEFAULT_BACKBONE
    weights: str = "auto"
    image_size: int | None = None
    unfreeze: str = "head"
    gradual: str | None = None
    bn: str = "auto"
    optimizer: str = "adamw"
    lr: float = 1e-3
    wd: float = 1e-4
    lr_mult: tuple[float, ...] | None = None
    layer_decay: float | None = None
    schedule: str = "cosine"
    warmup: int = 0  # epochs of linear warm-up
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
    # precision the from_run's features were cached at (so LP-FT starts exactly where fit
    # ended), else fp32.
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.lr_mult is not None:
            # Lists arrive from Python callers and JSON; one hashable, comparable shape.
            object.__setattr__(self, "lr_mult", tuple(float(m) for m in self.lr_mult))
        _choice("bn", self.bn, BN_MODES)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("head", self.head, HEADS)
        _choice("head_init", self.head_init, HEAD_INITS)
        _choice("precision", self.precision, PRECISIONS)
        if not 0 < self.crop_scale <= 1:
            raise ArgumentError("crop_scale", f"{self.crop_scale}: use a share in (0, 1]")
        if not self.lr > 0:
            raise ArgumentError("lr", f"{self.lr}: use a positive learning rate")
        _at_least("wd", self.wd, 0, "0 or more")
        _at_least("epochs", self.epochs, 1, "1 or more")
        _at_least("batch_size", self.batch_size, 2, "2 or more (BatchNorm trains on batches)")
        _at_least("patience", self.patience, 0, "0 (off) or more epochs")
        _at_least("warmup", self.warmup, 0, "0 or more epochs")
        _at_least("color_jitter", self.color_jitter, 0, "0 (off) or more")
        if not self.head_scale > 0:
            raise ArgumentError("head_scale", f"{self.head_scale}: use a positive scale")
        if self.workers is not None:
            _at_least("workers", self.workers, 0, "0 or more worker processes")
        if self.lr_mult is not None and (not self.lr_mult or min(self.lr_mult) <= 0):
            raise ArgumentError("lr_mult", f"{self.lr_mult}: use positive multipliers")
        if self.layer_decay is not None:
            if not 0 < self.layer_decay <= 1:
                raise ArgumentError("layer_decay", f"{self.layer_decay}: use a factor in (0, 1]")
            if self.lr_mult is not None:
                raise ArgumentError(
                    "layer_decay", f"{self.layer_decay}: give multipliers or layer decay, not both"
                )
        if self.gradual:
            parse_schedule(self.gradual)  # a bad schedule fails here, before the model loads

    @property
    def stages(self) -> list[Stage]:
        """What trains from which epoch: the gradual schedule, or ``unfreeze`` throughout."""
        return parse_schedule(self.gradual) if self.gradual else [Stage(0, self.unfreeze)]

    @property
    def freezing(self) -> str:
        """The freezing as a label (results tables, run rows)."""
        return self.gradual or self.unfreeze

"""The options of a fine-tune run, declared once and validated when the config is made.

Everything here is checked without a model, so a typo fails in a fraction of a second instead of
after the backbone loaded; what needs the model (block names in ``unfreeze``) is checked when the
trainer builds it. The config is recorded in the run and in every checkpoint, and a resume must
match it exactly.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path

from featpipe.backbones.spec import CROP_PCT, CROP_PCT_HELP
from featpipe.backbones.weights import WEIGHTS_HELP
from featpipe.choices import PRECISIONS, SELECT_BY, TRIVIAL_AUGMENT, TTA
from featpipe.errors import ArgumentError
from featpipe.heads.config import OPTIMIZERS
from featpipe.heads.config import TORCH_HEADS as HEADS
from featpipe.heads.schedules import SCHEDULES  # one rule per name, shared with fit's heads
from featpipe.options import Interval, OneOf, auto_int, check, floats, option

DEFAULT_BACKBONE = "tf_efficientnet_lite0"
BN_MODES = ("auto", "train", "freeze-affine", "freeze-stats")
HEAD_INITS = ("kaiming", "xavier")


@dataclass(frozen=True)
class Stage:
    """From ``epoch`` on, ``spec`` says what trains (a freezing spec, see ``blocks``)."""

    epoch: int
    spec: str


def _epoch_steps(text: str, param: str, what: str, example: str) -> list[tuple[int, str]]:
    """``"0:a,2:b"`` → ``[(0, "a"), (2, "b")]``, epochs from 0 and strictly increasing; a token
    without ``EPOCH:`` continues the one before (freezing specs hold commas)."""
    steps: list[tuple[int, str]] = []
    for token in (t.strip() for t in text.split(",") if t.strip()):
        head, sep, rest = token.partition(":")
        if sep and head.isdigit():
            steps.append((int(head), rest))
        elif steps:
            steps[-1] = (steps[-1][0], f"{steps[-1][1]},{token}")
        else:
            raise ArgumentError(param, f"{text}: start with EPOCH:{what}, e.g. {example}")
    epochs = [e for e, _ in steps]
    if not epochs or epochs[0] != 0 or any(b <= a for a, b in itertools.pairwise(epochs)):
        raise ArgumentError(
            param, f"{text}: epochs must start at 0 and increase strictly (got {epochs})"
        )
    return steps


def parse_schedule(text: str) -> list[Stage]:
    """``"0:head,2:last:2,4:layer3,6:all"`` → stages at epochs 0, 2, 4 and 6."""
    return [
        Stage(epoch, spec)
        for epoch, spec in _epoch_steps(text, "gradual", "SPEC", "0:head,2:last:2")
    ]


def parse_progressive(text: str) -> list[tuple[int, int]]:
    """``"0:160,3:224"`` → train at 160 px from epoch 0 and at 224 px from epoch 3."""
    sizes = []
    for epoch, size in _epoch_steps(text, "progressive", "SIZE", "0:160,3:224"):
        if not size.isdigit() or int(size) < 16:
            raise ArgumentError(
                "progressive", f"{text}: {size} is not an image size; use whole pixels, 16 or more"
            )
        sizes.append((epoch, int(size)))
    return sizes


# timm's auto-augment strings (``timm.data.auto_augment``): a policy, then dash-separated
# sections of a key and a number. Checked here, without importing timm, so a typo fails before
# the model loads (timm itself skips a section without a digit in silence).
_AUGMENT_KEYS = {
    "rand": ("m", "n", "p", "mstd", "mmax", "inc"),
    "augmix": ("m", "w", "d", "a", "b", "mstd"),
    **{policy: ("mstd",) for policy in ("original", "originalr", "v0", "v0r", "3a")},
}
_RAND_OP_SETS = ("tweights", "t3a", "t3aw")  # RandAugment's ``t<name>`` op-set sections


def check_auto_augment(text: str) -> None:
    """Refuse what timm's auto-augment parser would refuse, or silently misread."""
    if text == TRIVIAL_AUGMENT:
        return
    policy, *sections = text.split("-")
    keys = _AUGMENT_KEYS.get(policy)
    if keys is None:
        raise ArgumentError(
            "auto_augment",
            f"{text}: use timm's rand-…, augmix-… or original/v0/3a strings (e.g. "
            f"rand-m9-mstd0.5-inc1), or {TRIVIAL_AUGMENT}",
        )
    for section in sections:
        if policy == "rand" and section in _RAND_OP_SETS:
            continue
        match = re.fullmatch(r"([a-z]+)(\d+(?:\.\d+)?)", section)
        if match is None or match[1] not in keys:
            raise ArgumentError(
                "auto_augment",
                f"{text}: {section} is not a section of {policy}; it takes "
                f"{', '.join(keys)}, each followed by a number",
            )


def _path_text(value: Path | None, param: str) -> str | None:
    """``--from`` and ``--soft-labels`` arrive as paths; the config records them as text (JSON,
    checkpoints)."""
    return str(value) if value else None


@dataclass(frozen=True)
class FinetuneConfig:
    """Every option of a fine-tune run (recorded in the run, restored on resume), declared once:
    ``featpipe finetune``'s flags are generated from these fields (:mod:`featpipe.options`)."""

    backbone: str | None = option(
        None,
        flag="--backbone",
        short="-b",
        help=f"timm name or tv/<name>; default: the --from run's, else {DEFAULT_BACKBONE}.",
    )
    weights: str = option("auto", short="-w", help=WEIGHTS_HELP)
    image_size: int | None = option(None, help="Override the model's input size (px).")
    crop_pct: float | None = option(None, constraint=CROP_PCT, help=CROP_PCT_HELP)
    unfreeze: str = option(
        "head", help="head | all | last:N | NAME | type:norm | param:GLOB, comma-joined."
    )
    gradual: str | None = option(None, help="Schedule EPOCH:SPEC,… e.g. 0:head,2:last:2,4:all")
    bn: str = option("auto", constraint=OneOf(BN_MODES), help=" | ".join(BN_MODES))
    optimizer: str = option(
        "adamw", constraint=OneOf(OPTIMIZERS), help="sgd (momentum 0.9) | adam | adamw"
    )
    lr: float = option(
        1e-3,
        constraint=Interval(0, None, "neither", "a positive learning rate"),
        help="Base learning rate.",
    )
    wd: float = option(1e-4, constraint=Interval(0, None, what="0 or more"), help="Weight decay.")
    lr_mult: tuple[float, ...] | None = option(
        None,
        help="Per-chunk multipliers, input side first, e.g. 0.1,0.33,1",
        cli_type=str | None,
        parse=floats,
    )
    layer_decay: float | None = option(
        None,
        constraint=Interval(0, 1, "right", "a factor in (0, 1]"),
        help="timm layer-decay factor, e.g. 0.75",
    )
    schedule: str = option("cosine", constraint=OneOf(SCHEDULES), help=" | ".join(SCHEDULES))
    warmup: int = option(
        0, constraint=Interval(0, what="0 or more epochs"), help="Warm-up epochs (linear)."
    )
    epochs: int = option(
        5, constraint=Interval(1, what="1 or more"), help="Passes over the training split."
    )
    batch_size: int = option(
        32,
        constraint=Interval(2, what="2 or more (BatchNorm trains on batches)"),
        help="Images per training step.",
    )
    patience: int = option(
        0,
        constraint=Interval(0, what="0 (off) or more epochs"),
        help="Early stopping patience (epochs); 0 = off.",
    )
    augment: bool = option(True, help="RandomResizedCrop + flip (timm).")
    crop_scale: float = option(
        0.08,  # RandomResizedCrop keeps 8–100% of the image (timm's default)
        constraint=Interval(0, 1, "right", "a share in (0, 1]"),
        help="Smallest share of the image a random crop keeps.",
    )
    color_jitter: float = option(
        0.0,
        constraint=Interval(0, what="0 (off) or more"),
        help="Brightness/contrast/saturation jitter strength; 0 = off.",
    )
    auto_augment: str | None = option(
        None,
        help="RandAugment/AugMix/AutoAugment as timm writes it (rand-m9-mstd0.5-inc1, "
        f"augmix-m5-w4-d2, original), or {TRIVIAL_AUGMENT}; replaces --color-jitter.",
    )
    rot90: bool = option(
        False,
        help="Random 90° rotations and vertical flips: each of the 8 symmetries of the square "
        "(for rotation-symmetric images, e.g. solar cells, micrographs).",
    )
    random_erasing: float = option(
        0.0,
        constraint=Interval(0, 1, what="a probability in [0, 1]"),
        help="Probability of erasing a random rectangle of an image (timm's, per pixel noise).",
    )
    mixup: float = option(
        0.0,
        constraint=Interval(0, what="0 (off) or a positive alpha"),
        help="Mixup alpha (timm's Mixup, soft-target loss), e.g. 0.2; 0 = off.",
    )
    cutmix: float = option(
        0.0,
        constraint=Interval(0, what="0 (off) or a positive alpha"),
        help="CutMix alpha, e.g. 1.0; with --mixup each batch is one or the other; 0 = off.",
    )
    smoothing: float = option(
        0.0,
        constraint=Interval(0, 1, "left", "a share in [0, 1)"),
        help="Label smoothing of the training loss (timm's), e.g. 0.1: each target keeps "
        "1 - s and spreads s over all classes; val and test losses stay plain; 0 = off.",
    )
    drop_path: float = option(
        0.0,
        constraint=Interval(0, 1, "left", "a probability in [0, 1)"),
        help="Stochastic depth while training (timm's drop_path_rate, torchvision's "
        "stochastic_depth_prob): the last block is skipped with this probability, earlier ones "
        "less, as the network's builder spreads it; evaluation is unchanged; 0 = off.",
    )
    soft_labels: str | None = option(
        None,
        help="CSV path,<class>,… of class probabilities per training image (paths as the "
        "dataset names them), trained on instead of one-hot labels where listed (e.g. "
        "annotators' doubt); val and test stay scored on the hard labels.",
        cli_type=Path | None,
        parse=_path_text,
    )
    # Resolved from the file when the run is planned, so a resume with another file is refused.
    soft_labels_sha256: str | None = option(
        None, cli=False, help="SHA-256 of the soft-labels file (filled in by the plan)."
    )
    ema: float | None = option(
        None,
        constraint=Interval(0, 1, "neither", "a decay in (0, 1)"),
        help="Keep an exponential moving average of the weights with this decay (e.g. 0.999); "
        "kept instead of the raw weights where it scores better on val.",
    )
    progressive: str | None = option(
        None,
        help="Progressive resizing EPOCH:SIZE,… e.g. 0:160,3:224 (training images only; "
        "evaluation stays at --image-size).",
    )
    tta: str = option(
        "none",
        constraint=OneOf(TTA),
        help="Test-time augmentation of the final val/test scores (and predict's default): "
        "none | hflip (2 views) | dihedral (8: rotations and flips); softmax averaged.",
    )
    select_by: str = option(
        "metric",
        constraint=OneOf(SELECT_BY),
        help="What chooses the epoch, EMA and TTA on val: metric (accuracy, R²; ties by the loss) "
        "| loss (ties by the metric): the loss moves with every image, not only those that "
        "cross the boundary.",
    )
    refit: bool = option(
        False,
        help="Once val has chosen the epoch, the weights (raw or EMA) and the TTA, train again "
        "from the start on train + val for that many epochs of the same schedule (from the "
        "--from run's own head, refitted on train + val if it was) and keep that network, as "
        "fit refits its head; val scores stay the choice's, test shows both.",
    )
    head: str = option("linear", constraint=OneOf(HEADS), help="Fresh head: linear | mlp")
    head_init: str = option("kaiming", constraint=OneOf(HEAD_INITS), help=" | ".join(HEAD_INITS))
    head_scale: float = option(
        1.0,
        constraint=Interval(0, None, "neither", "a positive scale"),
        help="Scale the fresh head's init.",
    )
    from_run: str | None = option(
        None,
        flag="--from",
        help="LP-FT: start from this run's head.",
        cli_type=Path | None,
        parse=_path_text,
    )
    reinit: str | None = option(None, help="Re-initialise blocks, e.g. last:2 (hybrid).")
    seed: int = option(0, help="Seed for the head init, data order and augmentation.")
    device: str = option("auto", help="auto | cpu | cuda | cuda:N")
    workers: int | None = option(
        None,  # None: one decoding process per spare core
        constraint=Interval(0, what="0 or more worker processes"),
        help="DataLoader worker processes, or auto.",
        cli_type=str,
        cli_default="auto",
        parse=auto_int,
    )
    # auto: AMP on CUDA (bf16 where supported, else fp16 with loss scaling); on CPU the
    # precision the from_run's features were cached at (so LP-FT starts exactly where fit
    # ended), else fp32.
    precision: str = option(
        "auto",
        constraint=OneOf(PRECISIONS),
        help="auto (AMP on CUDA; on CPU the --from run's, else fp32) | fp32 | bf16 | fp16",
    )

    def __post_init__(self) -> None:
        if self.lr_mult is not None:
            # Lists arrive from Python callers and JSON; one hashable, comparable shape.
            object.__setattr__(self, "lr_mult", tuple(float(m) for m in self.lr_mult))
        check(self)
        if self.lr_mult is not None and (not self.lr_mult or min(self.lr_mult) <= 0):
            raise ArgumentError("lr_mult", f"{self.lr_mult}: use positive multipliers")
        if self.layer_decay is not None and self.lr_mult is not None:
            raise ArgumentError(
                "layer_decay", f"{self.layer_decay}: give multipliers or layer decay, not both"
            )
        if self.gradual:
            parse_schedule(self.gradual)  # a bad schedule fails here, before the model loads
        if self.progressive:
            parse_progressive(self.progressive)
        if self.auto_augment is not None:
            check_auto_augment(self.auto_augment)
            if not self.augment:
                raise ArgumentError(
                    "auto_augment",
                    f"{self.auto_augment}: it is part of the training transform that "
                    "--no-augment turns off; drop one of them",
                )

    @property
    def mixes(self) -> bool:
        """Whether batches are mixed (mixup or CutMix): the loss then takes soft targets."""
        return self.mixup > 0 or self.cutmix > 0

    @property
    def stages(self) -> list[Stage]:
        """What trains from which epoch: the gradual schedule, or ``unfreeze`` throughout."""
        return parse_schedule(self.gradual) if self.gradual else [Stage(0, self.unfreeze)]

    @property
    def freezing(self) -> str:
        """The freezing as a label (results tables, run rows)."""
        return self.gradual or self.unfreeze

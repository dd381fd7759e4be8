"""The network being fine-tuned: backbone + head, freezing, BatchNorm modes, optimizer groups.

``FinetuneModel`` is the frozen embedder of :mod:`featpipe.backbones.build` with a head on top. It
exposes ``group_matcher`` in timm's format, so timm's own layer-decay parameter groups
(``timm.optim.param_groups_layer_decay``) work on it for timm and torchvision backbones alike.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from featpipe.backbones.build import Backbone, BackboneSpec, build_backbone
from featpipe.errors import DataError
from featpipe.finetuning.blocks import all_blocks, trainable_set
from featpipe.heads.config import HeadConfig
from featpipe.heads.mlp import build_head

if TYPE_CHECKING:
    from featpipe.finetuning.plan import Plan

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)


class FinetuneModel(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's format: one exact-name regex per block, in order; the head last."""
        blocks = all_blocks(self)
        return {
            f"g{i}": [(r"^(?:" + "|".join(re.escape(p) for p in block.params) + r")$", (i,))]
            for i, block in enumerate(blocks)
        }


def fresh_head(dim: int, n_out: int, kind: str, init: str, scale: float) -> nn.Module:
    """A new head: linear, or the course material's MLP; Kaiming or Xavier, optionally scaled.

    ``kind`` and ``init`` were validated with the config."""
    # fit's builder, so a fine-tuned head is the network fit trains for the same options
    head = build_head(HeadConfig(head=kind), dim, n_out)
    for module in head.modules():
        if isinstance(module, nn.Linear):
            if init == "kaiming":
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            else:
                nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
            module.weight.data.mul_(scale)
    return head


def build_model(plan: Plan) -> tuple[FinetuneModel, Backbone, set[str]]:
    """The model a plan trains, its backbone, and the BN layers without pretrained statistics.

    With a start run the backbone is rebuilt from the run's record and must have the same
    weights identity (else the head would sit on another network), and the head is the run's
    own fitted head, preprocessing included.
    """
    config = plan.config
    start = plan.start
    if start is not None:
        backbone = build_backbone(start.spec, drop_path=config.drop_path)
        if backbone.weights_identity != start.weights_identity:
            raise DataError(
                f"run {start.path} was fitted on {start.spec.model} weights "
                f"{start.weights_identity}, but {start.spec.weights} now gives "
                f"{backbone.weights_identity}: restore those weights to start from this run"
            )
        head = start.head.to_module().train()
    else:
        spec = BackboneSpec(
            str(config.backbone),
            config.weights,
            image_size=config.image_size,
            crop_pct=config.crop_pct,
        )
        backbone = build_backbone(spec, drop_path=config.drop_path)
        head = fresh_head(
            backbone.num_features, plan.n_outputs, config.head, config.head_init, config.head_scale
        )
    model = FinetuneModel(backbone.module, head)
    fresh = bn_names(model) if backbone.weights.kind == "none" else set()
    if config.reinit:
        fresh |= set(reinit(model, config.reinit)) & bn_names(model)
    return model, backbone, fresh


def bn_names(model: FinetuneModel) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, BN_TYPES)}


def reinit(model: FinetuneModel, spec: str) -> list[str]:
    """Re-initialise the backbone blocks ``spec`` names (the hybrid strategy); returns them."""
    names = trainable_set(model, spec, "reinit") - set(all_blocks(model)[-1].params)
    touched = set()
    for module_name, module in model.named_modules():
        own = {f"{module_name}.{p}" for p, _ in module.named_parameters(recurse=False)}
        if own and own <= names and hasattr(module, "reset_parameters"):
            module.reset_parameters()
            touched.add(module_name)
    return sorted(touched)


def apply_bn_mode(
    model: FinetuneModel, mode: str, trainable: set[str], fresh: set[str] | None = None
) -> None:
    """Put every BatchNorm layer in the state ``mode`` asks for (call after ``model.train()``).

    ``auto``: pretrained BN layers keep their running statistics (held in eval mode; γ and β
    still train with their block), because switching them to batch statistics shifts every
    feature under a head fitted on cached features: measured on Fashion-MNIST at 64 px with
    EfficientNet-Lite0, the feature std halved and the LP head's loss went from 0.05 to 23.
    BN layers in randomly initialised blocks (``--weights none``, ``--reinit``; ``fresh``
    names them) have no statistics worth keeping and train.
    ``train``: every BN layer updates its running statistics (what ``model.train()`` does).
    ``freeze-affine``: γ and β fixed everywhere, running statistics still updating.
    ``freeze-stats``: every BN layer in eval mode and γ, β fixed: nothing in it changes.
    """
    for name, module in model.named_modules():
        if not isinstance(module, BN_TYPES) or name.startswith("head."):
            continue
        own = [f"{name}.{p}" for p, _ in module.named_parameters(recurse=False)]
        if mode == "auto":
            module.train(name in (fresh or set()) and any(p in trainable for p in own))
        else:
            module.train(mode != "freeze-stats")
            if mode != "train":
                for param in module.parameters(recurse=False):
                    param.requires_grad_(False)


@dataclass
class GroupPlan:
    """How learning rates are spread over the trainable parameters."""

    lr: float
    wd: float
    lr_mult: tuple[float, ...] | None = None
    layer_decay: float | None = None


def param_groups(model: FinetuneModel, plan: GroupPlan) -> list[dict[str, Any]]:
    """Optimizer groups over trainable parameters, each with ``base_lr`` and a name.

    With ``layer_decay`` the groups are timm's ``param_groups_layer_decay``; with ``lr_mult``
    (e.g. 0.1, 0.33, 1 as in the course material) the backbone blocks that train *now* are cut
    into as many contiguous chunks, the first chunk (input side) taking the first multiplier, and
    the head takes the last. So ``last:3`` with three multipliers gives the three unfrozen blocks
    0.1, 0.33 and 1 (what users expect), and at each stage of gradual unfreezing the chunks are
    cut again over what that stage trains: a block's multiplier can change between stages.
    """
    if plan.layer_decay is not None:
        from timm.optim import param_groups_layer_decay

        groups = param_groups_layer_decay(model, weight_decay=plan.wd, layer_decay=plan.layer_decay)
        out = []
        for i, group in enumerate(groups):
            scale = group.pop("lr_scale", 1.0)
            out.append(
                {
                    **group,
                    "lr": plan.lr * scale,
                    "base_lr": plan.lr * scale,
                    "name": f"layer-decay-{i}",
                }
            )
        return [g for g in out if g["params"]]
    params = dict(model.named_parameters())
    mults = plan.lr_mult or (1.0,)
    *body, head = [
        (block, [params[p] for p in block.params if params[p].requires_grad])
        for block in all_blocks(model)
    ]
    body = [(block, trainable) for block, trainable in body if trainable]
    size = max(1, math.ceil(len(body) / len(mults)))
    chunked = [(b, t, mults[min(i // size, len(mults) - 1)]) for i, (b, t) in enumerate(body)]
    groups = []
    for block, trainable, mult in [*chunked, (*head, mults[-1])]:
        groups.append(
            {
                "params": trainable,
                "lr": plan.lr * mult,
                "base_lr": plan.lr * mult,
                "weight_decay": plan.wd,
                "name": block.name,
            }
        )
    return groups


def make_optimizer(
    kind: str, groups: list[dict[str, Any]], previous: torch.optim.Optimizer | None = None
) -> torch.optim.Optimizer:
    """Build the optimizer (``kind`` was validated with the config); the state (momentum, Adam
    moments, step counts) of parameters that were already training is carried over unchanged,
    so a stage change of gradual unfreezing does not restart their moments."""
    if kind == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(groups, momentum=0.9)
    elif kind == "adam":
        optimizer = torch.optim.Adam(groups)
    else:
        optimizer = torch.optim.AdamW(groups)
    if previous is not None:
        for group in optimizer.param_groups:
            for param in group["params"]:
                if param in previous.state:
                    optimizer.state[param] = previous.state[param]
    return optimizer

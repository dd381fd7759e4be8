"""Blocks of a backbone, and what a freezing spec makes trainable.

Blocks come from the libraries themselves: timm's ``group_matcher`` (the grouping its layer-decay
optimizer uses) for timm models, and the per-family stage table of :mod:`featpipe.backbones.tv`
for torchvision models. They are ordered from the input to the output; the head is the last.

A freezing spec is a comma-separated union of:

``head``           the head only (always trainable);
``all``            everything;
``last:N``         the last N backbone blocks;
``NAME``           a block or module name as ``featpipe inspect`` prints it (``blocks.5``,
                   ``layer4``), by prefix;
``type:KIND``      every layer of a kind: ``norm`` (BatchNorm, LayerNorm, GroupNorm), ``conv``,
                   ``linear``, or ``bias`` (every bias);
``param:GLOB``     parameters whose name matches a glob (``*.bn*.weight``).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from torch import nn

from featpipe.backbones.tv import TorchvisionEmbedder, expand_stages
from featpipe.errors import ArgumentError
from featpipe.finetuning.config import Stage

NORMS = (nn.BatchNorm2d, nn.BatchNorm1d, nn.LayerNorm, nn.GroupNorm)
KINDS = {"norm": NORMS, "conv": (nn.Conv2d,), "linear": (nn.Linear,)}


@dataclass
class Block:
    name: str
    params: list[str] = field(default_factory=list)


def _common_parts(paths: list[list[str]]) -> list[str]:
    """The longest leading run of path components shared by all ``paths``."""
    common: list[str] = []
    for parts in zip(*paths, strict=False):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return common


def _unit(param: str) -> str:
    """``blocks.6.0.conv_pw.weight`` → ``blocks.6.0``; ``conv_head.weight`` → ``conv_head``."""
    parts = param.split(".")[:-1] or param.split(".")
    numbered = [i for i, p in enumerate(parts[:3]) if p.isdigit()]
    return ".".join(parts[: numbered[-1] + 1]) if numbered else parts[0]


def _timm_blocks(backbone: nn.Module, prefix: str) -> list[Block]:
    from timm.models import group_parameters

    groups = group_parameters(backbone, backbone.group_matcher(coarse=False))
    blocks = []
    for names in groups.values():
        units = sorted({_unit(n) for n in names})
        common = _common_parts([u.split(".") for u in units])
        label = ".".join(common) if common else "+".join(units)
        blocks.append(Block(label, [prefix + n for n in names]))
    return blocks


def _tv_blocks(embedder: TorchvisionEmbedder, prefix: str) -> list[Block]:
    names = [n for n, _ in embedder.named_parameters()]
    blocks = []
    for stage in expand_stages(embedder.model, embedder.family):
        start = f"model.{stage}."
        blocks.append(Block(stage, [prefix + n for n in names if n.startswith(start)]))
    pooled = [prefix + n for n in names if n.startswith("pool.")]
    if pooled:
        blocks.append(Block("pool", pooled))
    return blocks


def backbone_blocks(model: nn.Module) -> list[Block]:
    """Blocks of ``model.backbone``, input side first; unmatched parameters join the first."""
    backbone = model.backbone
    prefix = "backbone."
    if isinstance(backbone, TorchvisionEmbedder):
        blocks = _tv_blocks(backbone, prefix)
    elif hasattr(backbone, "group_matcher"):
        blocks = _timm_blocks(backbone, prefix)
    else:
        inner = getattr(backbone, "model", backbone)  # TimmIntermediateEmbedder
        blocks = _timm_blocks(inner, prefix + "model.")
    covered = {p for b in blocks for p in b.params}
    rest = [n for n, _ in model.named_parameters() if n.startswith(prefix) and n not in covered]
    if rest:
        blocks[0].params = rest + blocks[0].params
    return [b for b in blocks if b.params]


def all_blocks(model: nn.Module) -> list[Block]:
    head = [n for n, _ in model.named_parameters() if n.startswith("head.")]
    return [*backbone_blocks(model), Block("head", head)]


def _by_name(model: nn.Module, name: str) -> set[str]:
    params = [n for n, _ in model.named_parameters()]
    for base in ("backbone.", "backbone.model."):
        hit = {p for p in params if p.startswith(base + name + ".")}
        if hit:
            return hit
    return set()


def _by_kind(model: nn.Module, kind: str, param: str) -> set[str]:
    if kind == "bias":
        return {n for n, _ in model.named_parameters() if n.endswith(".bias")}
    if kind not in KINDS:
        raise ArgumentError(param, f"type:{kind}: choose type:norm, conv, linear or bias")
    out = set()
    for name, module in model.named_modules():
        if isinstance(module, KINDS[kind]):
            out |= {f"{name}.{p}" for p, _ in module.named_parameters(recurse=False)}
    return out


def trainable_set(model: nn.Module, spec: str, param: str = "unfreeze") -> set[str]:
    """Parameter names that ``spec`` makes trainable (the head always is); errors name ``param``."""
    blocks = all_blocks(model)
    params = {n for n, _ in model.named_parameters()}
    chosen = set(blocks[-1].params)
    for item in (i.strip() for i in spec.split(",") if i.strip()):
        if item == "head":
            continue
        if item == "all":
            chosen |= params
        elif item.startswith("last:"):
            count = item[5:]
            if not count.isdigit():
                raise ArgumentError(param, f"{item}: write last:N with a whole number N")
            body = blocks[:-1]
            for block in body[max(0, len(body) - int(count)) :]:
                chosen |= set(block.params)
        elif item.startswith("type:"):
            chosen |= _by_kind(model, item[5:], param)
        elif item.startswith("param:"):
            chosen |= set(fnmatch.filter(params, item[6:]))
        else:
            hit = {p for b in blocks if b.name == item for p in b.params} or _by_name(model, item)
            if not hit:
                names = [b.name for b in blocks]
                raise ArgumentError(
                    param,
                    f"{item}: no block or module of that name; blocks are "
                    f"{', '.join(names)} (see featpipe inspect for module names)",
                )
            chosen |= hit
    return chosen


def apply_trainable(model: nn.Module, names: set[str]) -> None:
    for name, param in model.named_parameters():
        param.requires_grad_(name in names)


def stage_sets(model: nn.Module, stages: list[Stage]) -> list[set[str]]:
    """What each stage trains; each must keep everything the previous stage trained."""
    param = "gradual" if len(stages) > 1 else "unfreeze"
    sets = [trainable_set(model, stage.spec, param) for stage in stages]
    for stage, before, after in zip(stages[1:], sets, sets[1:], strict=False):
        if not before <= after:
            lost = sorted(before - after)
            raise ArgumentError(
                "gradual",
                f"{stage.epoch}:{stage.spec}: would freeze again what an earlier stage trained "
                f"(e.g. {lost[0]}); unfreezing must only grow",
            )
    return sets

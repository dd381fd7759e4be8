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
import itertools
from dataclasses import dataclass, field

from torch import nn

from featpipe.backbones.tv import TorchvisionEmbedder, expand_stages
from featpipe.errors import FeatpipeError

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


def _by_kind(model: nn.Module, kind: str) -> set[str]:
    if kind == "bias":
        return {n for n, _ in model.named_parameters() if n.endswith(".bias")}
    if kind not in KINDS:
        raise FeatpipeError(f"--unfreeze type:{kind}: choose type:norm, conv, linear or bias")
    out = set()
    for name, module in model.named_modules():
        if isinstance(module, KINDS[kind]):
            out |= {f"{name}.{p}" for p, _ in module.named_parameters(recurse=False)}
    return out


def trainable_set(model: nn.Module, spec: str) -> set[str]:
    """Parameter names that ``spec`` makes trainable (the head always is)."""
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
                raise FeatpipeError(f"--unfreeze {item}: write last:N with a whole number N")
            body = blocks[:-1]
            for block in body[max(0, len(body) - int(count)) :]:
                chosen |= set(block.params)
        elif item.startswith("type:"):
            chosen |= _by_kind(model, item[5:])
        elif item.startswith("param:"):
            chosen |= set(fnmatch.filter(params, item[6:]))
        else:
            hit = {p for b in blocks if b.name == item for p in b.params} or _by_name(model, item)
            if not hit:
                names = [b.name for b in blocks]
                raise FeatpipeError(
                    f"--unfreeze {item}: no block or module of that name; blocks are "
                    f"{', '.join(names)} (see featpipe inspect for module names)"
                )
            chosen |= hit
    return chosen


def apply_trainable(model: nn.Module, names: set[str]) -> None:
    for name, param in model.named_parameters():
        param.requires_grad_(name in names)


def parse_schedule(text: str) -> list[tuple[int, str]]:
    """``"0:head,2:last:2,4:layer3,6:all"`` → ``[(0, "head"), (2, "last:2"), …]``."""
    steps: list[tuple[int, str]] = []
    for token in (t.strip() for t in text.split(",") if t.strip()):
        head, sep, rest = token.partition(":")
        if sep and head.isdigit():
            steps.append((int(head), rest))
        elif steps:
            steps[-1] = (steps[-1][0], f"{steps[-1][1]},{token}")
        else:
            raise FeatpipeError(f"--gradual {text}: start with EPOCH:SPEC, e.g. 0:head,2:last:2")
    epochs = [e for e, _ in steps]
    if epochs[0] != 0 or any(b <= a for a, b in itertools.pairwise(epochs)):
        raise FeatpipeError(
            f"--gradual {text}: epochs must start at 0 and increase strictly (got {epochs})"
        )
    return steps


def check_monotone(model: nn.Module, steps: list[tuple[int, str]]) -> list[set[str]]:
    """Each step must keep everything the previous step trained; returns the sets."""
    sets = [trainable_set(model, spec) for _, spec in steps]
    for (epoch, spec), before, after in zip(steps[1:], sets, sets[1:], strict=False):
        if not before <= after:
            lost = sorted(before - after)
            raise FeatpipeError(
                f"--gradual: the step at epoch {epoch} ({spec}) would freeze again what an "
                f"earlier step trained (e.g. {lost[0]}); unfreezing must only grow"
            )
    return sets

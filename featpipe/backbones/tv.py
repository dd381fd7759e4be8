"""What featpipe needs to know about each torchvision classification family.

timm models share one interface (``forward_features``, ``reset_classifier``, ``group_matcher``).
torchvision models do not, so a small table per family says: how to run the trunk up to the
last feature map (or token sequence), which attribute is the classifier, which norm its head
applies after pooling, and which named stages the fine-tune stage can unfreeze. Parameter names
stay exactly torchvision's, so checkpoints and stage names read the same as in torchvision.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from featpipe.errors import ArgumentError


def _resnet_trunk(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    return m.layer4(m.layer3(m.layer2(m.layer1(x))))


def _features_trunk(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m.features(x)


def _densenet_trunk(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.relu(m.features(x))


def _layers_trunk(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m.layers(x)


def _regnet_trunk(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m.trunk_output(m.stem(x))


def _shufflenet_trunk(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = m.maxpool(m.conv1(x))
    return m.conv5(m.stage4(m.stage3(m.stage2(x))))


def _swin_trunk(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m.permute(m.norm(m.features(x)))


def _vit_tokens(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = m._process_input(x)
    cls = m.class_token.expand(x.shape[0], -1, -1)
    return m.encoder(torch.cat([cls, x], dim=1))


@dataclass(frozen=True)
class Family:
    """How to get pooled-ready features and named stages out of one torchvision family."""

    pattern: str
    trunk: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    classifier: str
    stages: tuple[str, ...]  # module names in unfreeze order, first (input side) to last
    tokens: bool = False  # trunk returns [B, 1 + L, D] instead of NCHW
    post_norm: str | None = None  # a norm inside the classifier that precedes the linear layer


FAMILIES: tuple[Family, ...] = (
    Family(
        r"(resnet|resnext|wide_resnet)\d",
        _resnet_trunk,
        "fc",
        ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4"),
    ),
    Family(r"regnet_", _regnet_trunk, "fc", ("stem", "trunk_output")),
    Family(r"densenet", _densenet_trunk, "classifier", ("features",)),
    Family(r"mnasnet", _layers_trunk, "classifier", ("layers",)),
    Family(
        r"shufflenet_v2", _shufflenet_trunk, "fc", ("conv1", "stage2", "stage3", "stage4", "conv5")
    ),
    Family(r"swin_", _swin_trunk, "head", ("features", "norm")),
    Family(r"convnext_", _features_trunk, "classifier", ("features",), post_norm="classifier.0"),
    Family(
        r"(mobilenet_v[23]|efficientnet_|vgg|alexnet|squeezenet)",
        _features_trunk,
        "classifier",
        ("features",),
    ),
    Family(r"vit_", _vit_tokens, "heads", ("conv_proj", "encoder"), tokens=True),
)


def family_of(name: str) -> Family:
    for family in FAMILIES:
        if re.match(family.pattern, name):
            return family
    raise ArgumentError(
        "backbone",
        f"tv/{name}: this torchvision family is not supported for embeddings; "
        "use its timm equivalent (see featpipe models)",
    )


def expand_stages(model: nn.Module, family: Family) -> list[str]:
    """Stage names, with a ``Sequential`` container split into its children (``features.3``)."""
    names: list[str] = []
    for stage in family.stages:
        module = model.get_submodule(stage)
        children = list(module.named_children())
        if isinstance(module, nn.Sequential) and len(children) > 1:
            names.extend(f"{stage}.{child}" for child, _ in children)
        else:
            names.append(stage)
    return names


class TorchvisionEmbedder(nn.Module):
    """A torchvision classifier with its classifier removed and a pooling in its place."""

    def __init__(self, model: nn.Module, name: str, pool: nn.Module) -> None:
        super().__init__()
        self.family = family_of(name)
        self.model = model
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.family.trunk(self.model, x))

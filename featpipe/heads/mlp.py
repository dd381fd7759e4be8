"""The torch head architecture: one builder for fit's heads and fine-tuning's.

A ``linear`` head is one ``nn.Linear``. An ``mlp`` head is the course material's recipe,
``[BN] → (Linear → ReLU → [BN] → [Dropout]) × depth → Linear``, with ``hidden`` units per layer
(0 means twice the feature dimension), BatchNorm when ``bn`` and dropout when ``dropout`` > 0.
The stacked trainer copies each trained head into this module, and fine-tuning starts from it,
so a head fitted on cached features and a head fine-tuned with its backbone are the same
network for the same options.
"""

from __future__ import annotations

import itertools

from torch import nn

from featpipe.errors import ArgumentError
from featpipe.heads.config import TORCH_HEADS, HeadConfig

BN_MOMENTUM = 0.1
BN_EPS = 1e-5


def hidden_width(config: HeadConfig, dim: int) -> int:
    """The MLP's width: ``hidden``, or 2·D when it is 0."""
    return config.hidden or 2 * dim


def layer_sizes(config: HeadConfig, dim: int, n_out: int) -> list[int]:
    """Widths from input to output: ``[D, n_out]`` (linear) or ``[D, H, …, H, n_out]``."""
    if config.head not in TORCH_HEADS:
        raise ArgumentError("head", f"{config.head}: choose one of {', '.join(TORCH_HEADS)}")
    depth = config.depth if config.head == "mlp" else 0
    return [dim] + [hidden_width(config, dim)] * depth + [n_out]


def uses_bn(config: HeadConfig) -> bool:
    return config.head == "mlp" and config.bn


def build_head(config: HeadConfig, dim: int, n_out: int) -> nn.Sequential:
    """A freshly initialised head (PyTorch's default initialisation) for ``dim`` features."""
    sizes = layer_sizes(config, dim, n_out)
    bn = uses_bn(config)

    def norm(size: int) -> nn.BatchNorm1d:
        return nn.BatchNorm1d(size, eps=BN_EPS, momentum=BN_MOMENTUM)

    layers: list[nn.Module] = [norm(dim)] if bn else []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
            if bn:
                layers.append(norm(fan_out))
            if config.dropout > 0:
                layers.append(nn.Dropout(config.dropout))
    return nn.Sequential(*layers)

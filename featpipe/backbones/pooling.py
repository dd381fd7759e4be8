"""Pool a feature map or a token sequence into one embedding vector per image.

Global average pooling is the default, as in the course material: it is what makes a convnet's
input size flexible and what the pretrained classifier was trained on. Max and the concatenation
avg‖max are the usual alternatives; for vision transformers, the CLS token or the mean of the
patch tokens.
"""

from __future__ import annotations

import torch
from torch import nn


class MapPool(nn.Module):
    """Pool an NCHW map; ``post`` (a norm taking NCHW) is applied to each pooled vector."""

    def __init__(self, mode: str, post: nn.Module | None = None) -> None:
        super().__init__()
        if mode not in ("avg", "max", "avgmax"):
            raise ValueError(f"pool '{mode}' needs tokens; feature maps take avg, max or avgmax")
        self.mode = mode
        self.post = post if post is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = []
        if self.mode in ("avg", "avgmax"):
            pooled.append(x.mean(dim=(2, 3), keepdim=True))
        if self.mode in ("max", "avgmax"):
            pooled.append(x.amax(dim=(2, 3), keepdim=True))
        return torch.cat([self.post(p).flatten(1) for p in pooled], dim=1)


class TokenPool(nn.Module):
    """Pool ``[B, 1 + L, D]`` tokens whose first token is the CLS token."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "cls":
            return x[:, 0]
        patches = x[:, 1:]
        if self.mode == "cls+avg":  # DINOv2's linear-evaluation features
            return torch.cat([x[:, 0], patches.mean(dim=1)], dim=1)
        if self.mode == "avg":
            return patches.mean(dim=1)
        if self.mode == "max":
            return patches.amax(dim=1)
        return torch.cat([patches.mean(dim=1), patches.amax(dim=1)], dim=1)

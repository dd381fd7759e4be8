"""Class activation maps: where in the image the head's evidence comes from.

With global average pooling and a linear head, a class score is a weighted sum of channel
means, so the same weights applied to the final feature map *before* pooling localise the
evidence (Zhou et al., 2016; the course material's argument for GAP). Standardisation in front
of the head is a per-channel scale and folds into the weights; PCA, L2 normalisation or an MLP
head break the argument, and so do layers between the pooling and the head (timm's MobileNetV3
pools, then applies ``conv_head``): then no CAM is drawn, and the run says why.

The final map of a small input is a few cells (3×3 at 96 px); bilinear upsampling of 9 numbers
is still a blob. Fully convolutional backbones take any input size, so the maps are computed on
the image at a larger size, where the final map has at least :data:`MIN_GRID` cells a side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from featpipe.backbones.tv import TorchvisionEmbedder
from featpipe.heads.preprocess import PreprocessModule


def linear_view(head: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The head as one linear map on pooled features, if it is one."""
    layers = [m for m in head.modules() if not isinstance(m, nn.Sequential)]
    scale: torch.Tensor | None = None
    shift: torch.Tensor | None = None
    if layers and isinstance(layers[0], PreprocessModule):
        pre = layers.pop(0)
        if pre.l2norm or pre.pca:
            return None
        scale, shift = 1 / pre.scale, -pre.mean / pre.scale
    if len(layers) != 1 or not isinstance(layers[0], nn.Linear):
        return None
    weight, bias = layers[0].weight, layers[0].bias
    if scale is not None and shift is not None:
        bias = bias + weight @ shift
        weight = weight * scale
    return weight.detach(), bias.detach()


class NotApplicable(Exception):
    """CAM does not apply to this model or head; the message says why."""


# Cells a side of the final map that the figure's maps are computed at (at least).
MIN_GRID = 7


def feature_map(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The final NCHW map that average pooling reduces straight into the head's input."""
    if isinstance(backbone, TorchvisionEmbedder):
        fmap = backbone.family.trunk(backbone.model, x)
    elif hasattr(backbone, "forward_features") and getattr(backbone, "global_pool", None):
        if getattr(backbone.global_pool, "pool_type", "") != "avg":
            raise NotApplicable("the backbone does not average-pool its final map")
        fmap = backbone.forward_features(x)
    else:
        raise NotApplicable("the backbone has no final map to localise evidence on")
    if fmap.ndim != 4:
        raise NotApplicable("the backbone's final features are not a spatial map")
    return fmap


@torch.no_grad()
def cam_size(backbone: nn.Module, size: int, device: torch.device) -> tuple[int, int]:
    """The input size the maps are computed at, and the final map's side at ``size``."""
    grid = feature_map(backbone, torch.zeros(1, 3, size, size, device=device)).shape[-1]
    return size * math.ceil(MIN_GRID / max(1, grid)), grid


@torch.no_grad()
def class_activation_maps(
    backbone: nn.Module, head: nn.Module, x: torch.Tensor, classes: torch.Tensor
) -> np.ndarray:
    """Maps ``[B, H, W]`` in 0..1 of ``classes`` (one per image), at the size of ``x``.

    Raises :class:`NotApplicable` when the head is not one linear map on the average-pooled
    final map (an MLP, PCA, or layers between pooling and head such as ``conv_head``).
    """
    view = linear_view(head)
    if view is None:
        raise NotApplicable("the head is not linear (an MLP, PCA or L2 normalisation)")
    weight, _ = view
    fmap = feature_map(backbone, x)
    if fmap.shape[1] != weight.shape[1]:
        raise NotApplicable(
            f"the final map has {fmap.shape[1]} channels but the head reads {weight.shape[1]} "
            "features: layers between the pooling and the head (such as conv_head)"
        )
    cams = torch.einsum("bchw,bc->bhw", fmap.float(), weight[classes.to(weight.device)])
    cams = F.interpolate(
        cams.unsqueeze(1), size=x.shape[-2:], mode="bilinear", align_corners=False
    ).squeeze(1)
    low = cams.flatten(1).min(1).values.view(-1, 1, 1)
    high = cams.flatten(1).max(1).values.view(-1, 1, 1)
    return ((cams - low) / (high - low).clamp_min(1e-8)).cpu().numpy()


@dataclass(frozen=True)
class TileRow:
    """One class of the figure: validation images predicted right and predicted wrong."""

    label: int
    correct: list[int]
    wrong: list[int]


def pick_tiles(
    labels: np.ndarray, pred: np.ndarray, per_side: int = 2, max_classes: int = 8
) -> list[TileRow]:
    """Up to ``per_side`` right and ``per_side`` wrong images of each class (up to
    ``max_classes``; the classes with the most errors first when there are more)."""
    classes = sorted(set(labels.tolist()))
    errors = {c: int(np.sum((labels == c) & (pred != c))) for c in classes}
    if len(classes) > max_classes:
        classes = sorted(sorted(classes, key=lambda c: -errors[c])[:max_classes])
    rows = []
    for c in classes:
        of_class = np.flatnonzero(labels == c)
        right = of_class[pred[of_class] == c][:per_side]
        wrong = of_class[pred[of_class] != c][:per_side]
        rows.append(TileRow(c, right.tolist(), wrong.tolist()))
    return rows


def save_cam_figure(
    rows: list[TileRow],
    images: dict[int, np.ndarray],
    maps: dict[int, np.ndarray],
    pred: np.ndarray,
    class_names: list[str],
    out: Path,
    per_side: int = 2,
) -> Path:
    """A row per class: correct predictions on the left, wrong ones on the right, each image
    (``HWC`` uint8) overlaid with the map of the class the model predicted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 2 * per_side
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.2 * cols, 2.4 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        cells = [(i, True) for i in row.correct] + [None] * (per_side - len(row.correct))
        cells += [(i, False) for i in row.wrong] + [None] * (per_side - len(row.wrong))
        for c, (ax, cell) in enumerate(zip(axes[r], cells, strict=True)):
            ax.axis("off")
            if cell is None:
                if c in (0, per_side):
                    side = "correct" if c == 0 else "wrong"
                    ax.text(
                        0.5,
                        0.5,
                        f"no {side}\n{class_names[row.label]}",
                        ha="center",
                        va="center",
                        fontsize=8,
                        transform=ax.transAxes,
                    )
                continue
            index, right = cell
            ax.imshow(images[index])
            ax.imshow(maps[index], cmap="jet", alpha=0.45)
            colour = "darkgreen" if right else "darkred"
            ax.set_title(
                f"true {class_names[row.label]}\npred {class_names[pred[index]]}",
                fontsize=8,
                color=colour,
            )
    fig.suptitle("class activation maps: correct (left) and wrong (right) predictions")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out

"""Class activation maps: where in the image the head's evidence comes from.

With global average pooling and a linear head, a class score is a weighted sum of channel
means, so the same weights applied to the final feature map *before* pooling localise the
evidence (Zhou et al., 2016; the course material's argument for GAP). Standardisation in front
of the head is a per-channel scale and folds into the weights; PCA, L2 normalisation or an MLP
head break the argument, and then no CAM is drawn.
"""

from __future__ import annotations

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


def feature_map(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """The final NCHW map that average pooling reduces (None for non-convolutional models)."""
    if isinstance(backbone, TorchvisionEmbedder):
        fmap = backbone.family.trunk(backbone.model, x)
    elif hasattr(backbone, "forward_features") and getattr(backbone, "global_pool", None):
        if getattr(backbone.global_pool, "pool_type", "") != "avg":
            return None
        fmap = backbone.forward_features(x)
    else:
        return None
    return fmap if fmap.ndim == 4 else None


@torch.no_grad()
def class_activation_maps(
    backbone: nn.Module, head: nn.Module, x: torch.Tensor
) -> tuple[np.ndarray, np.ndarray] | None:
    """``(maps [B, H, W] in 0..1 for the predicted class, predicted classes)``, or None."""
    view = linear_view(head)
    if view is None:
        return None
    fmap = feature_map(backbone, x)
    if fmap is None:
        return None
    weight, bias = view
    logits = fmap.mean(dim=(2, 3)) @ weight.t() + bias
    pred = logits.argmax(dim=1)
    cams = torch.einsum("bchw,bc->bhw", fmap, weight[pred])
    cams = F.interpolate(
        cams.unsqueeze(1), size=x.shape[-2:], mode="bilinear", align_corners=False
    ).squeeze(1)
    low = cams.flatten(1).min(1).values.view(-1, 1, 1)
    high = cams.flatten(1).max(1).values.view(-1, 1, 1)
    return ((cams - low) / (high - low).clamp_min(1e-8)).cpu().numpy(), pred.cpu().numpy()


def save_cam_figure(
    images: torch.Tensor,
    maps: np.ndarray,
    pred: np.ndarray,
    labels: list[int],
    class_names: list[str],
    out: Path,
) -> Path:
    """Overlay each map on its image (uint8 input), titled with prediction and truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(2.4 * n, 2.8), squeeze=False)
    for i, ax in enumerate(axes[0]):
        ax.imshow(images[i].permute(1, 2, 0).numpy())
        ax.imshow(maps[i], cmap="jet", alpha=0.45)
        ax.set_title(f"pred {class_names[pred[i]]}\ntrue {class_names[labels[i]]}", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out

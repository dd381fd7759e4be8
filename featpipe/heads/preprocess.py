"""Feature preprocessing fitted on the training split only: standardise, L2-normalise, PCA.

Stored as plain arrays (mean, scale, projection), so a saved head needs no pickle, and expressed
as torch operations, so an exported model applies exactly the same arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn


@dataclass
class Preprocessor:
    """``x → ((x − mean) / scale) → L2-normalise? → PCA?``, with parameters from train."""

    standardize: bool = True
    l2norm: bool = False
    pca: int = 0
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def fit(self, X: np.ndarray) -> Preprocessor:
        X = np.asarray(X, dtype=np.float64)
        dim = X.shape[1]
        mean = X.mean(axis=0) if self.standardize else np.zeros(dim)
        scale = X.std(axis=0) if self.standardize else np.ones(dim)
        scale[scale < 1e-8] = 1.0  # constant features stay constant instead of exploding
        self.arrays = {"mean": mean.astype(np.float32), "scale": scale.astype(np.float32)}
        if self.pca:
            Z = self._scale_norm(X.astype(np.float32))
            center = Z.mean(axis=0)
            _, _, vt = np.linalg.svd(Z - center, full_matrices=False)
            self.arrays["pca_center"] = center.astype(np.float32)
            self.arrays["pca_components"] = np.ascontiguousarray(vt[: self.pca].T, np.float32)
        return self

    def _scale_norm(self, X: np.ndarray) -> np.ndarray:
        Z = (X - self.arrays["mean"]) / self.arrays["scale"]
        if self.l2norm:
            Z = Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)
        return Z

    def transform(self, X: np.ndarray) -> np.ndarray:
        Z = self._scale_norm(np.asarray(X, dtype=np.float32))
        if self.pca:
            Z = (Z - self.arrays["pca_center"]) @ self.arrays["pca_components"]
        return Z.astype(np.float32, copy=False)

    def to_module(self) -> nn.Module:
        return PreprocessModule(self)


class PreprocessModule(nn.Module):
    """The same arithmetic as :meth:`Preprocessor.transform`, for export."""

    def __init__(self, pre: Preprocessor) -> None:
        super().__init__()
        self.l2norm = pre.l2norm
        self.pca = bool(pre.pca)
        for name, value in pre.arrays.items():
            self.register_buffer(name, torch.from_numpy(np.ascontiguousarray(value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.mean) / self.scale
        if self.l2norm:
            z = z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)
        if self.pca:
            z = (z - self.pca_center) @ self.pca_components
        return z

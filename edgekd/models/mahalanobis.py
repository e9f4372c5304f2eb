"""A Gaussian model of normal image descriptors and the Mahalanobis distance to it (the global branches).

Fitted once after training on descriptors of normal training images; the covariance is shrunk towards a scaled
identity with the Ledoit-Wolf coefficient (scikit-learn), because a factory line gives a few hundred normal images
for descriptors of several hundred dimensions, where the sample covariance is singular. The mean and the
precision matrix are buffers, so they travel in checkpoints and export as constants: the distance is a
subtraction, a matrix product and a reduction in the ONNX graph.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgekd.errors import EdgekdError


def _cell_averages(size: int, grid: int) -> torch.Tensor:
    """(grid, size) matrix averaging the cells adaptive average pooling uses (floor/ceil bin edges)."""
    matrix = torch.zeros(grid, size)
    for i in range(grid):
        start, end = (i * size) // grid, -((-(i + 1) * size) // grid)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def grid_average(x: torch.Tensor, grid: int) -> torch.Tensor:
    """(B,C,H,W) -> (B,C,grid,grid) cell means, equal to adaptive average pooling but written as two matrix
    products with constant cell-averaging matrices, which every ONNX consumer takes (feature sizes are fixed by
    the model's input size)."""
    rows = _cell_averages(int(x.shape[-2]), grid).to(x)
    cols = _cell_averages(int(x.shape[-1]), grid).to(x)
    return rows @ x @ cols.T


def pooled_descriptor(features: list[torch.Tensor], grid: int) -> torch.Tensor:
    """(B, sum C * grid^2) from feature maps: each averaged over a grid x grid layout of cells, in FP32.

    A grid of cells (rather than one global average) keeps where things are, which the logical anomalies of an
    assembly (a part in the wrong place, two parts swapped) are about."""
    return torch.cat([grid_average(f.float(), grid).flatten(1) for f in features], dim=1)


class MahalanobisBranch(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("precision", torch.eye(dim))
        self.register_buffer("shrinkage", torch.tensor(float("nan")))  # NaN until fitted

    @property
    def fitted(self) -> bool:
        return bool(torch.isfinite(self.shrinkage))

    def fit(self, descriptors: np.ndarray | torch.Tensor, shrinkage: float | None = None) -> float:
        """Mean and shrunk precision of (N, dim) normal descriptors; shrinkage None = Ledoit-Wolf's estimate.
        Returns the shrinkage used."""
        from sklearn.covariance import LedoitWolf, ShrunkCovariance
        x = np.asarray(descriptors.detach().cpu() if isinstance(descriptors, torch.Tensor) else descriptors, np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise EdgekdError(f"Mahalanobis fit needs (N, {self.dim}) descriptors, got {tuple(x.shape)}")
        if len(x) < 2:
            raise EdgekdError("the Mahalanobis branch needs at least 2 normal training images to fit")
        estimator = LedoitWolf() if shrinkage is None else ShrunkCovariance(shrinkage=shrinkage)
        estimator.fit(x)
        used = float(estimator.shrinkage_ if shrinkage is None else shrinkage)
        self.mean.copy_(torch.from_numpy(estimator.location_))
        self.precision.copy_(torch.from_numpy(estimator.get_precision()))
        self.shrinkage.fill_(used)
        return used

    def forward(self, descriptors: torch.Tensor) -> torch.Tensor:
        """(B, dim) -> (B,) distances sqrt((x - mean)^T P (x - mean)), in FP32."""
        centred = descriptors.float() - self.mean
        squared = ((centred @ self.precision) * centred).sum(dim=1)
        return torch.sqrt(torch.clamp(squared, min=0.0))


class BranchNormaliser(nn.Module):
    """z-score of one branch's image scores on normal images, so two branches add on one scale."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(0.0))
        self.register_buffer("std", torch.tensor(1.0))

    def fit(self, scores: np.ndarray | torch.Tensor) -> None:
        values = np.asarray(scores.detach().cpu() if isinstance(scores, torch.Tensor) else scores, np.float64)
        if values.size == 0:
            raise EdgekdError("cannot normalise a score branch without normal images")
        self.mean.fill_(float(values.mean()))
        self.std.fill_(max(float(values.std()), 1e-6))  # a constant branch must not divide by zero

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return (scores.float() - self.mean) / self.std

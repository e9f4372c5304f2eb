"""The attributes of `edgekd::MultiScaleFeatureDiff` and their meaning.

The op means exactly what edgekd/scoring.py computes (FeatureDiff, then threshold_mask): `reference()` builds that
module from the attributes, and every other form of the op (the ONNX function body, the CUDA kernels behind the
TensorRT plugin and the torch CUDA path) is checked against it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from edgekd.errors import EdgekdError
from edgekd.scoring import (COMBINE_MODES, LEGACY_MAP_STRIDE, MAP_STRIDES, SCORE_MODES, FeatureDiff, ScoringConfig,
                            blur_radius, grid_sigma, grid_size, threshold_mask)

DOMAIN = "edgekd"
OP_NAME = "MultiScaleFeatureDiff"
OP_VERSION = 1
MAX_SCALES = 8  # EDGEKD_MAX_SCALES in engines/kernels/feature_diff.cu
OUTPUTS = ("anomaly_map", "score", "mask")


@dataclass(frozen=True)
class FusedOpSpec:
    output_size: tuple[int, int]
    combine: str = "add"
    weights: tuple[float, ...] = ()  # per-scale weights, combine='weighted' only
    sigma: float = 4.0
    score: str = "max"
    topk: int = 100
    eps: float = 1e-8
    threshold: float | None = None  # None: no mask output
    map_stride: int = LEGACY_MAP_STRIDE  # a node without the attribute was exported before it existed

    def __post_init__(self):
        if self.combine not in COMBINE_MODES or self.score not in SCORE_MODES:
            raise EdgekdError(f"{OP_NAME}: combine '{self.combine}' / score '{self.score}' unknown")
        if self.map_stride not in MAP_STRIDES:
            raise EdgekdError(f"{OP_NAME}: map_stride {self.map_stride} is not one of {MAP_STRIDES}")
        if self.combine == "weighted" and not self.weights:
            raise EdgekdError(f"{OP_NAME}: combine='weighted' needs per-scale weights")
        # Reals as the FP32 values ONNX attributes and plugin fields store, so every form reads the same numbers.
        f32 = lambda v: float(np.float32(v))
        object.__setattr__(self, "output_size", (int(self.output_size[0]), int(self.output_size[1])))
        object.__setattr__(self, "weights", tuple(f32(w) for w in self.weights))
        object.__setattr__(self, "sigma", f32(self.sigma))
        object.__setattr__(self, "eps", f32(self.eps))
        if self.threshold is not None:
            object.__setattr__(self, "threshold", f32(self.threshold))

    @classmethod
    def from_scorer(cls, scorer: FeatureDiff, weights: torch.Tensor | None = None,
                    threshold: float | None = None) -> "FusedOpSpec":
        """The op for a model's scorer; learned per-scale weights are frozen into the attributes."""
        config = scorer.config
        if weights is None and scorer.fixed_weights.numel():
            weights = scorer.fixed_weights
        values = tuple(weights.detach().float().cpu().tolist()) if config.combine == "weighted" and weights is not None else ()
        return cls(scorer.output_size, config.combine, values, config.sigma, config.score, config.topk, config.eps,
                   None if threshold is None else float(threshold), config.map_stride)

    @property
    def num_outputs(self) -> int:
        return 3 if self.threshold is not None else 2

    @property
    def grid_size(self) -> tuple[int, int]:
        """Where the scales are combined and blurred (edgekd/scoring.py grid_size)."""
        return grid_size(self.output_size, self.map_stride)

    @property
    def grid_sigma(self) -> float:
        return grid_sigma(self.sigma, self.map_stride)

    @property
    def blur_radius(self) -> int:
        """Taps each side of the blur on the grid."""
        return blur_radius(self.grid_sigma)

    def check_scales(self, count: int) -> None:
        if not 1 <= count <= MAX_SCALES:
            raise EdgekdError(f"{OP_NAME} takes 1 to {MAX_SCALES} scales, got {count}")
        if self.weights and len(self.weights) != count:
            raise EdgekdError(f"{OP_NAME}: {len(self.weights)} weights for {count} scales")

    def reference(self) -> "ReferenceFeatureDiff":
        return ReferenceFeatureDiff(self)

    # -- ONNX / plugin attributes --------------------------------------------------------------------------------
    def attributes(self) -> dict:
        values = {"output_size": list(self.output_size), "combine": self.combine, "sigma": float(self.sigma),
                  "score": self.score, "topk": int(self.topk), "eps": float(self.eps), "map_stride": int(self.map_stride)}
        if self.weights:
            values["weights"] = list(self.weights)
        if self.threshold is not None:
            values["threshold"] = float(self.threshold)
        return values

    @classmethod
    def from_attributes(cls, values: dict) -> "FusedOpSpec":
        def text(v):
            return v.decode() if isinstance(v, (bytes, bytearray)) else str(v)
        try:
            size = [int(v) for v in values["output_size"]]
            return cls((size[0], size[1]), text(values.get("combine", "add")),
                       tuple(float(w) for w in values.get("weights", ()) or ()), float(values.get("sigma", 4.0)),
                       text(values.get("score", "max")), int(values.get("topk", 100)), float(values.get("eps", 1e-8)),
                       None if values.get("threshold") is None else float(values["threshold"]),
                       int(values.get("map_stride", LEGACY_MAP_STRIDE)))
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise EdgekdError(f"{OP_NAME} attributes are incomplete or malformed ({exc}): re-export the model") from exc


class ReferenceFeatureDiff(nn.Module):
    """(t0..tk-1, s0..sk-1) -> anomaly_map, score[, mask]: the core scoring module, fed by the op's attributes."""

    def __init__(self, spec: FusedOpSpec):
        super().__init__()
        self.spec = spec
        config = ScoringConfig(combine=spec.combine, weights=spec.weights or None, sigma=spec.sigma,
                               score=spec.score, topk=spec.topk, eps=spec.eps, map_stride=spec.map_stride)
        self.scorer = FeatureDiff(config, spec.output_size)

    def forward(self, *features: torch.Tensor):
        half = len(features) // 2
        self.spec.check_scales(half)
        amap, score = self.scorer(list(features[:half]), list(features[half:]))
        if self.spec.threshold is None:
            return amap, score
        return amap, score, threshold_mask(amap, self.spec.threshold)

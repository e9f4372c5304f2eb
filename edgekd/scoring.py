"""The multi-scale feature difference: THE definition of how edgekd turns teacher/student features into an
anomaly map, an image score and a mask. Training loss, evaluation, export and every runtime call this module.

Per scale: 1 - cosine over channels (accumulated in FP32) -> bilinear resize to the scoring grid (the output
size divided by `map_stride`) -> combine across scales (add, mul, max, weighted) -> separable Gaussian blur on the
grid (sigma given in output pixels; the grid's blur leaves out what the upsample smooths) -> one bilinear upsample
to the output size -> image score (max or top-k mean) of that map.

How the ONNX body writes the same arithmetic, for onnxruntime's CPU kernels (benchmarks/results/scoring-lowering/scoring_lowering.md):
the scales are combined by Add nodes, the final upsample by an integer factor is a 3x3 convolution into the
factor^2 output phases and DepthToSpace instead of Resize, and, where the features come from float ops with known
channel counts, each channel sum is a 1x1 convolution with ones, which stays in onnxruntime's blocked layout
instead of reordering every product; after DequantizeLinear the sums stay ReduceSum and the squares are Pow, which
reads each feature once (edgekd/fused/onnx_function.py chooses).

The default grid is half the output size (stride 2): the combination and the blur touch a quarter of the pixels
they did at output size (stride 1, the form every artifact written before `map_stride` existed uses). On the
real-texture benchmark stride 2 keeps every category within 0.2 points of stride 1, and in onnxruntime it runs as
fast as stride 4 (the finest teacher scale), which loses 0.4 points of image AUROC on fibre_paper
(benchmarks/results/scoring-grid/scoring_grid.md, benchmarks/vs_anomalib.md).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgekd import calibration as decision
from edgekd.errors import EdgekdError

COMBINE_MODES = ("add", "mul", "max", "weighted")
SCORE_MODES = ("max", "topk")
MAP_STRIDES = (1, 2, 4, 8, 16, 32)  # input sizes are multiples of 32, so each divides the output size
LEGACY_MAP_STRIDE = 1  # what a stored scoring dict without `map_stride` means: artifacts from before it existed


@dataclass(frozen=True)
class ScoringConfig:
    combine: str = "add"
    weights: tuple[float, ...] | None = None  # fixed per-scale weights for combine='weighted'
    sigma: float = 4.0  # Gaussian blur sigma in output pixels; 0 turns the blur off
    score: str = "max"
    topk: int = 100  # pixels averaged for score='topk'
    eps: float = 1e-8
    map_stride: int = 2  # output pixels per scoring-grid pixel: where scales are combined and blurred

    def __post_init__(self):
        if self.combine not in COMBINE_MODES:
            raise EdgekdError(f"scoring.combine '{self.combine}' is unknown: use one of {', '.join(COMBINE_MODES)}")
        if self.score not in SCORE_MODES:
            raise EdgekdError(f"scoring.score '{self.score}' is unknown: use one of {', '.join(SCORE_MODES)}")
        if self.map_stride not in MAP_STRIDES:
            raise EdgekdError(f"scoring.map_stride {self.map_stride!r} is not allowed: use one of "
                              f"{', '.join(map(str, MAP_STRIDES))}")
        if self.sigma < 0 or self.topk < 1:
            raise EdgekdError("scoring.sigma must be >= 0 and scoring.topk >= 1")
        if self.weights is not None:
            object.__setattr__(self, "weights", tuple(float(w) for w in self.weights))

    @classmethod
    def from_dict(cls, values: dict | None) -> "ScoringConfig":
        """From a config or a stored artifact; one stored without `map_stride` was scored (and its thresholds set)
        at output size, so it keeps that form."""
        values = dict(values or {})
        values.setdefault("map_stride", LEGACY_MAP_STRIDE)
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise EdgekdError(f"unknown scoring option(s) {', '.join(sorted(unknown))}: "
                              f"valid are {', '.join(cls.__dataclass_fields__)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ExportForms:
    """How an ONNX trace writes the channel sums and squares (eager torch is never affected).
    channel_sums_as_convolutions: 1x1 convolutions with ones; the traced features must have their real channel
    counts, since the ones are constants of that shape. squares_as_powers: Pow(x, 2), which reads x through one
    input edge instead of two: onnxruntime gives every input edge fed by a DequantizeLinear its own copy of that
    node, so in an INT8 graph each feature is dequantized twice instead of three times (x * x and x.pow(2) are the
    same correctly rounded value)."""
    channel_sums_as_convolutions: bool = False
    squares_as_powers: bool = False


_EXPORT_FORMS: ContextVar[ExportForms] = ContextVar("edgekd_export_forms", default=ExportForms())


@contextmanager
def export_forms(forms: ExportForms):
    """While tracing for ONNX inside this block, write the scoring in `forms`."""
    token = _EXPORT_FORMS.set(forms)
    try:
        yield
    finally:
        _EXPORT_FORMS.reset(token)


def _traced_forms() -> ExportForms:
    return _EXPORT_FORMS.get() if torch.onnx.is_in_onnx_export() else ExportForms()


def square(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2) if _traced_forms().squares_as_powers else x * x


def channel_sum(x: torch.Tensor) -> torch.Tensor:
    """(B,C,h,w) -> (B,1,h,w)."""
    if _traced_forms().channel_sums_as_convolutions:
        return F.conv2d(x, torch.ones(1, int(x.shape[1]), 1, 1, dtype=x.dtype))
    return x.sum(dim=1, keepdim=True)


def cosine_distance(teacher: torch.Tensor, student: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """1 - cos over channels, (B,C,h,w) x2 -> (B,1,h,w), reductions in FP32 whatever the input precision (FP64
    inputs stay FP64: the kernel checks use this module as their float64 reference)."""
    t, s = (teacher, student) if teacher.dtype == torch.float64 else (teacher.float(), student.float())
    dot = channel_sum(t * s)
    norms = torch.sqrt(channel_sum(square(t))) * torch.sqrt(channel_sum(square(s)))
    return 1.0 - dot / torch.clamp(norms, min=eps)


def distillation_loss(teacher: list[torch.Tensor], student: list[torch.Tensor],
                      weights: torch.Tensor | None = None, eps: float = 1e-8) -> torch.Tensor:
    """Training loss: the same per-scale 1 - cos as the anomaly map, averaged over pixels, summed over scales."""
    per_scale = torch.stack([cosine_distance(t, s, eps).mean() for t, s in zip(teacher, student)])
    return (per_scale * weights).sum() if weights is not None else per_scale.sum()


def grid_size(output_size: tuple[int, int], map_stride: int) -> tuple[int, int]:
    """The scoring grid: the output size divided by the map stride (at least one pixel each way)."""
    return max(1, output_size[0] // map_stride), max(1, output_size[1] // map_stride)


def grid_sigma(sigma: float, map_stride: int) -> float:
    """The blur sigma in grid pixels for `sigma` in output pixels. On a coarser grid the final bilinear upsample
    smooths too (a triangle of half-width map_stride output pixels: variance map_stride^2 / 6), so the grid's blur
    brings only the rest and the output map is as smooth as a blur of `sigma` at output size; 0 when the upsample
    alone smooths that much (no blur). Computed in FP32, operation by operation as the C++ plugin does, so every
    form derives the same radius. Measured: benchmarks/results/scoring-grid/scoring_grid.md."""
    if sigma <= 0:
        return 0.0
    f32, stride = np.float32, np.float32(map_stride)
    upsample_variance = stride * stride / f32(6) if map_stride > 1 else f32(0)
    rest = f32(sigma) * f32(sigma) - upsample_variance
    return float(np.sqrt(rest) / stride) if rest > 0 else 0.0


def blur_radius(sigma: float) -> int:
    """Taps each side of the Gaussian: 4 sigma, like scipy.ndimage.gaussian_filter; 0 when the blur is off."""
    return max(1, int(math.ceil(4.0 * sigma))) if sigma > 0 else 0


def blur_reflects(height: int, width: int, radius: int) -> bool:
    """Reflect padding needs the map larger than the radius; smaller maps replicate their edge."""
    return min(height, width) > radius


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    radius = blur_radius(sigma)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_blur(amap: torch.Tensor, kernel1d: torch.Tensor) -> torch.Tensor:
    """Separable blur of (B,1,H,W) with reflect padding (replicate when the map is smaller than the kernel)."""
    radius = kernel1d.numel() // 2
    mode = "reflect" if blur_reflects(amap.shape[-2], amap.shape[-1], radius) else "replicate"
    k = kernel1d.to(amap)
    out = F.conv2d(F.pad(amap, (radius, radius, 0, 0), mode=mode), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(out, (0, 0, radius, radius), mode=mode), k.view(1, 1, -1, 1))


def combine_maps(maps: list[torch.Tensor], mode: str, weights: torch.Tensor | None = None) -> torch.Tensor:
    if mode == "add":  # a chain of adds, not stack + sum: onnxruntime's ReduceSum over a stack is slow
        total = maps[0]
        for amap in maps[1:]:
            total = total + amap
        return total
    if mode == "mul":
        return torch.stack(maps).prod(0)
    if mode == "max":
        return torch.stack(maps).max(0).values
    if weights is None or weights.numel() != len(maps):
        raise EdgekdError(f"combine='weighted' needs {len(maps)} scale weights (scoring.weights or a learned set)")
    return (torch.stack(maps) * weights.to(maps[0]).view(-1, 1, 1, 1, 1)).sum(0)


def image_score(amap: torch.Tensor, mode: str = "max", topk: int = 100) -> torch.Tensor:
    flat = amap.flatten(1)
    if mode == "max":
        return flat.max(dim=1).values
    return flat.topk(min(topk, flat.shape[1]), dim=1).values.mean(dim=1)


def threshold_mask(amap, threshold: float):
    """1 where the map is strictly above the pixel threshold; torch tensors (graphs) and NumPy arrays (runtimes)."""
    above = decision.above(amap, threshold)
    return above.astype(np.uint8) if isinstance(above, np.ndarray) else above.to(torch.uint8)


def resize(amap: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear, align_corners=False: what every form of the op implements. Always a resize, even to the same
    size, so a graph traced on one feature size holds for every other (ONNX function bodies, dynamic shapes)."""
    return F.interpolate(amap, size=size, mode="bilinear", align_corners=False)


def upsample_phases(amap: torch.Tensor, factor: int) -> torch.Tensor:
    """Bilinear upsampling by an integer factor (align_corners=False), written as edge padding, one 3x3
    convolution into the factor^2 output phases and DepthToSpace: output pixel factor*i+k samples input i +
    (k + 0.5) / factor - 0.5, a two-tap blend of i and its neighbour, and the edge padding repeats the border as
    the resize's clamping does."""
    taps = []
    for phase in range(factor):
        offset = (phase + 0.5) / factor - 0.5
        taps.append([-offset, 1.0 + offset, 0.0] if offset < 0 else [0.0, 1.0 - offset, offset])
    rows = torch.tensor(taps, dtype=torch.float64)
    kernel = (rows[:, None, :, None] * rows[None, :, None, :]).reshape(factor * factor, 1, 3, 3)
    padded = F.pad(amap, (1, 1, 1, 1), mode="replicate")
    return F.pixel_shuffle(F.conv2d(padded, kernel.to(amap.dtype)), factor)


def upsample(amap: torch.Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> torch.Tensor:
    """The final upsample of the scoring grid to the output size: a bilinear resize, which ONNX export writes as
    upsample_phases when the factor is a whole number on both axes (same values, faster in onnxruntime)."""
    factor = to_size[0] // from_size[0]
    whole = factor > 1 and (from_size[0] * factor, from_size[1] * factor) == tuple(to_size)
    if whole and torch.onnx.is_in_onnx_export():
        return upsample_phases(amap, factor)
    return resize(amap, to_size)


class FeatureDiff(nn.Module):
    """Teacher/student feature lists -> (anomaly map (B,1,H,W) FP32, image score (B,))."""

    def __init__(self, config: ScoringConfig, output_size: tuple[int, int]):
        super().__init__()
        self.config = config
        self.output_size = (int(output_size[0]), int(output_size[1]))
        self.grid_size = grid_size(self.output_size, config.map_stride)
        self.grid_sigma = grid_sigma(config.sigma, config.map_stride)
        kernel = gaussian_kernel1d(self.grid_sigma) if self.grid_sigma > 0 else torch.ones(1)
        self.register_buffer("blur_kernel", kernel, persistent=False)
        fixed = torch.tensor(config.weights, dtype=torch.float32) if config.weights else torch.empty(0)
        self.register_buffer("fixed_weights", fixed, persistent=False)

    def scale_maps(self, teacher: list[torch.Tensor], student: list[torch.Tensor]) -> list[torch.Tensor]:
        return [resize(cosine_distance(t, s, self.config.eps), self.grid_size) for t, s in zip(teacher, student)]

    def forward(self, teacher: list[torch.Tensor], student: list[torch.Tensor],
                weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if weights is None and self.fixed_weights.numel():
            weights = self.fixed_weights
        amap = combine_maps(self.scale_maps(teacher, student), self.config.combine, weights)
        if self.grid_sigma > 0:
            amap = gaussian_blur(amap, self.blur_kernel)
        if self.grid_size != self.output_size:  # static: fixed by the config, not by the traced shapes
            amap = upsample(amap, self.grid_size, self.output_size)
        return amap, image_score(amap, self.config.score, self.config.topk)

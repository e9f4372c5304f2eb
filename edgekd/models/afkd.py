"""AFKD: reverse distillation with progressive (asymptotic) knowledge fusion and learnable feature weights.

Source: Zhao, Wang, Zhu, Xue, "Asymptotic fusion knowledge distillation for industrial anomaly detection",
Electronic Measurement Technology 49(5), 2026 (../shared/seeds/000_*). Only the abstract is available; this
module follows it:

- Progressive fusion: RD's bottleneck takes the teacher's scales side by side. Here the shallow, geometric
  knowledge is carried forward step by step into the deeper, semantic levels: the stride-4 features are
  brought to stride 8 and fused with the stride-8 features, that fusion is brought to stride 16 and fused with
  the stride-16 features, and only then squeezed into the one-class embedding the student decodes.
- Learnable feature weights on the multi-level teacher features, inside the fusion ("to remove redundant
  knowledge from the multi-level teacher outputs"): at each fusion step the two inputs (the level carried up and
  the teacher's own level, both projected to one width) are mixed with weights that sum to one. The abstract
  does not say at which granularity; `fusion_weights` chooses:
  - "pixel" (default): per position, as adaptive spatial feature fusion: a 1x1 conv on both inputs gives one
    logit per input and position, softmax over the inputs.
  - "level": one learned pair of weights per step (softmax of two parameters), the same everywhere.
  - "none": plain sum, for the ablation.
- `loss_weights: uncertainty` keeps this module's revision-1 reading as an option: one learned scalar per scale
  on the distillation loss and the map (exp(-s) * loss + s, uncertainty weighting; needs scoring.combine:
  weighted). Measured (benchmarks/results/paper-fidelity/paper_fidelity.md, Lite0, 128 px, mean image AUROC): per-pixel fusion
  weights 94.4 on the synthetic sets (the tray 83.7) and 92.9 on four real textures; per-level 88.0 (tray 64.7) and
  92.0; per-pixel with uncertainty loss weights 92.3 (tray 78.8) and 93.4; revision 1 (concatenating fusion,
  uncertainty weights) 91.1 (tray 74.8) and 91.0. Per-pixel fusion weights are the default; the uncertainty weights
  stay an option for what they gave on the natural textures (grass +2.1 points).
"""

from __future__ import annotations

import torch
from torch import nn

from edgekd.errors import EdgekdError
from edgekd.models.base import AnomalyModel
from edgekd.models.blocks import ResidualBlock, conv_bn_relu
from edgekd.models.rd import StudentDecoder
from edgekd.models.registry import register
from edgekd.scoring import cosine_distance, distillation_loss

FUSION_WEIGHTS = ("pixel", "level", "none")
LOSS_WEIGHTS = ("none", "uncertainty")


class WeightedFusion(nn.Module):
    """Mix two same-width inputs with learned weights that sum to one (per position or per step), then refine."""

    def __init__(self, width: int, mode: str):
        super().__init__()
        self.mode = mode
        if mode == "pixel":
            self.logits = nn.Conv2d(2 * width, 2, 1)
        elif mode == "level":
            self.logits = nn.Parameter(torch.zeros(2))
        self.refine = ResidualBlock(width)

    def weights(self, carried: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        """(B, 2, h, w) or (1, 2, 1, 1) weights of (carried, own), summing to one over dim 1."""
        if self.mode == "pixel":
            return torch.softmax(self.logits(torch.cat([carried, own], dim=1)), dim=1)
        if self.mode == "level":
            return torch.softmax(self.logits, dim=0).view(1, 2, 1, 1)
        return torch.ones(1, 2, 1, 1, device=own.device, dtype=own.dtype)

    def forward(self, carried: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        w = self.weights(carried, own).to(own.dtype)
        return self.refine(w[:, :1] * carried + w[:, 1:] * own)


class ProgressiveFusion(nn.Module):
    """t1 (stride 4) -> fused with t2 (stride 8) -> fused with t3 (stride 16) -> one-class embedding (stride 32)."""

    def __init__(self, channels: list[int], width: int, embed: int, fusion_weights: str = "pixel"):
        super().__init__()
        c1, c2, c3 = channels
        self.carry1 = conv_bn_relu(c1, width, 2)  # geometric knowledge, stride 4 -> 8
        self.own2 = conv_bn_relu(c2, width, 1, kernel=1)
        self.fuse2 = WeightedFusion(width, fusion_weights)
        self.carry2 = conv_bn_relu(width, width, 2)  # stride 8 -> 16
        self.own3 = conv_bn_relu(c3, width, 1, kernel=1)
        self.fuse3 = WeightedFusion(width, fusion_weights)
        self.embed = nn.Sequential(conv_bn_relu(width, embed, 2), ResidualBlock(embed))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        level2 = self.fuse2(self.carry1(feats[0]), self.own2(feats[1]))
        level3 = self.fuse3(self.carry2(level2), self.own3(feats[2]))
        return self.embed(level3)


@register("afkd")
class AsymptoticFusionKD(AnomalyModel):
    revision = 2
    revision_note = "learned weights inside the progressive fusion instead of on the loss and the map"

    def __init__(self, teacher, input_size, scoring, width: int = 96, embed: int = 192,
                 decoder_widths: tuple[int, int, int] = (32, 64, 128), fusion_weights: str = "pixel",
                 loss_weights: str = "none", **options):
        super().__init__(teacher, input_size, scoring, **options)
        if fusion_weights not in FUSION_WEIGHTS:
            raise EdgekdError(f"model_options.fusion_weights must be one of {', '.join(FUSION_WEIGHTS)}, "
                              f"not {fusion_weights!r}")
        if loss_weights not in LOSS_WEIGHTS:
            raise EdgekdError(f"model_options.loss_weights must be one of {', '.join(LOSS_WEIGHTS)}, "
                              f"not {loss_weights!r}")
        if (loss_weights == "uncertainty") != (scoring.combine == "weighted"):
            raise EdgekdError("afkd: loss_weights: uncertainty and scoring.combine: weighted go together (the learned "
                              f"scale weights are what the map is weighted with); got {loss_weights} and "
                              f"{scoring.combine}")
        self.fusion = ProgressiveFusion(teacher.channels, width, embed, fusion_weights)
        self.decoder = StudentDecoder(teacher.channels, embed, list(decoder_widths))
        self.loss_weights = loss_weights
        if loss_weights == "uncertainty":
            self.log_variance = nn.Parameter(torch.zeros(len(teacher.channels)))  # s_k; weight_k = softmax(-s)_k

    def student_features(self, images, teacher_feats):
        return self.decoder(self.fusion(teacher_feats))

    def scale_weights(self) -> torch.Tensor | None:
        """With uncertainty loss weights: the normalised learned weights (sum 1) the map combines the scales with."""
        if self.loss_weights != "uncertainty":
            return None
        return torch.softmax(-self.log_variance.float(), dim=0)

    def loss(self, teacher_feats, student_feats):
        eps = self.scorer.config.eps
        if self.loss_weights != "uncertainty":
            return distillation_loss(teacher_feats, student_feats, None, eps)
        per_scale = torch.stack([cosine_distance(t, s, eps).mean() for t, s in zip(teacher_feats, student_feats)])
        return (torch.exp(-self.log_variance) * per_scale + self.log_variance).sum()

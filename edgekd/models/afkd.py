"""AFKD: reverse distillation with progressive (asymptotic) knowledge fusion and learnable scale weights.

Source: Zhao, Wang, Zhu, Xue, "Asymptotic fusion knowledge distillation for industrial anomaly detection",
Electronic Measurement Technology 49(5), 2026 (../shared/seeds/000_*). Only the abstract is available; this
module follows it:

- Progressive fusion: RD's bottleneck takes the teacher's scales side by side. Here the shallow, geometric
  knowledge is carried forward step by step into the deeper, semantic levels: the stride-4 features are
  brought to stride 8 and fused with the stride-8 features, that fusion is brought to stride 16 and fused with
  the stride-16 features, and only then squeezed into the one-class embedding the student decodes.
- Learnable feature weights: one learnable value per scale, normalised (softmax) so they sum to one, weight the
  per-scale distillation losses and the anomaly map (combine = weighted). Learned freely, the weights would
  all flow to the easiest scale; each scale's term is therefore exp(-s) * loss + s (uncertainty weighting), whose
  optimum gives a noisy, redundant scale less weight without letting any weight collapse to zero.
"""

from __future__ import annotations

import torch
from torch import nn

from edgekd.models.base import AnomalyModel
from edgekd.models.blocks import ResidualBlock, conv_bn_relu
from edgekd.models.rd import StudentDecoder
from edgekd.models.registry import register
from edgekd.scoring import cosine_distance


class ProgressiveFusion(nn.Module):
    """t1 (stride 4) -> fused with t2 (stride 8) -> fused with t3 (stride 16) -> one-class embedding (stride 32)."""

    def __init__(self, channels: list[int], width: int, embed: int):
        super().__init__()
        c1, c2, c3 = channels
        self.carry1 = conv_bn_relu(c1, width, 2)  # geometric knowledge, stride 4 -> 8
        self.fuse2 = nn.Sequential(conv_bn_relu(width + c2, width, 1, kernel=1), ResidualBlock(width))
        self.carry2 = conv_bn_relu(width, width, 2)  # stride 8 -> 16
        self.fuse3 = nn.Sequential(conv_bn_relu(width + c3, width, 1, kernel=1), ResidualBlock(width))
        self.embed = nn.Sequential(conv_bn_relu(width, embed, 2), ResidualBlock(embed))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        level2 = self.fuse2(torch.cat([self.carry1(feats[0]), feats[1]], dim=1))
        level3 = self.fuse3(torch.cat([self.carry2(level2), feats[2]], dim=1))
        return self.embed(level3)


@register("afkd")
class AsymptoticFusionKD(AnomalyModel):
    def __init__(self, teacher, input_size, scoring, width: int = 96, embed: int = 192,
                 decoder_widths: tuple[int, int, int] = (32, 64, 128), **options):
        super().__init__(teacher, input_size, scoring, **options)
        self.fusion = ProgressiveFusion(teacher.channels, width, embed)
        self.decoder = StudentDecoder(teacher.channels, embed, list(decoder_widths))
        self.log_variance = nn.Parameter(torch.zeros(len(teacher.channels)))  # s_k; weight_k = softmax(-s)_k

    def student_features(self, images, teacher_feats):
        return self.decoder(self.fusion(teacher_feats))

    def scale_weights(self) -> torch.Tensor:
        """The normalised learned weights (sum 1) the anomaly map combines the scales with."""
        return torch.softmax(-self.log_variance.float(), dim=0)

    def loss(self, teacher_feats, student_feats):
        eps = self.scorer.config.eps
        per_scale = torch.stack([cosine_distance(t, s, eps).mean() for t, s in zip(teacher_feats, student_feats)])
        return (torch.exp(-self.log_variance) * per_scale + self.log_variance).sum()

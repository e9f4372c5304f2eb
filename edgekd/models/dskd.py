"""DSKD baseline, a RECONSTRUCTION: a dual-student reverse-distillation model with a local and a global branch.

The papers edgekd follows cite DSKD only as "a dual-branch logical anomaly detection model based on reverse
distillation" that LogicRD matches in accuracy at 1.7x its speed (../shared/seeds/001_*); its own text is not
available here. What is built, so reports can compare against a model of that design:

- Local branch: reverse distillation exactly as edgekd's `rd` (one-class bottleneck + student decoder); its
  anomaly map is the model's map.
- Global branch: a second student of the same form with its own bottleneck, whose embedding is pooled to a
  coarse grid (grid x grid cells) before decoding, so it can only rebuild the teacher's features from the
  image's global layout. Its image score is the mean teacher/student 1 - cos over all scales: high when the
  parts of the image do not fit together as on normal images, even if each looks fine.
- Joint score: both branches z-scored on held-out normal images and added (edgekd/models/dual_branch.py).
  Both students train with the same distillation loss, summed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.models.dual_branch import DualBranchModel
from edgekd.models.mahalanobis import grid_average
from edgekd.models.rd import OneClassBottleneck, StudentDecoder
from edgekd.models.registry import register
from edgekd.scoring import cosine_distance, distillation_loss


class GlobalStudent(nn.Module):
    """Own bottleneck -> embedding averaged over a grid x grid layout -> decoder: a student that only sees layout."""

    def __init__(self, channels: list[int], width: int, embed: int, widths: list[int], grid: int):
        super().__init__()
        self.bottleneck = OneClassBottleneck(channels, width, embed)
        self.decoder = StudentDecoder(channels, embed, widths)
        self.grid = grid

    def forward(self, teacher_feats: list[torch.Tensor]) -> list[torch.Tensor]:
        embedding = self.bottleneck(teacher_feats)
        coarse = grid_average(embedding, self.grid)
        return self.decoder(F.interpolate(coarse, size=embedding.shape[-2:], mode="nearest"))


@register("dskd")
class DualStudentKD(DualBranchModel):
    def __init__(self, teacher, input_size, scoring, width: int = 96, embed: int = 192,
                 decoder_widths: tuple[int, int, int] = (32, 64, 128), grid: int = 2, **options):
        super().__init__(teacher, input_size, scoring, **options)
        self.bottleneck = OneClassBottleneck(teacher.channels, width, embed)
        self.decoder = StudentDecoder(teacher.channels, embed, list(decoder_widths))
        self.global_student = GlobalStudent(teacher.channels, width, embed, list(decoder_widths), int(grid))

    def student_features(self, images, teacher_feats):
        return self.decoder(self.bottleneck(teacher_feats))

    def global_score(self, teacher_feats, student_feats):
        eps = self.scorer.config.eps
        rebuilt = self.global_student(teacher_feats)
        return torch.stack([cosine_distance(t, g, eps).flatten(1).mean(dim=1)
                            for t, g in zip(teacher_feats, rebuilt)]).mean(dim=0)

    def loss(self, teacher_feats, student_feats):
        eps = self.scorer.config.eps
        local = distillation_loss(teacher_feats, student_feats, None, eps)
        return local + distillation_loss(teacher_feats, self.global_student(teacher_feats), None, eps)

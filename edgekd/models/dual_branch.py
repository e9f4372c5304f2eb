"""Detectors with two branches, the anomaly map's and a global one, fused into one image score.

Logical anomalies (a part missing, parts swapped, the wrong count) break how an image is put together rather
than how any patch looks, so the map misses them; a global branch scores the image as a whole. The two scores
live on different scales, so each is turned into a z-score on held-out normal images after training and the
image score is z_map + global_weight * z_global. The normalisers are buffers: checkpoints and ONNX graphs
carry them.
"""

from __future__ import annotations

import torch

from edgekd.models.base import AnomalyModel
from edgekd.models.mahalanobis import BranchNormaliser


class DualBranchModel(AnomalyModel):
    def __init__(self, teacher, input_size, scoring, global_weight: float = 1.0, **options):
        super().__init__(teacher, input_size, scoring, **options)
        self.global_weight = float(global_weight)
        self.map_norm = BranchNormaliser()
        self.global_norm = BranchNormaliser()

    def global_score(self, teacher_feats: list[torch.Tensor], student_feats: list[torch.Tensor]) -> torch.Tensor:
        """(B,) raw score of the global branch, higher = more anomalous."""
        raise NotImplementedError

    def fit_global(self, fit_batches) -> dict:
        """Fit the global branch's statistics on the training images (if it has any)."""
        return {}

    def image_score(self, map_score, teacher_feats, student_feats):
        z_global = self.global_norm(self.global_score(teacher_feats, student_feats))
        return self.map_norm(map_score) + self.global_weight * z_global

    def branch_scores(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(map score, global score) before normalisation, for fitting and for reports."""
        teacher_feats = self.teacher_features(images)
        student_feats = self.student_features(images, teacher_feats)
        map_score = self.feature_diff(teacher_feats, student_feats, self.reference_diff)[1]
        return map_score, self.global_score(teacher_feats, student_feats)

    @torch.no_grad()
    def fit_normal(self, fit_batches, held_out_batches) -> dict:
        summary = self.fit_global(fit_batches)
        # Normalise on images the model has not been fitted on: training images score too low on both branches.
        map_scores, global_scores = zip(*(self.branch_scores(batch) for batch in held_out_batches()))
        self.map_norm.fit(torch.cat(map_scores))
        self.global_norm.fit(torch.cat(global_scores))
        return {**summary, "map_score_mean": float(self.map_norm.mean), "map_score_std": float(self.map_norm.std),
                "global_score_mean": float(self.global_norm.mean), "global_score_std": float(self.global_norm.std)}

"""The torch modules that become ONNX graphs: the whole detector, or its teacher and student halves."""

from __future__ import annotations

import torch
from torch import nn

from edgekd.models import AnomalyModel
from edgekd.scoring import threshold_mask


class DetectorGraph(nn.Module):
    """images (B,3,H,W) RGB in [0,1] -> anomaly_map (B,1,H,W), score (B,)[, mask (B,1,H,W) uint8]."""

    def __init__(self, model: AnomalyModel, pixel_threshold: float | None):
        super().__init__()
        self.model = model
        self.pixel_threshold = pixel_threshold

    def forward(self, images: torch.Tensor):
        amap, score = self.model(images)
        if self.pixel_threshold is None:
            return amap, score
        return amap, score, threshold_mask(amap, self.pixel_threshold)


class TeacherGraph(nn.Module):
    """images -> teacher features t0..tk (normalisation inside), for a separate engine (e.g. a DLA core)."""

    def __init__(self, model: AnomalyModel):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor):
        return tuple(self.model.teacher_features(images))


class StudentGraph(nn.Module):
    """images, t0..tk -> anomaly_map, score[, mask]: the student and the scoring."""

    def __init__(self, model: AnomalyModel, pixel_threshold: float | None):
        super().__init__()
        self.model = model
        self.pixel_threshold = pixel_threshold

    def forward(self, images: torch.Tensor, *teacher_feats: torch.Tensor):
        amap, score = self.model.score_features(images, list(teacher_feats))
        if self.pixel_threshold is None:
            return amap, score
        return amap, score, threshold_mask(amap, self.pixel_threshold)

"""The torch modules that become ONNX graphs: the whole detector, or its teacher and student halves."""

from __future__ import annotations

import torch
from torch import nn

from edgekd.fused.onnx_function import fused_feature_diff
from edgekd.fused.spec import FusedOpSpec
from edgekd.models import AnomalyModel
from edgekd.scoring import threshold_mask


def score_and_mask(model: AnomalyModel, images: torch.Tensor, teacher_feats: list[torch.Tensor],
                   pixel_threshold: float | None, fused: bool):
    """The student half, the scoring and the mask: each feature difference as one edgekd::MultiScaleFeatureDiff
    node when `fused`, else as the reference module's stock ops."""
    student_feats = model.student_features(images, teacher_feats)
    if fused:
        def diff(teacher, student, weights, mask=True):
            spec = FusedOpSpec.from_scorer(model.scorer, weights, pixel_threshold if mask else None)
            return fused_feature_diff(spec, teacher, student)
    else:
        diff = model.reference_diff
    outputs = model.finish_map(images, model.feature_diff(teacher_feats, student_feats, diff))
    amap, score = outputs[0], model.image_score(outputs[1], teacher_feats, student_feats)
    if pixel_threshold is None:
        return amap, score
    return amap, score, outputs[2] if len(outputs) > 2 else threshold_mask(amap, pixel_threshold)


class _ScoredGraph(nn.Module):
    """What the graphs that end in the scoring hold: the model, the mask's threshold, fused or stock-op scoring."""

    def __init__(self, model: AnomalyModel, pixel_threshold: float | None, fused: bool = True):
        super().__init__()
        self.model = model
        self.pixel_threshold = pixel_threshold
        self.fused = fused


class DetectorGraph(_ScoredGraph):
    """images (B,3,H,W) RGB in [0,1] -> anomaly_map (B,1,H,W), score (B,)[, mask (B,1,H,W) uint8]."""

    def forward(self, images: torch.Tensor):
        return score_and_mask(self.model, images, self.model.teacher_features(images), self.pixel_threshold, self.fused)


class TeacherGraph(nn.Module):
    """images -> teacher features t0..tk (normalisation inside), for a separate engine (e.g. a DLA core)."""

    def __init__(self, model: AnomalyModel):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor):
        return tuple(self.model.teacher_features(images))


class StudentGraph(_ScoredGraph):
    """images, t0..tk -> anomaly_map, score[, mask]: the student and the scoring."""

    def forward(self, images: torch.Tensor, *teacher_feats: torch.Tensor):
        return score_and_mask(self.model, images, list(teacher_feats), self.pixel_threshold, self.fused)

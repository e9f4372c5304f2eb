"""STFPM (Wang et al., 2021): a student of the teacher's architecture, trained from scratch on the image."""

from __future__ import annotations

from edgekd.backbones import build_teacher
from edgekd.models.base import AnomalyModel
from edgekd.models.registry import register


@register("stfpm")
class STFPM(AnomalyModel):
    def __init__(self, teacher, input_size, scoring, **options):
        super().__init__(teacher, input_size, scoring, **options)
        self.student = build_teacher(teacher.name, pretrained=False)  # same layout, random weights
        self.student.train()
        for p in self.student.parameters():
            p.requires_grad_(True)

    def student_features(self, images, teacher_feats):
        return self.student(self.normalize(images))

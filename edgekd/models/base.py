"""What every edgekd detector is: a frozen teacher, a trainable student, and the shared scoring."""

from __future__ import annotations

import torch
from torch import nn

from edgekd.backbones import FeatureExtractor
from edgekd.errors import EdgekdError
from edgekd.scoring import FeatureDiff, ScoringConfig, distillation_loss


# Child modules that score rather than extract features: they stay FP32 in FP16 and INT8 exports (their sums and
# statistics need the range), whatever precision the networks run in.
FLOAT32_MODULES = frozenset({"scorer", "mahalanobis", "map_norm", "global_norm", "patch_memory", "colour"})


class AnomalyModel(nn.Module):
    """Input: RGB in [0, 1], (B,3,H,W). Normalisation is part of the model so exported graphs carry it."""

    family = "base"
    # Bumped when a family's training or scoring changes meaning, so a checkpoint of the earlier form (whose
    # thresholds belong to the earlier score) is refused instead of silently read the new way.
    revision = 1
    revision_note = ""

    def __init__(self, teacher: FeatureExtractor, input_size: tuple[int, int], scoring: ScoringConfig, **options):
        super().__init__()
        self.teacher = teacher
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.options = options
        self.register_buffer("mean", torch.tensor(teacher.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(teacher.std).view(1, 3, 1, 1), persistent=False)
        self.scorer = FeatureDiff(scoring, self.input_size)
        self.use_fused_kernels = False  # the torch runtime turns the CUDA kernels on for GPU inference

    # -- the two halves; subclasses implement student_features ---------------------------------------------
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """FP32 normalisation, then the networks' own precision (FP16 when exported as FP16)."""
        return ((images - self.mean) / self.std).to(next(self.teacher.parameters()).dtype)

    def networks_to(self, dtype: torch.dtype) -> "AnomalyModel":
        """Teacher and student in `dtype`; normalisation and scoring stay FP32 (they accumulate)."""
        for name, child in self.named_children():
            if name not in FLOAT32_MODULES:
                child.to(dtype)
        return self

    def teacher_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            return self.teacher(self.normalize(images))

    def student_features(self, images: torch.Tensor, teacher_feats: list[torch.Tensor]) -> list[torch.Tensor]:
        raise NotImplementedError

    def scale_weights(self) -> torch.Tensor | None:
        """Per-scale weights for combine='weighted' learned by the model; None uses the config's."""
        return None

    def check_fixed_weights(self) -> None:
        """scoring.weights gives one weight per scale map the feature difference combines; how many depends on the
        family and the teacher, so it is counted with one blank image through the model, before any training."""
        weights = self.scorer.config.weights
        if weights is None:
            return
        counts, learned = [], []

        def count(teacher, student, learned_weights, mask=True):
            counts.append(len(teacher))
            learned.append(learned_weights is not None)
            return torch.zeros(1, 1, *self.scorer.output_size), torch.zeros(1)

        with torch.no_grad():
            images = torch.zeros(1, 3, *self.input_size, device=self.mean.device)
            teacher = self.teacher_features(images)
            self.feature_diff(teacher, self.student_features(images, teacher), count)
        if any(learned):
            raise EdgekdError(f"scoring.weights={list(weights)} would be ignored: '{self.family}' learns its scale "
                              "weights with these model_options: drop scoring.weights")
        if len(set(counts)) > 1:
            raise EdgekdError(f"scoring.weights={list(weights)} cannot fit '{self.family}': its groups combine "
                              f"{' and '.join(map(str, sorted(set(counts))))} scale maps: use another scoring.combine")
        if len(weights) != counts[0]:
            raise EdgekdError(f"scoring.weights has {len(weights)} value(s) but '{self.family}' with this teacher "
                              f"combines {counts[0]} scale maps: give {counts[0]}, e.g. --set "
                              f"scoring.weights=[{','.join(['1'] * counts[0])}]")

    def image_score(self, map_score: torch.Tensor, teacher_feats: list[torch.Tensor],
                    student_feats: list[torch.Tensor]) -> torch.Tensor:
        """The image score from the anomaly map's score; dual-branch models (LogicRD, DSKD) add their global
        branch here, so every runtime and export path fuses the two the same way."""
        return map_score

    # -- training and inference ------------------------------------------------------------------------------
    def loss(self, teacher_feats: list[torch.Tensor], student_feats: list[torch.Tensor]) -> torch.Tensor:
        return distillation_loss(teacher_feats, student_feats, None, self.scorer.config.eps)

    def fit_normal(self, fit_batches, held_out_batches) -> dict:
        """After the networks are trained: fit whatever statistics of normal images the model keeps (the
        Mahalanobis branch, per-branch score scales). Both arguments are callables returning an iterator over
        (B,3,H,W) image batches on the model's device: the training images, and held-out normal images.
        Returns a summary for the checkpoint; map-only models keep nothing."""
        return {}

    def feature_diff(self, teacher_feats: list[torch.Tensor], student_feats: list[torch.Tensor], diff):
        """(anomaly map, score[, mask]) from the features. `diff(teacher, student, weights, mask)` is the multi-scale
        feature difference as the calling path runs it (the reference module, the CUDA kernels or the ONNX node);
        mask=False asks it for no mask. One teacher/student pair is one diff; multi-group models (MTHF) run one
        per group and combine the maps, and the caller thresholds the combined map."""
        return diff(teacher_feats, student_feats, self.scale_weights(), True)

    def finish_map(self, images: torch.Tensor, outputs: tuple) -> tuple:
        """After feature_diff, in every path (torch, ONNX, engines): branches that read the image itself rather than
        features join the score here (RD's colour branch). Most models add nothing."""
        return outputs

    def reference_diff(self, teacher, student, weights, mask=True):
        """The feature difference as the reference module (edgekd/scoring.py) computes it."""
        return self.scorer(teacher, student, weights)

    def kernel_diff(self, teacher, student, weights, mask=True):
        """The feature difference as the fused CUDA kernels compute it (engines/kernels/feature_diff.cu)."""
        from edgekd.fused.spec import FusedOpSpec
        from edgekd.fused.torch_cuda import fused_scoring
        return fused_scoring(FusedOpSpec.from_scorer(self.scorer, weights), teacher, student)

    def score_features(self, images: torch.Tensor, teacher_feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The student half plus scoring: what a split deployment runs after the teacher."""
        student_feats = self.student_features(images, teacher_feats)
        on_kernels = self.use_fused_kernels and teacher_feats[0].is_cuda and not torch.is_grad_enabled()
        outputs = self.finish_map(images, self.feature_diff(teacher_feats, student_feats,
                                                            self.kernel_diff if on_kernels else self.reference_diff))
        return (outputs[0], self.image_score(outputs[1], teacher_feats, student_feats), *outputs[2:])

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(anomaly map (B,1,H,W), image score (B,))."""
        return self.score_features(images, self.teacher_features(images))

    def student_parameters(self):
        return [p for name, p in self.named_parameters() if not name.startswith("teacher.")]

    def clip_groups(self) -> list[list]:
        """The parameter sets whose gradient norm train.grad_clip bounds, each on its own: one student, one set.
        Families of several independent students (MTHF's groups) give one set per student, so clipping one group's
        step never shrinks another's."""
        return [self.student_parameters()]

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # the teacher's BatchNorm statistics stay ImageNet's
        return self

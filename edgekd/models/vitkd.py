"""ViTKD: feature-constrained distillation with a Vision Transformer teacher and student.

Source: ../shared/seeds/003_* (full text). Teacher and student are ViTs of one architecture (the paper: ViT-B/16 at
224x224); the student starts from random weights except its position embeddings, copied from the teacher and
frozen. Distilled layers {3, 6, 9, 11}. Built as the paper describes:

- L_distill = sum over layers of ||T - S||^2 (mean over tokens) + (1 - cos) per token (mean over tokens).
- Anchor: the running mean of the teacher's class token (deepest distilled layer) over the normal training
  images; L_anchor = ||S_cls - anchor||^2 draws the student's normal class tokens to it.
- Gram consistency: G = phi_c1 phi_c2^T (tokens x tokens, divided by the width) between consecutive distilled
  layers, L_Gram = mean squared difference of the teacher's and the student's.
- L = L_distill + lambda (L_anchor + L_Gram), lambda = 1.
- Score = S_D + S_A: S_D = sum over layers of (Diff_cls + mean of the top-k patch Diffs, k = 20), with
  Diff = ||T - S||^2 + 1 - cos per token; S_A = ||T_cls - anchor||^2 + ||S_cls - anchor||^2.
- Map: edgekd's feature difference (1 - cos per patch, upsampled, summed over layers, blurred), the one
  definition every model's map uses.
Training as in the paper on MVTec: SGD, lr 0.2 with warm-up, batch 4; plus gradient-norm clipping at 1.0, without
which the raw squared-L2 terms made SGD diverge here in the first epoch (even at lr 0.01).
"""

from __future__ import annotations

import torch

from edgekd.backbones.vit import VIT_VARIANTS, ViTFeatures, VisionTransformer
from edgekd.errors import EdgekdError
from edgekd.models.base import AnomalyModel
from edgekd.models.registry import register
from edgekd.scoring import cosine_distance


def token_diff(teacher: torch.Tensor, student: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Diff per token: ||t - s||^2 + 1 - cos over the width. (B, D, ...) -> (B, ...), in FP32."""
    t, s = teacher.float(), student.float()
    return ((t - s) ** 2).sum(dim=1) + cosine_distance(t, s, eps)[:, 0]


def gram(tokens_a: torch.Tensor, tokens_b: torch.Tensor) -> torch.Tensor:
    """(B, D, h, w) x2 -> (B, N, N) relation between two layers' patch tokens, scaled by the width."""
    a, b = tokens_a.float().flatten(2), tokens_b.float().flatten(2)
    return a.transpose(1, 2) @ b / a.shape[1]


@register("vitkd")
class ViTFeatureConstrainedKD(AnomalyModel):
    def __init__(self, teacher, input_size, scoring, layers: tuple[int, ...] = (3, 6, 9, 11), lam: float = 1.0,
                 topk: int = 20, **options):
        if not isinstance(teacher, ViTFeatures):
            raise EdgekdError(f"vitkd needs a ViT teacher ({', '.join(VIT_VARIANTS)}), not '{teacher.name}': "
                              "set teacher: vit_b_16 and teacher_weights: FILE")
        teacher.layers = tuple(int(c) for c in layers)
        super().__init__(teacher, input_size, scoring, **options)
        self.lam, self.topk = float(lam), int(topk)
        vit = VisionTransformer(VIT_VARIANTS[teacher.name], self.input_size)
        with torch.no_grad():
            vit.pos_embed.copy_(teacher.vit.pos_embed)
        vit.pos_embed.requires_grad_(False)  # the paper keeps the teacher's position embeddings, frozen
        self.student = ViTFeatures(teacher.name, vit, teacher.layers, teacher.mean, teacher.std, None)
        dim = teacher.channels[0]
        self.register_buffer("anchor", torch.zeros(dim))
        self.register_buffer("anchor_count", torch.tensor(0.0))

    @property
    def depth(self) -> int:
        return len(self.teacher.layers)

    def student_features(self, images, teacher_feats):
        return self.student(self.normalize(images))

    def _update_anchor(self, teacher_cls: torch.Tensor) -> None:
        """Running mean of the teacher's class token over every normal training image seen."""
        batch = teacher_cls.detach().float().flatten(1)
        total = self.anchor_count + batch.shape[0]
        self.anchor.mul_(self.anchor_count / total).add_(batch.sum(dim=0) / total)
        self.anchor_count.copy_(total)

    def loss(self, teacher_feats, student_feats):
        n, eps = self.depth, self.scorer.config.eps
        t_patch, t_cls, s_patch, s_cls = teacher_feats[:n], teacher_feats[n:], student_feats[:n], student_feats[n:]
        distill = 0.0
        for tp, tc, sp, sc in zip(t_patch, t_cls, s_patch, s_cls):
            t_tokens = torch.cat([tc.flatten(2), tp.flatten(2)], dim=2)  # (B, D, 1 + N)
            s_tokens = torch.cat([sc.flatten(2), sp.flatten(2)], dim=2)
            diff = token_diff(t_tokens, s_tokens, eps)  # (B, 1 + N)
            distill = distill + diff.mean()
        if self.training:
            self._update_anchor(t_cls[-1])
        anchor = ((s_cls[-1].float().flatten(1) - self.anchor) ** 2).sum(dim=1).mean()
        gram_loss = sum(((gram(t_patch[i], t_patch[i + 1]) - gram(s_patch[i], s_patch[i + 1])) ** 2).mean()
                        for i in range(n - 1)) if n > 1 else 0.0
        return distill + self.lam * (anchor + gram_loss)

    def image_scores(self, teacher_feats, student_feats) -> torch.Tensor:
        """S_D + S_A per image."""
        n, eps = self.depth, self.scorer.config.eps
        score = 0.0
        for tp, tc, sp, sc in zip(teacher_feats[:n], teacher_feats[n:], student_feats[:n], student_feats[n:]):
            patches = token_diff(tp, sp, eps).flatten(1)
            k = min(self.topk, patches.shape[1])
            score = score + token_diff(tc, sc, eps).flatten(1)[:, 0] + patches.topk(k, dim=1).values.mean(dim=1)
        t_cls, s_cls = teacher_feats[-1].float().flatten(1), student_feats[-1].float().flatten(1)
        return score + ((t_cls - self.anchor) ** 2).sum(dim=1) + ((s_cls - self.anchor) ** 2).sum(dim=1)

    def feature_diff(self, teacher_feats, student_feats, diff):
        n = self.depth
        outputs = diff(teacher_feats[:n], student_feats[:n], self.scale_weights(), True)  # the map from patch tokens
        return (outputs[0], self.image_scores(teacher_feats, student_feats), *outputs[2:])

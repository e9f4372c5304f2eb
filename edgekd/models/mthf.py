"""MTHF: multi-group teacher-student hierarchical feature fusion.

Source: ../shared/seeds/002_* (full text). M parallel teacher-student groups with different backbones (the paper:
ResNet34, ResNet50 and VGG16); each student has its teacher's architecture with random weights and a feature
fusion module after its distillation layers. Built as the paper describes, except where noted:

- Distillation layers: the paper distils after the 1st, 3rd and 5th stages of its backbones (ResNet strides 2, 8, 32):
  `stages: [1, 3, 5]`. The default is edgekd's three taps of every backbone (strides 4, 8, 16), as the other
  models use: the stride-2 maps cost four times the finest map's compute and memory of those.
- Feature fusion module: a top-down pyramid over the student's three levels. The deepest level goes through FAM;
  each shallower level is its own FAM output plus the level above, upsampled (and projected to its channels),
  so a level only mixes with its neighbour.
- FAM (hybrid attention): channel attention (average- and max-pooled MLP) and spatial attention (7x7 conv over
  channel mean and max) computed side by side, then crossed: the channel-attended features are weighted by the
  spatial attention of the spatial branch and vice versa, and summed with the input. The paper's cross-fusion
  equations were lost in the available text; this is the reading of its description.
- Loss per layer: MSE + (1 - cosine of the flattened feature maps), weighted per layer (theta_i, eq. 8), summed
  over layers and groups (the groups train independently: their losses share no parameters). The paper sets
  theta per network ("different networks stress different layers") without giving values: `layer_weights` is
  one list for every group or one list per group; the default is 1 everywhere.
- Maps: per group edgekd's feature difference (1 - cos per position, upsampled, summed over layers, blurred);
  two-stage fusion: pixel-wise max of all groups but the last (the paper: the two ResNet groups), then
  alpha * max + (1 - alpha) * last group (the paper: VGG16).
- Image score: the paper "uses the total loss as the anomaly score" (section 2.2): `image_score: loss` scores an
  image by the sum over groups of its eq. 8 loss (the default of configs/papers/mthf.yaml); `image_score: map`
  (the default here, revision 1's undocumented choice) takes the fused map's maximum. Measured
  (benchmarks/results/paper-fidelity/paper_fidelity.md, Lite0/1/2 groups, 128 px): the map's maximum scored the tray 96.1 (logical
  94.3), cork 98.1 and the PCB 94.8; the total loss 90.8 (logical 86.2), 97.8 and 74.7 (a whole-image loss is
  dominated by the normal area, so a small defect barely moves it). The paper's setup keeps its loss score; the
  default is the map's maximum.

With the offline weights the groups default to EfficientNet-Lite0/1/2; `groups: [resnet34, resnet50, vgg16]`
with weight files gives the paper's. Training follows the paper (SGD, momentum 0.9, batch 32, 256x256) except the learning rate: its 0.4 makes
the MSE on raw features diverge here (NaN in the first epochs at 0.4 and 0.05), so the default is 0.01 with
gradient-norm clipping at 10 (without it a run at 0.01 still diverged in epoch 9).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.backbones import build_teacher
from edgekd.models.base import AnomalyModel
from edgekd.models.registry import register
from edgekd.scoring import cosine_distance, image_score


class GroupTeachers(nn.Module):
    """Several frozen teachers behind the FeatureExtractor interface: each normalises the raw [0, 1] image its own
    way (so the model's own normalisation is the identity) and the features of all groups come out in one list."""

    def __init__(self, teachers: list[nn.Module]):
        super().__init__()
        self.groups = nn.ModuleList(teachers)
        self.name = "+".join(t.name for t in teachers)
        self.mean, self.std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        self.weights_sha256 = ",".join(str(t.weights_sha256) for t in teachers)
        self.channels = [c for t in teachers for c in t.channels]
        self.strides = [s for t in teachers for s in t.strides]
        for i, t in enumerate(teachers):
            self.register_buffer(f"mean{i}", torch.tensor(t.mean).view(1, 3, 1, 1), persistent=False)
            self.register_buffer(f"std{i}", torch.tensor(t.std).view(1, 3, 1, 1), persistent=False)

    def normalized(self, images: torch.Tensor, group: int) -> torch.Tensor:
        mean, std = getattr(self, f"mean{group}"), getattr(self, f"std{group}")
        return ((images.float() - mean) / std).to(images.dtype)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return [f for i, t in enumerate(self.groups) for f in t(self.normalized(images, i))]


class HybridAttention(nn.Module):
    """FAM: channel attention and spatial attention side by side, crossed, added to the input."""

    def __init__(self, channels: int, reduction: int = 4, kernel: int = 7):
        super().__init__()
        hidden = max(4, channels // reduction)
        self.channel_mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1))
        self.spatial_conv = nn.Conv2d(2, 1, kernel, padding=kernel // 2)

    def channel_weights(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.channel_mlp(x.mean(dim=(2, 3), keepdim=True)) + self.channel_mlp(x.amax(dim=(2, 3), keepdim=True)))

    def spatial_weights(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.spatial_conv(torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        by_channel = x * self.channel_weights(x)
        by_position = x * self.spatial_weights(x)
        # cross fusion: each branch re-weighted by the other branch's attention
        return x + by_channel * self.spatial_weights(by_position) + by_position * self.channel_weights(by_channel)


class FeatureFusion(nn.Module):
    """Top-down pyramid over one student's levels: F3 = FAM(s3); Fk = FAM(sk) + P(up(F(k+1)))."""

    def __init__(self, channels: list[int]):
        super().__init__()
        self.attention = nn.ModuleList(HybridAttention(c) for c in channels)
        self.lateral = nn.ModuleList(nn.Conv2d(channels[k + 1], channels[k], 1) for k in range(len(channels) - 1))

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        fused = [None] * len(feats)
        fused[-1] = self.attention[-1](feats[-1])
        for k in range(len(feats) - 2, -1, -1):
            above = F.interpolate(fused[k + 1], size=feats[k].shape[-2:], mode="bilinear", align_corners=False)
            fused[k] = self.attention[k](feats[k]) + self.lateral[k](above)
        return fused


IMAGE_SCORES = ("map", "loss")


def layer_loss_per_image(teacher: torch.Tensor, student: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """MTHF's per-layer loss (eqs. 5-7) for each image: MSE + (1 - cosine between the flattened feature maps)."""
    t, s = teacher.float().flatten(1), student.float().flatten(1)
    return ((t - s) ** 2).mean(dim=1) + cosine_distance(t, s, eps)[:, 0]


def layer_loss(teacher: torch.Tensor, student: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """The per-layer loss averaged over the batch."""
    return layer_loss_per_image(teacher, student, eps).mean()


def group_layer_weights(layer_weights, groups: int, layers: int) -> torch.Tensor:
    """theta as a (groups, layers) table from one list for all groups or one list per group."""
    rows = [list(layer_weights)] * groups if all(not isinstance(w, (list, tuple)) for w in layer_weights) \
        else [list(row) for row in layer_weights]
    if len(rows) != groups or any(len(row) != layers for row in rows):
        raise ValueError(f"layer_weights must be {layers} numbers or {groups} lists of {layers} (one per group)")
    return torch.tensor([[float(w) for w in row] for row in rows])


@register("mthf")
class MultiGroupTSFusion(AnomalyModel):
    def __init__(self, teacher, input_size, scoring, groups: tuple[str, ...] = ("efficientnet_lite0", "efficientnet_lite1",
                 "efficientnet_lite2"), group_weights: tuple | None = None, layer_weights: tuple[float, ...] = (1.0, 1.0, 1.0),
                 alpha: float = 0.5, stages: tuple[int, ...] | None = None, pretrained_groups: bool = True,
                 image_score: str = "map", **options):
        groups = list(groups)
        if len(groups) < 2:
            raise ValueError("MTHF needs at least two groups")
        files = list(group_weights or [None] * len(groups))
        if not files[0] and groups[0] == teacher.name:  # the first group is the teacher: its file (--weights) too
            files[0] = getattr(teacher, "weights_file", None)
        stages = tuple(stages) if stages else None
        teachers = [teacher if i == 0 and name == teacher.name and not files[0] and stages is None else
                    build_teacher(name, files[i], pretrained=pretrained_groups, stages=stages)
                    for i, name in enumerate(groups)]
        group_teachers = GroupTeachers(teachers)
        super().__init__(group_teachers, input_size, scoring, **options)
        self.group_sizes = [len(t.channels) for t in teachers]
        self.students = nn.ModuleList(build_teacher(name, pretrained=False, stages=stages) for name in groups)
        for student in self.students:  # same architecture, random weights, trained
            student.train()
            for p in student.parameters():
                p.requires_grad_(True)
        self.fusion = nn.ModuleList(FeatureFusion(t.channels) for t in teachers)
        if image_score not in IMAGE_SCORES:
            raise ValueError(f"image_score must be one of {', '.join(IMAGE_SCORES)}, not {image_score!r}")
        self.register_buffer("layer_weights", group_layer_weights(layer_weights, len(groups), self.group_sizes[0]),
                             persistent=False)
        self.alpha = float(alpha)
        self.image_score_source = image_score

    def clip_groups(self) -> list[list]:
        return [[*student.parameters(), *fusion.parameters()] for student, fusion in zip(self.students, self.fusion)]

    def _split(self, feats: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        out, start = [], 0
        for size in self.group_sizes:
            out.append(feats[start:start + size])
            start += size
        return out

    def student_features(self, images, teacher_feats):
        feats = []
        for i, (student, fusion) in enumerate(zip(self.students, self.fusion)):
            x = self.teacher.normalized(images, i).to(next(student.parameters()).dtype)
            feats.extend(fusion(student(x)))
        return feats

    def loss_per_image(self, teacher_feats, student_feats) -> torch.Tensor:
        """(B,) the sum over groups of each group's eq. 8 loss."""
        eps = self.scorer.config.eps
        total = 0.0
        for weights, t_group, s_group in zip(self.layer_weights, self._split(teacher_feats), self._split(student_feats)):
            total = total + sum(w * layer_loss_per_image(t, s, eps) for w, t, s in zip(weights, t_group, s_group))
        return total

    def loss(self, teacher_feats, student_feats):
        return self.loss_per_image(teacher_feats, student_feats).mean()

    def image_score(self, map_score, teacher_feats, student_feats):
        if self.image_score_source == "loss":
            return self.loss_per_image(teacher_feats, student_feats)
        return map_score

    def group_maps(self, teacher_feats, student_feats, diff) -> list[torch.Tensor]:
        return [diff(t, s, None, False)[0] for t, s in zip(self._split(teacher_feats), self._split(student_feats))]

    def feature_diff(self, teacher_feats, student_feats, diff):
        maps = self.group_maps(teacher_feats, student_feats, diff)
        first_stage = torch.stack(maps[:-1]).amax(dim=0)  # pixel-wise max of the first groups
        amap = self.alpha * first_stage + (1.0 - self.alpha) * maps[-1]
        return amap, image_score(amap, self.scorer.config.score, self.scorer.config.topk)

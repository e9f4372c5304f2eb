"""MemKD: a student that stores key-value feature memory of normal samples (patent, ../shared/seeds/004_*).

The claims describe a student with a feature module per scale, each holding memory of normal images. Built here
on edgekd's three teacher scales (strides 4, 8, 16), as a reverse-distillation-style student:

- First scale (stride 16): a query made from the teacher's features resized to one grid and concatenated over
  channels (claim 5) is compared with the key memory (cosine / temperature), the softmax weights aggregate the
  value memory (claims 3-4), and a feature module turns the result into the student's stride-16 features. The
  values are teacher features of normal images: initialised from the first training batch and updated during
  training as a moving average of the teacher features each item is read for (claims 11-17: memory initialised
  and updated from teacher features); keys are learned. A student built from a mixture of stored normal features
  cannot reproduce an anomaly, so the teacher/student difference shows it.
- Second scale (stride 8): the module makes initial features from the stage above; adaptive memory items are
  built from them with stored adjustment parameters (a 1x1 projection whose softmax over positions weights the
  aggregation, claims 6-8); each position then reads the adaptive items by similarity (claim 7) and the result is
  added to the initial features.
- Third scale (stride 4): a plain decoder stage. Teacher and student are compared per scale as in every model
  (edgekd/scoring.py), also for the loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.models.base import AnomalyModel
from edgekd.models.blocks import ResidualBlock, conv_bn_relu
from edgekd.models.rd import DecoderStage
from edgekd.models.registry import register


class KeyValueMemory(nn.Module):
    """items x key_dim learned keys; items x value_dim value memory filled and updated from teacher features."""

    def __init__(self, items: int, key_dim: int, value_dim: int, temperature: float = 0.1, momentum: float = 0.1):
        super().__init__()
        self.keys = nn.Parameter(torch.randn(items, key_dim) * 0.1)
        self.register_buffer("values", torch.zeros(items, value_dim))
        self.register_buffer("filled", torch.tensor(False))
        self.temperature, self.momentum = float(temperature), float(momentum)

    def weights(self, query: torch.Tensor) -> torch.Tensor:
        """(B, key_dim, h, w) -> (B, h*w, items) read weights: softmax of cosine similarity / temperature."""
        q = F.normalize(query.float().flatten(2).transpose(1, 2), dim=-1)
        return torch.softmax(q @ F.normalize(self.keys.float(), dim=-1).T / self.temperature, dim=-1)

    def read(self, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(aggregated values (B, value_dim, h, w), read weights)."""
        b, _, h, w = query.shape
        weights = self.weights(query)
        # a copy: training updates the memory in place before the backward pass needs what was read
        values = (weights @ self.values.float().clone()).transpose(1, 2).reshape(b, -1, h, w)
        return values.to(query.dtype), weights

    @torch.no_grad()
    def fill(self, targets: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Initial values: teacher feature vectors at random positions of a batch of normal images."""
        flat = targets.float().flatten(2).transpose(1, 2).reshape(-1, targets.shape[1])
        pick = torch.randint(0, flat.shape[0], (self.values.shape[0],), generator=generator).to(flat.device)
        self.values.copy_(flat[pick])
        self.filled.fill_(True)

    @torch.no_grad()
    def update(self, weights: torch.Tensor, targets: torch.Tensor) -> None:
        """Each item moves towards the mean teacher feature of the positions that read it most."""
        flat = targets.float().flatten(2).transpose(1, 2).reshape(-1, targets.shape[1])
        assignment = weights.reshape(-1, weights.shape[-1]).argmax(dim=1)
        sums = torch.zeros_like(self.values).index_add_(0, assignment, flat)
        counts = torch.bincount(assignment, minlength=self.values.shape[0]).float().unsqueeze(1)
        used = counts.squeeze(1) > 0
        means = sums[used] / counts[used]
        self.values[used] = (1 - self.momentum) * self.values[used] + self.momentum * means


class AdaptiveMemory(nn.Module):
    """Per-image memory items aggregated from the features themselves, read back by similarity."""

    def __init__(self, channels: int, items: int, temperature: float = 0.1):
        super().__init__()
        self.adjust = nn.Conv2d(channels, items, 1)  # the stored adjustment parameters
        self.temperature = float(temperature)

    def items(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, items, C): each item a softmax-over-positions weighted mean of the features."""
        spread = torch.softmax(self.adjust(features).flatten(2), dim=2)
        return spread @ features.flatten(2).transpose(1, 2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, c, h, w = features.shape
        items = self.items(features)
        flat = F.normalize(features.flatten(2).transpose(1, 2), dim=-1)
        weights = torch.softmax(flat @ F.normalize(items, dim=-1).transpose(1, 2) / self.temperature, dim=-1)
        return (weights @ items).transpose(1, 2).reshape(b, c, h, w)


class MemoryStudent(nn.Module):
    def __init__(self, channels: list[int], key_dim: int, items: int, adaptive_items: int, widths: list[int],
                 temperature: float, momentum: float):
        super().__init__()
        c1, c2, c3 = channels
        w1, w2, w3 = widths
        self.query = nn.Sequential(conv_bn_relu(sum(channels), key_dim, 1, kernel=1), nn.Conv2d(key_dim, key_dim, 1))
        self.memory = KeyValueMemory(items, key_dim, c3, temperature, momentum)
        self.first = nn.Sequential(conv_bn_relu(c3, w3), ResidualBlock(w3))
        self.project3 = nn.Conv2d(w3, c3, 1)
        self.stage2 = DecoderStage(w3, w2, c2)
        self.adaptive = AdaptiveMemory(w2, adaptive_items, temperature)
        self.stage1 = DecoderStage(w2, w1, c1)

    def forward(self, teacher_feats: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        grid = teacher_feats[2].shape[-2:]
        resized = [F.interpolate(t, size=grid, mode="bilinear", align_corners=False) if t.shape[-2:] != grid else t
                   for t in teacher_feats]
        recalled, weights = self.memory.read(self.query(torch.cat(resized, dim=1)))
        h3 = self.first(recalled)
        initial = self.stage2.body(h3)
        h2 = initial + self.adaptive(initial)
        _, s1 = self.stage1(h2)
        return [s1, self.stage2.project(h2), self.project3(h3)], weights


@register("memkd")
class MemoryKD(AnomalyModel):
    def __init__(self, teacher, input_size, scoring, key_dim: int = 128, items: int = 256, adaptive_items: int = 32,
                 decoder_widths: tuple[int, int, int] = (32, 64, 128), temperature: float = 0.1,
                 memory_momentum: float = 0.1, **options):
        super().__init__(teacher, input_size, scoring, **options)
        self.student = MemoryStudent(teacher.channels, key_dim, items, adaptive_items, list(decoder_widths),
                                     temperature, memory_momentum)

    def student_features(self, images, teacher_feats):
        memory = self.student.memory
        if self.training and not bool(memory.filled):
            memory.fill(teacher_feats[2])
        feats, weights = self.student(teacher_feats)
        if self.training:  # the value memory follows the teacher's normal features
            memory.update(weights.detach(), teacher_feats[2])
        return feats

"""A memory of normal teacher patches, for surfaces a student cannot learn to imitate closely.

On natural, stochastic textures (grass, gravel, cork) any normal patch is unlike its neighbours, so a
distillation student's error on normal images is high and defects hide in it. A nearest-neighbour distance to
normal patches of the same teacher (PatchCore's idea, Roth et al. 2022) stays low for every normal patch, however
irregular. The memory holds a greedy k-centre coreset of the training images' patch embeddings (teacher strides
8 and 16, 3x3 neighbourhood average, at stride 8); a pixel's distance is to its nearest memory item.

The distance is one matrix product (patches x memory items) and a minimum along its last axis, so it exports to
ONNX, onnxruntime and TensorRT as stock ops; the module stays FP32 in FP16/INT8 exports (FLOAT32_MODULES).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.errors import EdgekdError


def greedy_coreset(embeddings: torch.Tensor, size: int, seed: int = 0) -> torch.Tensor:
    """Indices of `size` rows chosen so each next row is the one farthest from those chosen (k-centre greedy):
    the memory covers the rare patches too, not only the common ones."""
    n = embeddings.shape[0]
    if n <= size:
        return torch.arange(n)
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.empty(size, dtype=torch.long)
    chosen[0] = torch.randint(n, (1,), generator=generator)
    squares = (embeddings * embeddings).sum(1)
    nearest = torch.full((n,), float("inf"))
    for i in range(1, size):
        latest = chosen[i - 1]
        # |e - l|^2 as |e|^2 - 2 e.l + |l|^2: one matrix-vector product per step
        nearest = torch.minimum(nearest, squares - 2.0 * (embeddings @ embeddings[latest]) + squares[latest])
        chosen[i] = torch.argmax(nearest)
    return chosen


class PatchMemory(nn.Module):
    """Teacher features -> (B,1,h,w) distance of each stride-8 patch to its nearest normal patch."""

    def __init__(self, channels: list[int], size: int, scales: tuple[int, ...] = (1, 2)):
        super().__init__()
        if size < 1:
            raise EdgekdError("model_options.memory_size must be >= 1 (0 turns the patch memory off)")
        self.scales = tuple(int(s) for s in scales)
        dim = sum(channels[s] for s in self.scales)
        self.register_buffer("bank", torch.zeros(size, dim))
        self.register_buffer("bank_sq", torch.zeros(size))
        self.register_buffer("filled", torch.zeros((), dtype=torch.bool))
        # Divisors of the distillation map and of this memory's map, from their maxima on held-out normal images
        # (branch_scales below): each branch is divided by its own, so neither dominates by its units.
        self.register_buffer("branch_scales", torch.ones(2))

    def embed(self, teacher_feats: list[torch.Tensor]) -> torch.Tensor:
        """(B,C,h,w) patch embeddings at the resolution of the first memory scale, in FP32. The 3x3 average counts
        the zero padding (as PatchCore's does): averaging border patches over fewer neighbours left them noisier
        than the rest, and their distances then set normal images' maxima (grass image AUROC 0.67 against 0.87)."""
        feats = [F.avg_pool2d(teacher_feats[s].float(), 3, 1, 1) for s in self.scales]
        size = feats[0].shape[-2:]
        feats = [feats[0]] + [F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in feats[1:]]
        return torch.cat(feats, dim=1)

    def forward(self, teacher_feats: list[torch.Tensor]) -> torch.Tensor:
        q = self.embed(teacher_feats)
        batch, _, height, width = q.shape
        # |q - m|^2 = |q|^2 - 2 q.m + |m|^2, minimised over m: one matrix product (patches x memory items) and a
        # minimum along its last, contiguous axis. As a 1x1 conv the minimum ran across channels, which
        # onnxruntime does strided: 7.4 of RD's 20 ms per image at 256x256 on 2 cores (benchmarks/vs_anomalib.md).
        patches = q.flatten(2).transpose(1, 2)  # (B, h*w, C)
        cross = torch.matmul(patches, -2.0 * self.bank.T) + self.bank_sq
        d2 = (patches * patches).sum(dim=-1, keepdim=True) + cross.amin(dim=-1, keepdim=True)
        return torch.sqrt(torch.clamp(d2, min=0.0)).transpose(1, 2).reshape(batch, 1, height, width)

    def fuse(self, distill_map: torch.Tensor, teacher_feats: list[torch.Tensor], weight: float) -> torch.Tensor:
        """distill_map / its scale + weight * (memory map upsampled to the same size) / its scale. The memory's
        factor is applied before the upsample (it is linear): on its grid, not on every output pixel."""
        memory_map = self(teacher_feats) * (weight / self.branch_scales[1])
        memory_map = F.interpolate(memory_map, size=distill_map.shape[-2:], mode="bilinear", align_corners=False)
        return distill_map / self.branch_scales[0] + memory_map

    @torch.no_grad()
    def fill(self, embeddings: torch.Tensor, seed: int = 0) -> dict:
        """Fill the memory from (N,C) normal patch embeddings; fewer rows than slots are repeated (duplicates
        never change a nearest-neighbour distance)."""
        embeddings = embeddings.float().cpu()
        chosen = embeddings[greedy_coreset(embeddings, self.bank.shape[0], seed)]
        repeats = -(-self.bank.shape[0] // chosen.shape[0])
        chosen = chosen.repeat(repeats, 1)[: self.bank.shape[0]]
        self.bank.copy_(chosen.to(self.bank.device))
        self.bank_sq.copy_((self.bank * self.bank).sum(1))
        self.filled.fill_(True)
        return {"memory_items": int(self.bank.shape[0]), "memory_patches_seen": int(embeddings.shape[0])}


BALANCES = ("spread", "maximum")


def branch_scales(distill_maxima: torch.Tensor, memory_maxima: torch.Tensor, balance: str) -> torch.Tensor:
    """Each branch's divisor from its held-out normal image maxima.

    "spread": the standard deviation of the maxima, so each branch brings the same normal noise into the sum and
    the steadier one counts more, per category and without labelled defects (on the PCB the distillation map is
    noisy and the memory steady: image AUROC 94.2 -> 96.8; benchmarks/results/real-texture-accuracy/real_textures_tried.md).
    "maximum": their mean, the earlier rule (it needs memory_weight 2 to do as well on natural textures)."""
    maxima = torch.stack([distill_maxima, memory_maxima])
    means = maxima.mean(1)
    if balance == "maximum" or maxima.shape[1] < 2:
        return means.clamp(min=1e-6)
    # A floor at 1% of the mean: a few held-out images can agree by chance, and a zero spread would drown the other branch.
    return maxima.std(1).maximum(0.01 * means).clamp(min=1e-6)


@torch.no_grad()
def normal_maxima(model, held_out_batches) -> tuple[torch.Tensor, torch.Tensor]:
    """Per held-out normal image: the maximum of the distillation map and of the memory map."""
    distill_max, memory_max = [], []
    for batch in held_out_batches():
        teacher_feats = model.teacher_features(batch)
        student_feats = model.student_features(batch, teacher_feats)
        distill_map = model.reference_diff(teacher_feats, student_feats, model.scale_weights(), False)[0]
        distill_max.append(distill_map.flatten(1).amax(1).float().cpu())
        memory_max.append(model.patch_memory(teacher_feats).flatten(1).amax(1).float().cpu())
    return torch.cat(distill_max), torch.cat(memory_max)


@torch.no_grad()
def fit_patch_memory(model, fit_batches, held_out_batches) -> dict:
    """Fill `model.patch_memory` from the training images, then set each branch's normal scale on held-out normal
    images (training images sit in the memory and would score zero)."""
    memory = model.patch_memory
    patches = []
    for batch in fit_batches():
        q = memory.embed(model.teacher_features(batch))
        patches.append(q.permute(0, 2, 3, 1).reshape(-1, q.shape[1]).cpu())
    summary = memory.fill(torch.cat(patches))
    scales = branch_scales(*normal_maxima(model, held_out_batches), model.memory_balance)
    memory.branch_scales.copy_(scales.to(memory.branch_scales.device))
    return {**summary, "memory_balance": model.memory_balance, "distill_scale": float(scales[0]),
            "memory_scale": float(scales[1])}

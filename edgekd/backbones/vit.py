"""Vision Transformer teachers (ViT-B/16 and the smaller S/16, Ti/16) for feature distillation.

No ViT weights install offline, so a ViT teacher loads a state dict the user supplies: torchvision's
(`vit_b_16-*.pth`: conv_proj, encoder.layers.encoder_layer_N...) or timm's (`vit_base_patch16_224`: patch_embed,
blocks.N...), recognised by their keys. Position embeddings are resized (bicubic, as both libraries do) when the
model's input size differs from the weights' 224x224. `teacher_weights: random` builds a randomly initialised
teacher: only for tests and demos of the mechanics, never for real inspection.

The extractor returns the patch tokens of the tapped layers as (B, D, h, w) maps, then their class tokens as
(B, D, 1, 1): maps for the shared feature-difference scoring, class tokens for the models that use them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.errors import EdgekdError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INCEPTION_MEAN, INCEPTION_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # timm's ViT weights


@dataclass(frozen=True)
class ViTVariant:
    dim: int
    depth: int
    heads: int
    patch: int = 16
    hub_file: str | None = None  # torchvision's file name in the torch hub cache


VIT_VARIANTS = {
    "vit_b_16": ViTVariant(768, 12, 12, hub_file="vit_b_16-c867db91.pth"),
    "vit_s_16": ViTVariant(384, 12, 6),
    "vit_ti_16": ViTVariant(192, 12, 3),
}


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax((q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5, dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    def __init__(self, variant: ViTVariant, image_size: tuple[int, int]):
        super().__init__()
        if image_size[0] % variant.patch or image_size[1] % variant.patch:
            raise EdgekdError(f"input size {image_size[0]}x{image_size[1]} is not a multiple of the ViT patch "
                              f"{variant.patch}: choose e.g. 224")
        self.grid = (image_size[0] // variant.patch, image_size[1] // variant.patch)
        self.patch_embed = nn.Conv2d(3, variant.dim, variant.patch, variant.patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, variant.dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + self.grid[0] * self.grid[1], variant.dim) * 0.02)
        self.blocks = nn.ModuleList(Block(variant.dim, variant.heads) for _ in range(variant.depth))
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1) + self.pos_embed.to(x.dtype)


def _resize_positions(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(1, 1 + g*g, D) position embeddings of a square grid -> the model's grid, bicubic on the patch part."""
    cls, patches = pos[:, :1], pos[:, 1:]
    side = int(math.isqrt(patches.shape[1]))
    if (side, side) == tuple(grid):
        return pos
    patches = patches.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False)
    return torch.cat([cls, patches.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)], dim=1)


def _from_torchvision(state: dict, depth: int) -> dict:
    out = {"patch_embed.weight": state["conv_proj.weight"], "patch_embed.bias": state["conv_proj.bias"],
           "cls_token": state["class_token"], "pos_embed": state["encoder.pos_embedding"]}
    for i in range(depth):
        src = f"encoder.layers.encoder_layer_{i}."
        pairs = {"norm1": "ln_1", "norm2": "ln_2", "attn.qkv": "self_attention.in_proj", "attn.proj": "self_attention.out_proj",
                 "mlp.0": "mlp.0", "mlp.2": "mlp.3"}
        for ours, theirs in pairs.items():
            for kind in ("weight", "bias"):
                key = f"{theirs}_{kind}" if theirs == "self_attention.in_proj" else f"{theirs}.{kind}"
                out[f"blocks.{i}.{ours}.{kind}"] = state[src + key]
    return out


def _from_timm(state: dict, depth: int) -> dict:
    out = {"patch_embed.weight": state["patch_embed.proj.weight"], "patch_embed.bias": state["patch_embed.proj.bias"],
           "cls_token": state["cls_token"], "pos_embed": state["pos_embed"]}
    for i in range(depth):
        pairs = {"norm1": "norm1", "norm2": "norm2", "attn.qkv": "attn.qkv", "attn.proj": "attn.proj",
                 "mlp.0": "mlp.fc1", "mlp.2": "mlp.fc2"}
        for ours, theirs in pairs.items():
            for kind in ("weight", "bias"):
                out[f"blocks.{i}.{ours}.{kind}"] = state[f"blocks.{i}.{theirs}.{kind}"]
    return out


def load_vit_state(model: VisionTransformer, state: dict, source: str) -> tuple[tuple, tuple]:
    """Load torchvision- or timm-format weights; returns the (mean, std) the weights were trained with."""
    depth = len(model.blocks)
    try:
        if "conv_proj.weight" in state:
            mapped, norm = _from_torchvision(state, depth), (IMAGENET_MEAN, IMAGENET_STD)
        elif "patch_embed.proj.weight" in state:
            mapped, norm = _from_timm(state, depth), (INCEPTION_MEAN, INCEPTION_STD)
        else:
            raise KeyError("conv_proj.weight / patch_embed.proj.weight")
    except KeyError as exc:
        raise EdgekdError(f"{source} is not a torchvision or timm ViT state dict (missing {exc}): pass the "
                          "checkpoint of that architecture") from None
    mapped["pos_embed"] = _resize_positions(mapped["pos_embed"], model.grid)
    try:
        model.load_state_dict(mapped)
    except RuntimeError as exc:
        raise EdgekdError(f"{source} does not fit this ViT ({str(exc).splitlines()[1].strip()[:120]}): "
                          "choose the matching vit_b_16 / vit_s_16 / vit_ti_16 teacher") from None
    return norm


class ViTFeatures(nn.Module):
    """Patch-token maps (B, D, h, w) of the tapped layers (1-based), then their class tokens (B, D, 1, 1)."""

    def __init__(self, name: str, vit: VisionTransformer, layers: tuple[int, ...], mean: tuple, std: tuple,
                 weights_sha256: str | None):
        super().__init__()
        if not layers or max(layers) > len(vit.blocks) or min(layers) < 1:
            raise EdgekdError(f"ViT layers {list(layers)} must lie in 1..{len(vit.blocks)}")
        self.name, self.vit, self.layers = name, vit, tuple(int(c) for c in layers)
        self.mean, self.std, self.weights_sha256 = tuple(mean), tuple(std), weights_sha256

    # Derived from the tapped layers, which a model may choose after building the teacher (ViTKD's `layers`).
    @property
    def channels(self) -> list[int]:
        return [self.vit.cls_token.shape[-1]] * (2 * len(self.layers))

    @property
    def strides(self) -> list[int]:
        return [self.vit.patch_embed.stride[0]] * len(self.layers) + [0] * len(self.layers)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.vit.tokens(images)
        patches, classes = [], []
        h, w = self.vit.grid
        for i, block in enumerate(self.vit.blocks[:max(self.layers)]):
            x = block(x)
            if i + 1 in self.layers:
                patches.append(x[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, h, w))
                classes.append(x[:, 0].reshape(x.shape[0], -1, 1, 1))
        return patches + classes


def build_vit_teacher(name: str, image_size: tuple[int, int], layers: tuple[int, ...],
                      weights: str | Path | None = None, pretrained: bool = True) -> ViTFeatures:
    from edgekd.backbones.weights import hub_checkpoint_dir, load_state_dict_file, sha256_of
    variant = VIT_VARIANTS[name]
    vit = VisionTransformer(variant, image_size)
    mean, std, digest = IMAGENET_MEAN, IMAGENET_STD, None
    if pretrained and str(weights) != "random":
        path = Path(weights) if weights else (hub_checkpoint_dir() / variant.hub_file if variant.hub_file else None)
        if path is None or not path.is_file():
            where = f" or place torchvision's {variant.hub_file} in {hub_checkpoint_dir()}" if variant.hub_file else ""
            raise EdgekdError(f"no weights for ViT teacher '{name}' (none can be downloaded here): pass a torchvision "
                              f"or timm state dict with --weights / teacher_weights{where}")
        mean, std = load_vit_state(vit, load_state_dict_file(path), str(path))
        digest = sha256_of(path)
    teacher = ViTFeatures(name, vit, layers, mean, std, digest).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher

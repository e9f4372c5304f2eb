"""Reverse distillation (Deng & Li, CVPR 2022): teacher encoder -> one-class bottleneck -> student decoder.

The bottleneck fuses the teacher's three scales at the deepest resolution and squeezes them through a
strided embedding, so the decoder can only rebuild what normal images look like.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from edgekd.errors import EdgekdError
from edgekd.models.base import AnomalyModel
from edgekd.models.blocks import ResidualBlock, conv_bn_relu, up_conv_bn_relu
from edgekd.models.colour_deviation import CHOICES, ColourDeviation, fit_colour, fit_notes
from edgekd.models.patch_memory import BALANCES, PatchMemory, fit_patch_memory
from edgekd.models.registry import register
from edgekd.scoring import image_score


class OneClassBottleneck(nn.Module):
    """Multi-scale feature fusion + one-class embedding (RD's OCBE), sized from the teacher's channels."""

    def __init__(self, channels: list[int], width: int, embed: int):
        super().__init__()
        c1, c2, c3 = channels
        self.align1 = nn.Sequential(conv_bn_relu(c1, width, 2), conv_bn_relu(width, width, 2))
        self.align2 = conv_bn_relu(c2, width, 2)
        self.align3 = conv_bn_relu(c3, width, 1)
        self.embed = nn.Sequential(conv_bn_relu(3 * width, embed, 2), ResidualBlock(embed))

    def fuse(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([self.align1(feats[0]), self.align2(feats[1]), self.align3(feats[2])], dim=1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.embed(self.fuse(feats))


class ResNetBottleneckBlock(nn.Module):
    """ResNet's bottleneck block (1x1 down to `inner`, 3x3 at `stride`, 1x1 up to `out_ch`, plus a shortcut), as
    RD4AD's one-class embedding stacks them."""

    def __init__(self, in_ch: int, inner: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(in_ch, inner, 1, kernel=1), conv_bn_relu(inner, inner, stride),
                                  nn.Conv2d(inner, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch))
        self.shortcut = nn.Identity() if in_ch == out_ch and stride == 1 else \
            nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.shortcut(x) + self.body(x))


class PaperBottleneck(nn.Module):
    """RD4AD's OCBE as its code builds it (`bottleneck: rd4ad`): layer 1 brought down twice (3x3 at stride 2, to
    width/2 then width channels), layer 2 once (to width), layer 3 as it is; concatenated and squeezed by `blocks`
    ResNet bottleneck blocks (the first at stride 2) to `embed` channels, each `inner` channels wide in the middle
    (wide_resnet50_2's: embed/2). edgekd's own bottleneck (OneClassBottleneck) convolves layer 3 too and embeds with
    one 3x3 conv and one plain residual block: 158M parameters at the paper's widths, against RD4AD's 59M."""

    def __init__(self, channels: list[int], width: int, embed: int, blocks: int = 3, inner: int | None = None):
        super().__init__()
        c1, c2, c3 = channels
        inner = inner or embed // 2
        self.align1 = nn.Sequential(conv_bn_relu(c1, width // 2, 2), conv_bn_relu(width // 2, width, 2))
        self.align2 = conv_bn_relu(c2, width, 2)
        self.embed = nn.Sequential(ResNetBottleneckBlock(2 * width + c3, inner, embed, stride=2),
                                   *(ResNetBottleneckBlock(embed, inner, embed) for _ in range(blocks - 1)))

    def fuse(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([self.align1(feats[0]), self.align2(feats[1]), feats[2]], dim=1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.embed(self.fuse(feats))


BOTTLENECKS = {"edgekd": OneClassBottleneck, "rd4ad": PaperBottleneck}


class DecoderStage(nn.Module):
    """x2 up, refine, and a linear projection to the teacher's channels (teacher features are signed)."""

    def __init__(self, in_ch: int, hidden: int, out_ch: int):
        super().__init__()
        self.body = nn.Sequential(up_conv_bn_relu(in_ch, hidden), ResidualBlock(hidden))
        self.project = nn.Conv2d(hidden, out_ch, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.body(x)
        return hidden, self.project(hidden)


class StudentDecoder(nn.Module):
    def __init__(self, channels: list[int], embed: int, widths: list[int]):
        super().__init__()
        w1, w2, w3 = widths
        self.stage3 = DecoderStage(embed, w3, channels[2])
        self.stage2 = DecoderStage(w3, w2, channels[1])
        self.stage1 = DecoderStage(w2, w1, channels[0])

    def forward(self, embedding: torch.Tensor) -> list[torch.Tensor]:
        h3, d3 = self.stage3(embedding)
        h2, d2 = self.stage2(h3)
        _, d1 = self.stage1(h2)
        return [d1, d2, d3]


def _non_negative(name: str, value, hint: str = "") -> float:
    """A weight or gate of model_options: a finite number >= 0, or one line naming it."""
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise EdgekdError(f"model_options.{name} must be a finite number >= 0{hint}, not {value!r}")
    return float(value)


def colour_branch(input_size, colour_weight: float = 0.0, colour_image_weight: float = 0.0, colour_form: str = "auto",
                  colour_margin: float = 0.0, **_) -> ColourDeviation | None:
    """The colour branch the model options ask for (None when neither weight is set), its options checked; takes
    the whole model_options mapping too: `colour_branch(size, **options)`."""
    colour_weight = _non_negative("colour_weight", colour_weight)
    colour_image_weight = _non_negative("colour_image_weight", colour_image_weight)
    if colour_form not in CHOICES:
        raise EdgekdError(f"model_options.colour_form must be one of {', '.join(CHOICES)}, not {colour_form!r}")
    colour_margin = _non_negative("colour_margin", colour_margin)
    if not (colour_weight or colour_image_weight):
        return None
    return ColourDeviation(input_size, colour_weight, colour_image_weight, colour_form, colour_margin)


@register("rd")
class ReverseDistillation(AnomalyModel):
    """memory_size > 0 adds a patch memory (edgekd/models/patch_memory.py) whose nearest-neighbour map is fused
    with the distillation map: what the default config uses, since it is what holds on natural textures.
    colour_weight > 0 (pixel by pixel) or colour_image_weight > 0 (its own image maximum) adds the colour branch
    (edgekd/models/colour_deviation.py) to the image score: local colour shifts that the camera-augmented networks
    learned to ignore. colour_gate (normal spreads; 0 = no check) keeps it out of the score on surfaces where a
    camera moves it by more than that."""

    def __init__(self, teacher, input_size, scoring, width: int = 96, embed: int = 192,
                 decoder_widths: tuple[int, int, int] = (32, 64, 128), memory_size: int = 0,
                 memory_weight: float = 1.0, memory_balance: str = "spread", colour_weight: float = 0.0,
                 colour_image_weight: float = 0.0, colour_gate: float = 0.0, colour_form: str = "auto",
                 colour_margin: float = 0.0, bottleneck: str = "edgekd", **options):
        super().__init__(teacher, input_size, scoring, **options)
        if bottleneck not in BOTTLENECKS:
            raise EdgekdError(f"model_options.bottleneck must be one of {', '.join(BOTTLENECKS)}, not {bottleneck!r}")
        self.bottleneck = BOTTLENECKS[bottleneck](teacher.channels, width, embed)
        self.decoder = StudentDecoder(teacher.channels, embed, list(decoder_widths))
        self.patch_memory = PatchMemory(teacher.channels, int(memory_size)) if memory_size else None
        self.memory_weight = _non_negative("memory_weight", float(memory_weight))
        if memory_balance not in BALANCES:
            raise EdgekdError(f"model_options.memory_balance must be one of {', '.join(BALANCES)}, "
                              f"not {memory_balance!r}")
        self.memory_balance = memory_balance
        self.colour = colour_branch(self.input_size, colour_weight, colour_image_weight, colour_form, colour_margin)
        self.colour_gate = _non_negative("colour_gate", colour_gate, " (0: no camera check)")

    def student_features(self, images, teacher_feats):
        return self.decoder(self.bottleneck(teacher_feats))

    def feature_diff(self, teacher_feats, student_feats, diff):
        if self.patch_memory is None:
            return super().feature_diff(teacher_feats, student_feats, diff)
        distill_map = diff(teacher_feats, student_feats, self.scale_weights(), False)[0]
        amap = self.patch_memory.fuse(distill_map, teacher_feats, self.memory_weight)
        return amap, image_score(amap, self.scorer.config.score, self.scorer.config.topk)

    def finish_map(self, images, outputs):
        """The colour branch joins the image score only (colour_deviation.py says how). Added to the map itself, its
        coarse patches lit the pixels around every colourful defect and cost grass 2.8 pixel-AUROC and 12 AUPRO
        points (real_textures_tried.md, 13)."""
        if self.colour is None or not self.colour.is_kept:
            return outputs
        amap, score, colour_map = outputs[0], outputs[1], self.colour(images)
        if self.colour.weight:
            score = image_score(amap + self.colour.fused_term(colour_map, amap.shape[-2:]), self.scorer.config.score,
                                self.scorer.config.topk)
        if self.colour.image_weight:
            score = torch.maximum(score, self.colour.image_term(colour_map))
        return (amap, score, *outputs[2:])

    def fit_normal(self, fit_batches, held_out_batches) -> dict:
        summary = fit_patch_memory(self, fit_batches, held_out_batches) if self.patch_memory is not None else {}
        if self.colour is not None:  # after the memory: it balances against the map the memory is part of
            summary.update(fit_colour(self, fit_batches, held_out_batches, self.colour_gate or None))
            summary["notes"] = fit_notes(summary)
        return summary

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """The detector's map from the features alone (distillation and memory), before finish_map."""
        teacher_feats = self.teacher_features(images)
        return self.feature_diff(teacher_feats, self.student_features(images, teacher_feats), self.reference_diff)[0]

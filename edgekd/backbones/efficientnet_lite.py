"""EfficientNet-Lite0/1/2 as TensorFlow defines them (ReLU6, no squeeze-excitation, 'SAME' padding).

Parameter names follow torchvision's EfficientNet (`features.S.B.block.I.J`, `classifier.1`) so the layout is
familiar; the published Lite weights come in TF order and are mapped onto these names in order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.errors import EdgekdError

# (expand ratio, kernel, stride, output channels, repeats) of EfficientNet-B0; Lite variants scale these.
_BASE_STAGES = [
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
]
_BN_EPS = 1e-3  # TF's BatchNorm epsilon; torch's default 1e-5 shifts the logits


@dataclass(frozen=True)
class LiteVariant:
    width: float
    depth: float
    resolution: int


LITE_VARIANTS = {
    "efficientnet_lite0": LiteVariant(1.0, 1.0, 224),
    "efficientnet_lite1": LiteVariant(1.0, 1.1, 240),
    "efficientnet_lite2": LiteVariant(1.1, 1.2, 260),
}


def _round_filters(channels: int, width: float, divisor: int = 8) -> int:
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


class SameConv2d(nn.Conv2d):
    """Conv2d with TF 'SAME' padding: strided convs pad more at the bottom/right than at the top/left."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(in_ch, out_ch, kernel, stride=stride, padding=0 if stride > 1 else kernel // 2,
                         groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] == 1:
            return super().forward(x)
        pads = []
        # Python ints, not traced shape arithmetic: exported graphs have a fixed input size, and constant pads
        # let onnxruntime and TensorRT fold the Pad into the convolution.
        for size in (int(x.shape[-1]), int(x.shape[-2])):
            total = max((math.ceil(size / self.stride[0]) - 1) * self.stride[0] + self.kernel_size[0] - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, None, self.stride, 0, 1, self.groups)


class ConvBNAct(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True):
        layers = [SameConv2d(in_ch, out_ch, kernel, stride, groups), nn.BatchNorm2d(out_ch, eps=_BN_EPS)]
        if act:
            layers.append(nn.ReLU6(inplace=True))
        super().__init__(*layers)


class MBConv(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, expand: int, kernel: int, stride: int):
        super().__init__()
        hidden = in_ch * expand
        layers = []
        if expand != 1:
            layers.append(ConvBNAct(in_ch, hidden, 1))
        layers += [ConvBNAct(hidden, hidden, kernel, stride, groups=hidden), ConvBNAct(hidden, out_ch, 1, act=False)]
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_residual else out


class EfficientNetLite(nn.Module):
    """The full classifier; `features[0]` is the stem, `features[1..7]` the MBConv stages, `features[8]` the head."""

    def __init__(self, variant: str = "efficientnet_lite0", num_classes: int = 1000):
        super().__init__()
        spec = LITE_VARIANTS[variant]
        stem = 32  # Lite keeps stem and head fixed across variants
        features: list[nn.Module] = [ConvBNAct(3, stem, 3, stride=2)]
        in_ch = stem
        self.stage_channels = []
        for index, (expand, kernel, stride, out, repeats) in enumerate(_BASE_STAGES):
            out = _round_filters(out, spec.width)
            if 0 < index < len(_BASE_STAGES) - 1:  # Lite does not deepen the first and last stage
                repeats = int(math.ceil(spec.depth * repeats))
            blocks = []
            for repeat in range(repeats):
                blocks.append(MBConv(in_ch, out, expand, kernel, stride if repeat == 0 else 1))
                in_ch = out
            features.append(nn.Sequential(*blocks))
            self.stage_channels.append(out)
        features.append(ConvBNAct(in_ch, 1280, 1))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def load_tf_ordered_state(model: nn.Module, state: dict, source: str) -> None:
    """Copy a state dict whose names differ from ours but whose tensor order and shapes match."""
    ours = model.state_dict()
    theirs = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    mine = [k for k in ours if not k.endswith("num_batches_tracked")]
    if len(theirs) != len(mine):
        raise EdgekdError(f"{source} has {len(theirs)} tensors but {model.__class__.__name__} needs {len(mine)}: "
                          "it is not an EfficientNet-Lite checkpoint of this variant")
    mapped = {}
    for (their_key, tensor), my_key in zip(theirs, mine):
        if tuple(tensor.shape) != tuple(ours[my_key].shape):
            raise EdgekdError(f"{source}: tensor {their_key} has shape {tuple(tensor.shape)}, "
                              f"expected {tuple(ours[my_key].shape)} for {my_key}: wrong EfficientNet-Lite variant")
        mapped[my_key] = tensor
    model.load_state_dict(mapped, strict=False)

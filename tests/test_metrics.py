import math

import numpy as np
import pytest

from edgekd.calibration import ThresholdRule, thresholds_from_normal
from edgekd.errors import EdgekdError
from edgekd.metrics import aupro, f1_max, image_auroc, pixel_auroc


def test_aupro_worked_by_hand():
    # One 2-pixel defect, 14 normal pixels. Descending scores: defect px (1.0) -> PRO 0.5 at FPR 0;
    # a normal px (0.7) -> FPR 1/14; the other defect px (0.5) -> PRO 1.0. Area to FPR 0.3:
    # 0.5 * 1/14 + 1.0 * (0.3 - 1/14), normalised by 0.3.
    masks = np.zeros((1, 4, 4), bool)
    masks[0, 0, :2] = True
    maps = np.zeros((1, 4, 4))
    maps[0, 0, 0], maps[0, 0, 1], maps[0, 3, 3] = 1.0, 0.5, 0.7
    expected = (0.5 / 14 + (0.3 - 1 / 14)) / 0.3
    assert aupro(masks, maps) == pytest.approx(expected, abs=1e-12)


def test_aupro_weights_regions_equally():
    # A big region found perfectly and a one-pixel region missed entirely: PRO is 0.5, not ~1.
    masks = np.zeros((1, 10, 10), bool)
    masks[0, :5, :5] = True
    masks[0, 9, 9] = True
    maps = np.where(masks, 2.0, 1.0)  # normal pixels above the missed one, so no tie blurs the curve
    maps[0, 9, 9] = 0.0
    assert aupro(masks, maps) == pytest.approx(0.5, abs=1e-9)


def test_aupro_perfect_and_no_regions():
    masks = np.zeros((2, 8, 8), bool)
    masks[1, 2:4, 2:5] = True
    assert aupro(masks, masks.astype(float)) == pytest.approx(1.0)
    assert math.isnan(aupro(np.zeros((1, 4, 4), bool), np.zeros((1, 4, 4))))


def test_auroc_and_f1():
    labels = np.array([0, 0, 1, 1])
    assert image_auroc(labels, np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert math.isnan(image_auroc(np.array([0, 0]), np.array([0.1, 0.2])))
    f1, threshold = f1_max(labels, np.array([0.1, 0.2, 0.7, 0.9]))
    assert f1 == pytest.approx(1.0)
    assert np.all((np.array([0.1, 0.2, 0.7, 0.9]) > threshold) == labels.astype(bool))
    masks = np.array([[[0, 1], [0, 0]]], bool)
    assert pixel_auroc(masks, np.array([[[0.1, 0.9], [0.2, 0.3]]])) == pytest.approx(1.0)


def test_thresholds_from_normal_follow_the_robust_rule():
    scores = np.array([1.0, 2.0, 3.0, 2.5, 1.5, 2.2, 1.8, 2.1, 1.9, 2.4])
    maps = np.stack([np.full((2, 2), v) for v in scores])
    t = thresholds_from_normal(scores, maps, ThresholdRule(quantile=0.99, margin=3.0))
    s = 1.4826 * np.median(np.abs(scores - np.median(scores)))
    assert t["image"] == pytest.approx(max(np.quantile(scores, 0.99) + 3 * s, scores.max() + s))
    assert t["pixel"] == pytest.approx(t["image"]) and t["n"] == 10


def test_threshold_is_never_below_the_largest_normal_value_and_ignores_outliers_in_its_spread():
    rng = np.random.default_rng(0)
    rule = ThresholdRule()
    for n in (10, 16, 50, 1000):
        values = rng.normal(1.0, 0.05, n)
        assert rule.threshold(values) > values.max()
    # One odd frame moves mean + 3 std a lot; the robust spread hardly moves.
    values = rng.normal(1.0, 0.05, 200)
    odd = np.append(values, 3.0)
    assert rule.spread(odd) == pytest.approx(rule.spread(values), rel=0.05)
    assert rule.threshold(odd) > 3.0
    # Identical frames still get a margin; NaN never becomes a threshold.
    assert rule.threshold(np.full(20, 0.5)) > 0.5
    with pytest.raises(EdgekdError, match="not finite"):
        rule.threshold(np.array([0.5, np.nan, 0.6]))
    with pytest.raises(EdgekdError, match="quantile"):
        ThresholdRule.from_config({"quantile": 1.5})
    assert ThresholdRule.from_config({"method": "normal", "k_sigma": 2.0}).margin == 2.0  # older checkpoints

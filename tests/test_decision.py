"""The decision, once: a score strictly above its threshold is a defect, in every path that decides."""

import numpy as np

from edgekd.calibration import ThresholdRule, Thresholds, screen_clip
from edgekd.config import DEFAULTS
from edgekd.metrics import compute_metrics
from edgekd.scoring import threshold_mask
from edgekd.stream.detect import frame_is_defective


def test_a_score_equal_to_the_threshold_is_normal_everywhere():
    decide = Thresholds(image=0.5, pixel=0.25)
    assert not decide.defective(0.5) and decide.defective(0.5000001)
    assert not frame_is_defective(0.5, [], decide, 0) and frame_is_defective(0.6, [], decide, 0)
    amap = np.array([[0.25, 0.26]])
    assert threshold_mask(amap, decide.pixel).tolist() == [[0, 1]] == decide.defect_pixels(amap).astype(int).tolist()
    labels, scores = np.array([0, 0, 1, 1]), np.array([0.1, 0.5, 0.5, 0.9])
    metrics = compute_metrics(labels, scores, np.zeros((4, 2, 2)), np.zeros((4, 2, 2)), image_threshold=0.5)
    assert metrics["at_threshold"]["recall"] == 0.5 and metrics["at_threshold"]["false_alarm_rate"] == 0.0


def test_the_rule_has_one_set_of_defaults():
    rule = ThresholdRule()
    assert DEFAULTS["threshold"] == rule.as_config() and ThresholdRule.from_config({}) == rule
    # the clip screen decides its outliers with the same comparison
    scores = np.r_[np.linspace(1.0, 1.1, 40), 5.0]
    screen = screen_clip(scores, scores, rule)
    assert list(screen.outliers) == [40] and Thresholds(**{k: screen.thresholds[k] for k in ("image", "pixel")}).defective(5.0)

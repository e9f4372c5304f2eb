"""Decision thresholds: from normal images only (what a line has on day one), or F1-optimal with labels."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgekd.errors import EdgekdError
from edgekd.metrics import f1_max


def score_statistics(scores: np.ndarray) -> dict:
    scores = np.asarray(scores, dtype=np.float64)
    return {"n": int(scores.size), "mean": float(scores.mean()), "std": float(scores.std()),
            "min": float(scores.min()), "max": float(scores.max()),
            "p50": float(np.percentile(scores, 50)), "p95": float(np.percentile(scores, 95)),
            "p99": float(np.percentile(scores, 99))}


def robust_spread(values: np.ndarray, relative_floor: float = 1e-3) -> float:
    """1.4826 x the median absolute deviation (the standard deviation, for normal data), floored at
    `relative_floor` of the median's size and at 1e-6, so identical values still have a spread."""
    median = float(np.median(values))
    mad = 1.4826 * float(np.median(np.abs(values - median)))
    return max(mad, relative_floor * abs(median), 1e-6)


MIN_NORMAL = 10  # fewer normal samples than this cannot set a threshold
ADVISED_NORMAL = 50  # below this the rule works, but a warning says more would be safer


@dataclass(frozen=True)
class ThresholdRule:
    """THE rule that turns normal samples into a threshold (training's held-out images, `edgekd calibrate`'s frames,
    re-calibration after FP16/INT8 export):

        threshold = max(Q_quantile + margin * s,  largest normal value + s),   s = 1.4826 * MAD

    The quantile and the median absolute deviation hold up on small samples and ignore a few odd frames, where the
    mean and standard deviation of 16 images do not; the threshold is never below the largest normal value seen."""
    quantile: float = 0.99
    # Training's held-out images and `edgekd calibrate`'s camera frames alike. Margin 2 looked as safe on the 9
    # real-texture video tests it was chosen on (benchmarks/results/threshold_margin.md), but with the halves of the
    # normal images swapped it flagged 2 of 180 pastel_paper frames and 1 gravel frame (threshold_margin_swapped.md),
    # over the 1% target; 3 flagged none on either split.
    margin: float = 3.0

    @classmethod
    def from_config(cls, section: dict | None) -> "ThresholdRule":
        section = dict(section or {})
        margin = section.get("margin", section.get("k_sigma", 3.0))  # k_sigma: checkpoints before the robust rule
        rule = cls(float(section.get("quantile", 0.99)), float(margin))
        if not (0.5 <= rule.quantile <= 1.0) or not math.isfinite(rule.margin) or rule.margin < 0:
            raise EdgekdError(f"threshold.quantile must be in [0.5, 1] and threshold.margin >= 0 (got {rule.quantile}, "
                              f"{rule.margin})")
        return rule

    def spread(self, values: np.ndarray) -> float:
        return robust_spread(values)  # identical frames still get a margin

    def threshold(self, values: np.ndarray) -> float:
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        if values.size == 0 or not np.all(np.isfinite(values)):
            raise EdgekdError("cannot set a threshold: the normal scores are empty or not finite (NaN/inf): check the "
                              "model and the images")
        s = self.spread(values)
        return float(max(np.quantile(values, self.quantile) + self.margin * s, values.max() + s))


def thresholds_from_normal(normal_scores: np.ndarray, normal_maps: np.ndarray, rule: ThresholdRule) -> dict:
    """Image threshold from normal image scores; pixel threshold from each normal image's hottest pixel, so a
    normal image gives an empty mask."""
    peak = np.asarray(normal_maps).reshape(len(normal_maps), -1).max(axis=1)
    return {"method": "robust", "quantile": rule.quantile, "margin": rule.margin, "n": int(len(normal_scores)),
            "image": rule.threshold(normal_scores), "pixel": rule.threshold(peak)}


def thresholds_from_labels(labels: np.ndarray, scores: np.ndarray, masks: np.ndarray, maps: np.ndarray,
                           max_pixels: int = 2_000_000, seed: int = 0) -> dict:
    """F1-optimal image and pixel thresholds on labelled data (pixels subsampled to bound memory)."""
    _, image = f1_max(labels, scores)
    flat_masks, flat_maps = masks.reshape(-1), maps.reshape(-1)
    if flat_maps.size > max_pixels:
        pick = np.random.default_rng(seed).choice(flat_maps.size, max_pixels, replace=False)
        flat_masks, flat_maps = flat_masks[pick], flat_maps[pick]
    _, pixel = f1_max(flat_masks, flat_maps)
    return {"method": "f1", "image": image, "pixel": pixel}


def check_thresholds(thresholds: dict | None, artifact: str = "this model") -> dict:
    """Thresholds a verdict may use: each of image/pixel absent or a finite number. A NaN threshold compares False
    with every score, so it would call every defect normal; it is refused, never used."""
    thresholds = dict(thresholds or {})
    for key in ("image", "pixel"):
        value = thresholds.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise EdgekdError(f"{artifact} holds an unusable {key} threshold ({value!r}): it would hide defects; set "
                              f"thresholds with 'edgekd calibrate {artifact} --source <clip of good parts>'")
    return thresholds


def check_threshold_override(value: float | None, option: str = "--threshold") -> float | None:
    """--threshold from the command line: a finite number, or refused (NaN would call every defect normal)."""
    if value is not None and not math.isfinite(value):
        raise EdgekdError(f"{option} {value} is not a finite number: pass a score such as 0.8, or leave it out to "
                          "use the model's calibrated thresholds")
    return value

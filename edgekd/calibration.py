"""Decision thresholds from normal images only (what a line has on day one), and the decision itself. F1-optimal
thresholds from labelled data are a metric: edgekd/metrics.py."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from edgekd.errors import EdgekdError


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


# A clip of "good" parts may hold a bad one. The rule's "largest normal + s" term would lift the threshold over
# it and over every defect scoring below it. So the rule is applied to the clip's core: frames within FENCE robust
# spreads of the median (by image score and by hottest pixel; the median and MAD hold with up to half the clip
# outlying). Frames above the thresholds the core sets are outliers: the thresholds would call them defects, so they
# are listed for review. Frames between the fence and the thresholds stay below them, and are not listed.
# FENCE 4: normal frames of 100-frame clips reached 1.8-3.2 spreads on the real-texture categories measured, while
# defects at 4-6 spreads left in a clip cost line defects
# (benchmarks/results/calibration-poisoning/calibration_poisoning*.md).
OUTLIER_FENCE = 4.0
MAX_OUTLIER_SHARE = 0.05  # beyond this share of outlying frames the clip is refused (unless the operator accepts)


@dataclass(frozen=True)
class ClipScreen:
    """Which frames of a calibration clip the rule uses, and which it calls outliers."""
    core: np.ndarray  # bool per frame: within the fence, the frames the thresholds come from
    thresholds: dict  # the rule's image and pixel thresholds from the core (thresholds_from_normal)
    outliers: np.ndarray  # indices of frames above the core's thresholds, most outlying first
    excess: np.ndarray  # per frame: the larger of its score's and its peak's robust spreads above the median

    @property
    def share(self) -> float:
        return len(self.outliers) / max(1, len(self.core))


def screen_clip(scores: np.ndarray, peaks: np.ndarray, rule: "ThresholdRule", fence: float | None = None,
                levels: np.ndarray | None = None) -> ClipScreen:
    fence = OUTLIER_FENCE if fence is None else fence
    scores, peaks = np.asarray(scores, np.float64), np.asarray(peaks, np.float64)
    excess = np.zeros(len(scores))
    for values in (scores, peaks):
        excess = np.maximum(excess, (values - np.median(values)) / robust_spread(values))
    core = excess <= fence
    if core.sum() < MIN_NORMAL:  # too few frames inside: no core to speak of, the rule takes them all
        core = np.ones(len(scores), bool)
    thresholds = thresholds_from_normal(scores[core], peaks[core, None], rule,
                                        levels[core] if levels is not None else None)
    if levels is None:  # without the frames' levels there is no normal level to cut masks to
        thresholds.pop("background")
    decide = Thresholds(thresholds["image"], thresholds["pixel"])
    outlying = decide.defective(scores) | decide.defect_pixels(peaks)
    order = np.argsort(-excess)
    return ClipScreen(core, thresholds, order[outlying[order]], excess)


def all_identical(values: np.ndarray) -> bool:
    """Frames that all score the same (to 1e-6 of their size): a covered lens, a frozen or dead camera."""
    values = np.asarray(values, np.float64)
    return values.size > 1 and float(values.max() - values.min()) <= 1e-6 * max(1.0, float(np.abs(values).max()))


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
    # real-texture video tests it was chosen on (benchmarks/results/calibration-margin/archive/threshold_margin.md), but with the halves of the
    # normal images swapped it flagged 2 of 180 pastel_paper frames and 1 gravel frame (threshold_margin_swapped.md),
    # over the 1% target; 3 flagged none on either split.
    margin: float = 3.0

    @classmethod
    def from_config(cls, section: dict | None) -> "ThresholdRule":
        section = dict(section or {})
        margin = section.get("margin", section.get("k_sigma", cls.margin))  # k_sigma: checkpoints before the robust rule
        rule = cls(float(section.get("quantile", cls.quantile)), float(margin))
        if not (0.5 <= rule.quantile <= 1.0) or not math.isfinite(rule.margin) or rule.margin < 0:
            raise EdgekdError(f"threshold.quantile must be in [0.5, 1] and threshold.margin >= 0 (got {rule.quantile}, "
                              f"{rule.margin})")
        return rule

    def as_config(self) -> dict:
        return {"method": "robust", "quantile": self.quantile, "margin": self.margin}

    def spread(self, values: np.ndarray) -> float:
        return robust_spread(values)  # identical frames still get a margin

    def threshold(self, values: np.ndarray) -> float:
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        if values.size == 0 or not np.all(np.isfinite(values)):
            raise EdgekdError("cannot set a threshold: the normal scores are empty or not finite (NaN/inf): check the "
                              "model and the images")
        s = self.spread(values)
        return float(max(np.quantile(values, self.quantile) + self.margin * s, values.max() + s))


def thresholds_from_normal(normal_scores: np.ndarray, normal_maps: np.ndarray, rule: ThresholdRule,
                           levels: np.ndarray | None = None) -> dict:
    """Image threshold from normal image scores; pixel threshold from each normal image's hottest pixel, so a
    normal image gives an empty mask; the map's normal level (`background`, what masks are cut against: region_cores)
    is the median pixel of the normal maps, or of `levels` (each frame's median, where the maps are not kept)."""
    peak = np.asarray(normal_maps).reshape(len(normal_maps), -1).max(axis=1)
    background = float(np.median(levels if levels is not None else normal_maps))
    return {**rule.as_config(), "n": int(len(normal_scores)), "image": rule.threshold(normal_scores),
            "pixel": rule.threshold(peak), "background": background}


# A defect lights the map well beyond its edge: the patch memory's distances are of 3x3 neighbourhoods of stride-8
# patches, then upsampled, so a 3-pixel scratch became a region 10-20 times its area (cork). Each region of the map
# above the pixel threshold is cut to its core: the pixels above PEAK_FRACTION of the way from the map's normal level
# to the region's own peak (a half-maximum width, as a blurred spot's size is measured). Weak regions, whose peak is
# near the threshold, keep their pixels above the threshold; a region never vanishes (its peak stays).
# 0.6 on the real-texture benchmark: benchmarks/results/mask-fidelity/.
PEAK_FRACTION = 0.6


def region_cores(amap: np.ndarray, mask: np.ndarray, background: float) -> np.ndarray:
    """(H,W) map and its uint8 mask above the pixel threshold -> the mask with each region cut to its core."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    cores = np.zeros_like(mask)
    for label in range(1, count):
        x, y, w, h = (int(v) for v in stats[label, :4])
        box, inside = amap[y:y + h, x:x + w], labels[y:y + h, x:x + w] == label
        peak = float(box[inside].max())
        cut = min(background + PEAK_FRACTION * (peak - background), peak)
        cores[y:y + h, x:x + w][inside & (box >= cut)] = 1
    return cores


def check_thresholds(thresholds: dict | None, artifact: str = "this model") -> dict:
    """Thresholds a verdict may use: each of image/pixel absent or a finite number. A NaN threshold compares False
    with every score, so it would call every defect normal; it is refused, never used."""
    thresholds = dict(thresholds or {})
    for key in ("image", "pixel", "background"):
        value = thresholds.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise EdgekdError(f"{artifact} holds an unusable {key} threshold ({value!r}): it would hide defects; set "
                              f"thresholds with 'edgekd calibrate {artifact} --source <clip of good parts>'")
    return thresholds


def above(values, threshold: float):
    """THE decision: a value strictly above its threshold is a defect (an image score against the image threshold, a
    map pixel against the pixel threshold); one equal to it is normal. Scalars and NumPy arrays."""
    return values > threshold


@dataclass(frozen=True)
class Thresholds:
    """The pair every verdict uses: the image threshold decides the part, the pixel threshold its mask (cut to each
    region's core when the map's normal level is known: artifacts calibrated before it was stored keep plain masks)."""
    image: float
    pixel: float
    background: float | None = None

    def defective(self, score):
        return above(score, self.image)

    def defect_pixels(self, amap):
        return above(amap, self.pixel)

    def mask(self, amap: np.ndarray) -> np.ndarray:
        """THE defect mask of one (H,W) map, uint8: what `edgekd run` outlines and measures, `edgekd eval` scores
        and `predict` writes."""
        mask = self.defect_pixels(np.asarray(amap)).astype(np.uint8)
        if self.background is None or not mask.any():
            return mask
        return region_cores(np.asarray(amap, np.float32), mask, self.background)

    def masks(self, maps: np.ndarray) -> np.ndarray:
        """(N,H,W) maps -> (N,H,W) uint8 masks, each as `mask` makes it."""
        maps = np.asarray(maps)
        return np.stack([self.mask(amap) for amap in maps]) if len(maps) else np.zeros(maps.shape, np.uint8)

    @classmethod
    def for_masks(cls, artifact_thresholds: dict | None) -> "Thresholds | None":
        """What masks need of an artifact's thresholds (its pixel threshold and normal level); None without a pixel
        threshold."""
        known = dict(artifact_thresholds or {})
        if known.get("pixel") is None:
            return None
        return cls(float(known.get("image", math.inf)), float(known["pixel"]), _background(known))

    @classmethod
    def resolve(cls, artifact_thresholds: dict | None, override: float | None,
                pixel_override: float | None = None) -> "Thresholds":
        """--threshold overrides both (as in `edgekd predict`), --pixel-threshold the pixel one alone (masks and
        regions; a model whose image score has a branch of its own scores images above its map's peak); otherwise
        the artifact's own."""
        check_threshold_override(override)
        check_threshold_override(pixel_override, "--pixel-threshold")
        known = dict(artifact_thresholds or {})
        if override is not None:
            known = {"image": override, "pixel": override}
        if pixel_override is not None:
            known["pixel"] = pixel_override
        if known.get("image") is None or known.get("pixel") is None:
            raise EdgekdError("this model has no thresholds: pass --threshold, or export it from a checkpoint "
                              "calibrated by 'edgekd train' / 'edgekd eval --save-threshold'")
        return cls(float(known["image"]), float(known["pixel"]), _background(artifact_thresholds or {}))


def _background(thresholds: dict) -> float | None:
    value = thresholds.get("background")
    return float(value) if value is not None else None


def check_threshold_override(value: float | None, option: str = "--threshold") -> float | None:
    """--threshold from the command line: a finite number, or refused (NaN would call every defect normal)."""
    if value is not None and not math.isfinite(value):
        raise EdgekdError(f"{option} {value} is not a finite number: pass a score such as 0.8, or leave it out to "
                          "use the model's calibrated thresholds")
    return value

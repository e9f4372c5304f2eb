"""How well the masks the line sees match the defects: overlap, size and regions at one pixel threshold.

AUROC and AUPRO integrate over thresholds, so a mask three times the defect's area scores well on both; a quality
engineer who rejects "spots larger than 0.5 mm2" sees only the mask at the operating point. Per defect image: Dice,
IoU and the predicted/true area ratio; over all images: region recall (a true region is found when a predicted
region touches it), region precision (a predicted region is false when it touches no true region) and false regions
per normal image. The predicted mask is the runner's (edgekd/stream/detect.py: Thresholds.mask, regions under
`min_area` dropped), so these are the outlines `edgekd run` draws.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from edgekd.calibration import Thresholds
from edgekd.stream.detect import defect_regions

SUMMARY_KEYS = ("dice_median", "dice_mean", "iou_median", "iou_mean", "area_ratio_median", "area_ratio_q25",
                "area_ratio_q75", "region_recall", "region_precision", "false_regions_per_normal_image")


def _components(mask: np.ndarray) -> tuple[int, np.ndarray]:
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return count - 1, labels


def image_fidelity(predicted: np.ndarray, truth: np.ndarray) -> dict:
    """One image's predicted and true masks (HxW, bool) -> overlap, area and region counts. Dice, IoU and the area
    ratio are for defect images only (None when the truth is empty)."""
    predicted, truth = predicted.astype(bool), truth.astype(bool)
    true_count, true_labels = _components(truth)
    pred_count, pred_labels = _components(predicted)
    # Which true regions a predicted pixel lands in, and which predicted regions land on a true pixel.
    found = np.unique(true_labels[predicted & truth]).size if true_count else 0
    touching = np.unique(pred_labels[predicted & truth]).size if pred_count else 0
    result = {"true_regions": true_count, "found_regions": found, "predicted_regions": pred_count,
              "false_regions": pred_count - touching}
    true_area, pred_area = int(truth.sum()), int(predicted.sum())
    if true_area:
        overlap = int((predicted & truth).sum())
        result.update(dice=2.0 * overlap / (pred_area + true_area), iou=overlap / int((predicted | truth).sum()),
                      area_ratio=pred_area / true_area)
    return result


def predicted_mask(amap: np.ndarray, thresholds: Thresholds, min_area: int = 0) -> np.ndarray:
    """The runner's mask for one map at model resolution."""
    return defect_regions(amap, thresholds, amap.shape[:2], min_area)[1].astype(bool)


def _quantile(values: list[float], q: float) -> float:
    return float(np.quantile(values, q)) if values else math.nan


def summarise(per_image: list[dict], labels: np.ndarray) -> dict:
    """The per-image results of a test split -> the figures a results table shows."""
    defect = [r for r, label in zip(per_image, labels) if label == 1 and "dice" in r]
    normal = [r for r, label in zip(per_image, labels) if label == 0]
    dice, iou = [r["dice"] for r in defect], [r["iou"] for r in defect]
    ratios = [r["area_ratio"] for r in defect]
    true_regions = sum(r["true_regions"] for r in defect)
    predicted_on_defects = sum(r["predicted_regions"] for r in defect)
    return {"dice_median": _quantile(dice, 0.5), "dice_mean": float(np.mean(dice)) if dice else math.nan,
            "iou_median": _quantile(iou, 0.5), "iou_mean": float(np.mean(iou)) if iou else math.nan,
            "area_ratio_median": _quantile(ratios, 0.5), "area_ratio_q25": _quantile(ratios, 0.25),
            "area_ratio_q75": _quantile(ratios, 0.75),
            "region_recall": sum(r["found_regions"] for r in defect) / true_regions if true_regions else math.nan,
            "region_precision": 1.0 - sum(r["false_regions"] for r in defect) / predicted_on_defects
            if predicted_on_defects else math.nan,
            "false_regions_per_normal_image": sum(r["predicted_regions"] for r in normal) / len(normal)
            if normal else math.nan,
            "n_defect_images": len(defect), "n_normal_images": len(normal)}


def mask_fidelity(maps: np.ndarray, masks: np.ndarray, labels: np.ndarray, thresholds: Thresholds,
                  min_area: int = 0) -> tuple[dict, list[dict]]:
    """(N,H,W) maps and true masks of a test split with an artifact's thresholds -> (summary, per-image results)."""
    per_image = [image_fidelity(predicted_mask(amap, thresholds, min_area), truth)
                 for amap, truth in zip(maps, masks)]
    return summarise(per_image, np.asarray(labels)), per_image

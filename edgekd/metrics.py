"""Anomaly-detection metrics: image/pixel AUROC, AUPRO (MVTec definition) and image F1-max."""

from __future__ import annotations

import math

import cv2
import numpy as np
from sklearn.metrics import precision_recall_curve, roc_auc_score

from edgekd.calibration import above


def _has_both_classes(labels: np.ndarray) -> bool:
    return labels.size > 0 and 0 < labels.sum() < labels.size


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    labels = np.asarray(labels).astype(int)
    return float(roc_auc_score(labels, scores)) if _has_both_classes(labels) else math.nan


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float:
    labels = np.asarray(masks).reshape(-1).astype(np.uint8)
    return float(roc_auc_score(labels, np.asarray(maps).reshape(-1))) if _has_both_classes(labels) else math.nan


def f1_max(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """Best F1 over thresholds and the threshold that reaches it (score > threshold is anomalous)."""
    labels = np.asarray(labels).astype(int)
    if not _has_both_classes(labels):
        return math.nan, math.nan
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.argmax(f1[:-1]))  # the last point has no threshold
    # sklearn counts score >= t as positive; step just below t so that '>' keeps the same decision
    return float(f1[best]), float(np.nextafter(thresholds[best], -np.inf))


def aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Area under the per-region-overlap curve up to `fpr_limit` false-positive rate, divided by `fpr_limit`.

    Every connected ground-truth region counts equally, whatever its size (MVTec AD's definition). For each
    threshold t, PRO(t) is the mean over regions of the fraction of the region above t, and FPR(t) the
    fraction of normal pixels above t. Computed exactly with one sort instead of a threshold sweep.
    """
    masks = np.asarray(masks).astype(bool)
    maps = np.asarray(maps, dtype=np.float64)
    if masks.shape != maps.shape:
        raise ValueError(f"masks {masks.shape} and maps {maps.shape} differ in shape")
    region_ids = np.zeros(masks.shape, dtype=np.int64)
    n_regions = 0
    for i, mask in enumerate(masks):
        count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        region_ids[i] = np.where(labels > 0, labels + n_regions, 0)
        n_regions += count - 1
    n_normal = int((~masks).sum())
    if n_regions == 0 or n_normal == 0:
        return math.nan
    flat_ids = region_ids.reshape(-1)
    sizes = np.bincount(flat_ids, minlength=n_regions + 1).astype(np.float64)
    # Each anomalous pixel adds 1/(size of its region * number of regions) to the mean overlap once it is
    # above the threshold; each normal pixel adds 1/n_normal to the false-positive rate.
    pro_step = np.where(flat_ids > 0, 1.0 / (sizes[flat_ids] * n_regions), 0.0)
    fpr_step = np.where(flat_ids == 0, 1.0 / n_normal, 0.0)
    order = np.argsort(-maps.reshape(-1), kind="stable")
    scores = maps.reshape(-1)[order]
    pro = np.cumsum(pro_step[order])
    fpr = np.cumsum(fpr_step[order])
    # Pixels with equal scores pass a threshold together: keep only the last of each run of ties.
    last_of_tie = np.append(scores[1:] != scores[:-1], True)
    fpr = np.concatenate([[0.0], fpr[last_of_tie]])
    pro = np.concatenate([[0.0], pro[last_of_tie]])
    cut = np.searchsorted(fpr, fpr_limit, side="right")
    if cut < len(fpr):  # interpolate the curve at exactly fpr_limit
        f0, f1_, p0, p1 = fpr[cut - 1], fpr[cut], pro[cut - 1], pro[cut]
        pro_at = p0 + (p1 - p0) * (fpr_limit - f0) / max(f1_ - f0, 1e-300)
        fpr = np.append(fpr[:cut], fpr_limit)
        pro = np.append(pro[:cut], pro_at)
    return float(np.trapezoid(pro, fpr) / fpr_limit)


def compute_metrics(labels: np.ndarray, scores: np.ndarray, masks: np.ndarray, maps: np.ndarray,
                    image_threshold: float | None = None) -> dict:
    f1, f1_threshold = f1_max(labels, scores)
    metrics = {"image_auroc": image_auroc(labels, scores), "pixel_auroc": pixel_auroc(masks, maps),
               "aupro": aupro(masks, maps), "image_f1_max": f1, "image_f1_threshold": f1_threshold,
               "n_test": int(len(labels)), "n_anomalous": int(np.sum(labels))}
    if image_threshold is not None:  # how the stored threshold does: what the line would see
        predicted = above(scores, image_threshold)
        metrics["at_threshold"] = {"threshold": float(image_threshold),
                                   "recall": float(predicted[labels == 1].mean()) if labels.any() else math.nan,
                                   "false_alarm_rate": float(predicted[labels == 0].mean()) if (labels == 0).any() else math.nan}
    return metrics


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

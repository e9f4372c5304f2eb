"""Decision thresholds: from normal images only (what a line has on day one), or F1-optimal with labels."""

from __future__ import annotations

import numpy as np

from edgekd.metrics import f1_max


def score_statistics(scores: np.ndarray) -> dict:
    scores = np.asarray(scores, dtype=np.float64)
    return {"n": int(scores.size), "mean": float(scores.mean()), "std": float(scores.std()),
            "min": float(scores.min()), "max": float(scores.max()),
            "p50": float(np.percentile(scores, 50)), "p95": float(np.percentile(scores, 95)),
            "p99": float(np.percentile(scores, 99))}


def thresholds_from_normal(normal_scores: np.ndarray, normal_maps: np.ndarray, k_sigma: float) -> dict:
    """mean + k*std of held-out normal images, for the image score and for each image's hottest pixel.

    A pixel is flagged only when it is hotter than normal images' hottest pixels usually get, so a
    normal image gives an empty mask.
    """
    peak = normal_maps.reshape(len(normal_maps), -1).max(axis=1)
    image = float(normal_scores.mean() + k_sigma * normal_scores.std())
    pixel = float(peak.mean() + k_sigma * peak.std())
    return {"method": "normal", "k_sigma": k_sigma, "image": image, "pixel": pixel}


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

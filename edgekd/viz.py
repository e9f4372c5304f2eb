"""Pictures people look at: heatmap overlays with mask contours, and evaluation montages."""

from __future__ import annotations

import cv2
import numpy as np


def colour_range(score_stats: dict | None, pixel_threshold: float) -> tuple[float, float]:
    """Colour scale shared by every overlay of a model: normal images sit in the blue half, the pixel threshold is
    the middle of the scale."""
    vmin = score_stats["min"] * 0.5 if score_stats else 0.0
    return vmin, vmin + 2 * (pixel_threshold - vmin)


def heatmap(amap: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """HxW float -> HxWx3 uint8 RGB with the JET colour map scaled to [vmin, vmax]."""
    scaled = np.clip((amap - vmin) / max(vmax - vmin, 1e-12), 0, 1)
    return cv2.cvtColor(cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def overlay(image: np.ndarray, amap: np.ndarray, mask: np.ndarray | None, vmin: float, vmax: float,
            alpha: float = 0.45) -> np.ndarray:
    """The image with the heatmap blended in and the predicted defect regions outlined in white."""
    if amap.shape != image.shape[:2]:
        amap = cv2.resize(amap, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    out = cv2.addWeighted(image, 1 - alpha, heatmap(amap, vmin, vmax), alpha, 0)
    if mask is not None and mask.any():
        if mask.shape != image.shape[:2]:
            mask = cv2.resize(mask.astype(np.uint8), (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (255, 255, 255), max(1, image.shape[0] // 200))
    return out


def banner(image: np.ndarray, text: str, colour: tuple[int, int, int]) -> np.ndarray:
    """A black strip across the top of a copy of `image`, `text` on it in `colour` (in the image's channel order):
    the verdict and score on every picture a person looks at."""
    out = image.copy()
    scale = max(out.shape[0] / 480, 0.5)
    cv2.rectangle(out, (0, 0), (out.shape[1], int(30 * scale)), (0, 0, 0), -1)
    cv2.putText(out, text, (6, int(22 * scale)), cv2.FONT_HERSHEY_SIMPLEX, 0.7 * scale, colour, max(1, int(2 * scale)),
                cv2.LINE_AA)
    return out


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    tile = tile.copy()
    scale = max(tile.shape[0] / 220, 0.6)
    cv2.rectangle(tile, (0, 0), (tile.shape[1], int(24 * scale) + 4), (0, 0, 0), -1)
    cv2.putText(tile, text, (4, int(18 * scale) + 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, (255, 255, 255), 1, cv2.LINE_AA)
    return tile


def outlined(predicted: np.ndarray, truth: np.ndarray, size: int) -> np.ndarray:
    """The predicted mask in white at `size` px with the true defect's outline in green over it: how far the mask
    spills past the defect, or falls short of it, at a glance."""
    cell = cv2.resize(predicted.astype(np.uint8) * 255, (size, size), interpolation=cv2.INTER_NEAREST)
    cell = np.repeat(cell[..., None], 3, axis=2)
    edge = cv2.resize(truth.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(edge, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(cell, contours, -1, (0, 200, 0), max(1, size // 128))
    return cell


def montage(images: np.ndarray, maps: np.ndarray, pred_masks: np.ndarray, gt_masks: np.ndarray,
            titles: list[str], vmin: float, vmax: float, tile: int = 192) -> np.ndarray:
    """Rows of image | heatmap | predicted mask with the true outline over it | ground truth, each row titled."""
    rows = []
    for image, amap, pred, gt, title in zip(images, maps, pred_masks, gt_masks, titles):
        cells = [image, overlay(image, amap, None, vmin, vmax), outlined(pred, gt, tile),
                 np.repeat(gt[..., None].astype(np.uint8) * 255, 3, axis=2)]
        cells = [cv2.resize(c, (tile, tile), interpolation=cv2.INTER_AREA) for c in cells]
        names = [title, "anomaly map", "predicted (true outline green)", "ground truth"]
        rows.append(np.hstack([_label(c, n) for c, n in zip(cells, names)]))
    return np.vstack(rows)

"""From one frame's anomaly map and score to what the line cares about: defect regions (boxes with area, small
specks dropped), a per-frame verdict, and a verdict smoothed over frames so it does not flicker."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from edgekd.calibration import Thresholds
from edgekd.sinks.base import Region
from edgekd.errors import EdgekdError


def region_extent(inside: np.ndarray, sx: float, sy: float) -> tuple[float, float]:
    """(length, width) of one region in frame pixels: the sides of the minimum-area rectangle around its pixels
    (each pixel counted as the square it covers, so a one-pixel speck is one pixel long and wide)."""
    ys, xs = np.nonzero(inside)
    corners = np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in (0, 1) for dy in (0, 1)]).astype(np.float32)
    corners *= np.array([sx, sy], np.float32)
    (_, _), (a, b), _ = cv2.minAreaRect(corners)
    return float(max(a, b)), float(min(a, b))


def defect_regions(amap: np.ndarray, thresholds: Thresholds, frame_shape: tuple[int, int],
                   min_area: int, mm_per_px: float | None = None) -> tuple[list[Region], np.ndarray]:
    """Connected regions of the map's defect mask (model resolution, Thresholds.mask), as boxes with sizes in frame
    pixels (and mm with a scale); regions smaller than `min_area` frame pixels are dropped from the list and from
    the returned mask."""
    mask = thresholds.mask(amap)
    if not mask.any():  # most frames on a good line: nothing to label
        return [], mask
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    sy, sx = frame_shape[0] / amap.shape[0], frame_shape[1] / amap.shape[1]
    regions, kept = [], np.zeros_like(mask)
    for label in range(1, count):
        x, y, w, h, pixels = (int(v) for v in stats[label])
        area = int(round(pixels * sx * sy))
        if area < min_area:
            continue
        inside = labels[y:y + h, x:x + w] == label  # its bounding box only: a frame has few regions, maps are large
        kept[y:y + h, x:x + w][inside] = 1
        length, width = region_extent(inside, sx, sy)
        regions.append(Region(int(x * sx), int(y * sy), max(1, int(round(w * sx))), max(1, int(round(h * sy))), area,
                              length, width, mm_per_px))
    regions.sort(key=lambda r: -r.area)
    return regions, kept


def apply_reject_rule(regions: list[Region], rule) -> tuple[list[Region], bool]:
    """Each region marked by the run's RejectRule (edgekd/stream/reject.py), and whether the part is rejected:
    any region meets the rule."""
    marked = [dataclasses.replace(region, rejects=rule.rejects(region.sizes())) for region in regions]
    return marked, any(region.rejects for region in marked)


def frame_is_defective(score: float, regions: list[Region], thresholds: Thresholds, min_area: int) -> bool:
    """Score above the image threshold, and (when a minimum area is set) at least one region that large."""
    return bool(thresholds.defective(score)) and (min_area <= 0 or bool(regions))


class Hysteresis:
    """The verdict turns DEFECT after `on` defective frames in a row and back to OK after `off` good ones."""

    def __init__(self, on: int = 1, off: int = 1):
        if on < 1 or off < 1:
            raise EdgekdError("--hysteresis takes ON,OFF frame counts of at least 1 (e.g. 2,3)")
        self.on, self.off = on, off
        self.state, self.streak = False, 0

    def update(self, defective: bool) -> bool:
        if defective == self.state:
            self.streak = 0
        else:
            self.streak += 1
            if self.streak >= (self.on if defective else self.off):
                self.state, self.streak = defective, 0
        return self.state


def parse_hysteresis(text: str) -> tuple[int, int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise EdgekdError(f"--hysteresis '{text}' is not ON,OFF frame counts >= 1 (e.g. 2,3, or 1 for none)")
    return values[0], values[1]

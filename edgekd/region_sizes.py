"""A defect region's sizes in frame pixels and, with the run's scale, in millimetres: what reject rules
(edgekd/stream/reject.py) and every output (JSONL, the dashboard) read. Length is the longer side of the region's
minimum-area rectangle, width the shorter."""

from __future__ import annotations

import math
import re

from edgekd.errors import EdgekdError

PIXEL_FIELDS = ("area_px", "length_px", "width_px")
MM_FIELDS = ("area_mm2", "length_mm", "width_mm")
_SCALE = re.compile(r"^\s*(?P<mm>\d+(?:\.\d*)?|\.\d+)\s*mm\s*=\s*(?P<px>\d+(?:\.\d*)?|\.\d+)\s*px\s*$")


def parse_scale(text: str | float | None) -> float | None:
    """--mm-per-px: millimetres per frame pixel, as a number ("0.05") or a known width ("40mm=800px")."""
    if text is None or text == "":
        return None
    value = None
    try:
        value = float(text)
    except ValueError:
        if match := _SCALE.match(str(text)):
            pixels = float(match["px"])
            value = float(match["mm"]) / pixels if pixels > 0 else None
    if value is None or not math.isfinite(value) or value <= 0:
        raise EdgekdError(f"--mm-per-px '{text}' is not a scale: give millimetres per frame pixel (e.g. 0.05) or a "
                          "known width as MMmm=PXpx (e.g. 40mm=800px for a 40 mm part 800 pixels wide)")
    return value


def region_sizes(area_px: float, length_px: float, width_px: float, mm_per_px: float | None) -> dict[str, float]:
    """A region's sizes by field name: pixels always, millimetres when the run has a scale."""
    sizes = {"area_px": float(area_px), "length_px": float(length_px), "width_px": float(width_px)}
    if mm_per_px:
        sizes.update(area_mm2=area_px * mm_per_px * mm_per_px, length_mm=length_px * mm_per_px,
                     width_mm=width_px * mm_per_px)
    return sizes

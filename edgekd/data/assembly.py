"""Synthetic assemblies with logical anomalies, in the spirit of MVTec LOCO: every part can look perfect while
the assembly is wrong (a part missing or extra, two parts swapped, a part misplaced, the wrong colour or count).

An assembly is a list of parts placed by a fixed plan with small random jitter; a logical anomaly edits that
list before drawing, and its mask covers every place the plan was broken (a missing part's slot, an extra or
misplaced part, both swapped parts). Structural anomalies are painted afterwards by edgekd/data/synth.py.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import cv2
import numpy as np

ORANGE, GREEN, YELLOW, BROWN = (0.95, 0.55, 0.1), (0.35, 0.75, 0.2), (0.95, 0.85, 0.25), (0.45, 0.28, 0.12)
RED, BLACK, BLUE, WHITE = (0.85, 0.12, 0.1), (0.1, 0.1, 0.11), (0.15, 0.3, 0.8), (0.9, 0.9, 0.88)


@dataclass(frozen=True)
class Part:
    shape: str  # disc, ellipse, rect
    colour: tuple
    centre: tuple[float, float]  # in units of the image side (0..1)
    size: tuple[float, float]  # half-extents in image-side units
    angle: float = 0.0
    slot: int = 0  # the compartment / pad the plan puts it in


def _draw(image: np.ndarray, part: Part, n: int, mask: np.ndarray | None = None) -> None:
    cx, cy = int(part.centre[0] * n), int(part.centre[1] * n)
    ax, ay = max(2, int(part.size[0] * n)), max(2, int(part.size[1] * n))
    targets = [(image, tuple(float(c) for c in part.colour))] + ([(mask, 1)] if mask is not None else [])
    for canvas, value in targets:
        if part.shape == "rect":
            box = cv2.boxPoints(((cx, cy), (2 * ax, 2 * ay), part.angle))
            cv2.fillPoly(canvas, [np.int32(np.round(box))], value)
        else:
            cv2.ellipse(canvas, (cx, cy), (ax, ay), part.angle, 0, 360, value, -1)
    if part.shape == "disc":  # a highlight, so discs read as round objects
        cv2.circle(image, (cx - ax // 3, cy - ay // 3), max(1, ax // 4), tuple(min(1.0, c + 0.25) for c in part.colour), -1)


def _footprint(part: Part, n: int, grow: int = 3) -> np.ndarray:
    mask = np.zeros((n, n), np.uint8)
    _draw(np.zeros((n, n, 3), np.float32), part, n, mask)
    return cv2.dilate(mask, np.ones((2 * grow + 1, 2 * grow + 1), np.uint8)).astype(bool)


# ------------------------------------------------------------------------------------------ the two assemblies
@dataclass(frozen=True)
class Assembly:
    slots: list[tuple[float, float, float, float]]  # x0, y0, x1, y1 of each compartment / pad, image units
    plan: Callable  # rng -> list[Part] of a normal assembly
    background: Callable  # (rng, n) -> (image, region of the assembly body)
    logical: tuple[str, ...]  # the logical anomalies this assembly can show
    recolour: tuple = GREEN  # colour a part takes in a wrong-colour anomaly


def _jitter(rng, slot, size, margin=0.02) -> tuple[float, float]:
    x0, y0, x1, y1 = slot
    return (rng.uniform(x0 + size[0] + margin, x1 - size[0] - margin),
            rng.uniform(y0 + size[1] + margin, y1 - size[1] - margin))


# Tray: three compartments in a row: two oranges | one banana | five nuts.
TRAY_SLOTS = [(0.08, 0.22, 0.36, 0.78), (0.36, 0.22, 0.64, 0.78), (0.64, 0.22, 0.92, 0.78)]


def _tray_plan(rng) -> list[Part]:
    x0, y0, x1, y1 = TRAY_SLOTS[0]
    oranges = [Part("disc", ORANGE, (rng.uniform(x0 + 0.08, x1 - 0.08), rng.uniform(y0 + 0.08, (y0 + y1) / 2 - 0.03)),
                    (0.055, 0.055), 0.0, 0),
               Part("disc", ORANGE, (rng.uniform(x0 + 0.08, x1 - 0.08), rng.uniform((y0 + y1) / 2 + 0.03, y1 - 0.08)),
                    (0.055, 0.055), 0.0, 0)]
    banana_size = (0.035, 0.15)
    banana = Part("ellipse", YELLOW, _jitter(rng, TRAY_SLOTS[1], banana_size), banana_size, rng.uniform(-12, 12), 1)
    bx0, by0, bx1, by1 = TRAY_SLOTS[2]
    nuts = [Part("ellipse", BROWN, (rng.uniform(bx0 + 0.06, bx1 - 0.06), by0 + (k + 0.5) * (by1 - by0) / 5
                                    + rng.uniform(-0.015, 0.015)), (0.025, 0.02), rng.uniform(0, 180), 2)
            for k in range(5)]
    return oranges + [banana] + nuts


def _tray_background(rng, n):
    y, x = np.mgrid[0:n, 0:n].astype(np.float32) / n
    image = np.empty((n, n, 3), np.float32)
    image[:] = np.array((0.16, 0.16, 0.18)) + 0.03 * (x[..., None] - 0.5)
    body = np.zeros((n, n), np.uint8)
    cv2.rectangle(body, (int(0.06 * n), int(0.2 * n)), (int(0.94 * n), int(0.8 * n)), 1, -1)
    shade = rng.uniform(0.8, 0.86)
    image[body.astype(bool)] = (shade, shade, shade * 0.97)
    for x_div in (0.36, 0.64):  # the dividers between compartments
        cv2.line(image, (int(x_div * n), int(0.2 * n)), (int(x_div * n), int(0.8 * n)), (0.55, 0.55, 0.55),
                 max(1, n // 96))
    return image, body.astype(bool)


TRAY = Assembly(TRAY_SLOTS, _tray_plan, _tray_background,
                ("missing", "extra", "swapped", "misplaced", "wrong_colour", "wrong_count"))

# Board: four components on their pads (2 x 2): red LED | black IC / blue capacitor | white connector.
BOARD_SLOTS = [(0.12, 0.12, 0.48, 0.48), (0.52, 0.12, 0.88, 0.48), (0.12, 0.52, 0.48, 0.88), (0.52, 0.52, 0.88, 0.88)]
_BOARD_PARTS = [("disc", RED, (0.06, 0.06)), ("rect", BLACK, (0.12, 0.08)), ("ellipse", BLUE, (0.05, 0.09)),
                ("rect", WHITE, (0.1, 0.05))]


def _board_part(rng, kind, slot_index):
    shape, colour, size = _BOARD_PARTS[kind]
    x0, y0, x1, y1 = BOARD_SLOTS[slot_index]
    centre = ((x0 + x1) / 2 + rng.uniform(-0.015, 0.015), (y0 + y1) / 2 + rng.uniform(-0.015, 0.015))
    return Part(shape, colour, centre, size, rng.uniform(-4, 4), slot_index)


def _board_plan(rng) -> list[Part]:
    return [_board_part(rng, k, k) for k in range(4)]


def _board_background(rng, n):
    image = np.empty((n, n, 3), np.float32)
    image[:] = np.array((0.08, 0.32, 0.14)) * rng.uniform(0.93, 1.07)
    for slot in BOARD_SLOTS:  # copper pads under each component
        x0, y0, x1, y1 = (int(v * n) for v in slot)
        cv2.rectangle(image, (x0 + n // 32, y0 + n // 32), (x1 - n // 32, y1 - n // 32), (0.7, 0.55, 0.3), max(1, n // 128))
    return image, np.ones((n, n), bool)


BOARD = Assembly(BOARD_SLOTS, _board_plan, _board_background, ("missing", "extra", "swapped", "misplaced", "wrong_colour"))
ASSEMBLIES = {"tray": TRAY, "board": BOARD}


# ------------------------------------------------------------------------------------------ logical anomalies
def _move_to(part: Part, slot, rng) -> Part:
    return replace(part, centre=_jitter(rng, slot, part.size), slot=-1)


def break_plan(assembly: Assembly, parts: list[Part], kind: str, rng, n: int) -> tuple[list[Part], np.ndarray]:
    """The parts with one logical anomaly of `kind`, and the mask of where the plan is broken."""
    mask = np.zeros((n, n), bool)
    parts = list(parts)
    slots = sorted({p.slot for p in parts})
    groups = {s: [i for i, p in enumerate(parts) if p.slot == s] for s in slots}
    if kind == "missing":  # everything in one slot gone
        victims = groups[slots[rng.integers(len(slots))]]
    elif kind == "wrong_count":  # one of several alike parts gone
        many = [s for s in slots if len(groups[s]) > 1]
        crowded = groups[many[rng.integers(len(many))]] if many else []
        victims = [crowded[rng.integers(len(crowded))]] if crowded else []
    if kind in ("missing", "wrong_count"):
        if not victims:
            raise ValueError(f"this assembly has no slot with several parts for '{kind}'")
        for i in victims:
            mask |= _footprint(parts[i], n)
        parts = [p for i, p in enumerate(parts) if i not in victims]
    elif kind == "extra":  # a copy of one of its parts, dropped into a random slot
        extra = _move_to(parts[rng.integers(len(parts))], assembly.slots[slots[rng.integers(len(slots))]], rng)
        mask |= _footprint(extra, n)
        parts.append(extra)
    elif kind == "swapped":
        a, b = rng.choice(slots, 2, replace=False)
        moved = []
        for p in parts:
            if p.slot in (a, b):
                mask |= _footprint(p, n)
                target = assembly.slots[b if p.slot == a else a]
                source = assembly.slots[p.slot]
                offset = (p.centre[0] - (source[0] + source[2]) / 2, p.centre[1] - (source[1] + source[3]) / 2)
                p = replace(p, centre=((target[0] + target[2]) / 2 + offset[0], (target[1] + target[3]) / 2 + offset[1]),
                            slot=-1)
                mask |= _footprint(p, n)
            moved.append(p)
        parts = moved
    elif kind == "misplaced":
        i = int(rng.integers(len(parts)))
        others = [s for s in range(len(assembly.slots)) if s != parts[i].slot]
        mask |= _footprint(parts[i], n)
        parts[i] = _move_to(parts[i], assembly.slots[others[rng.integers(len(others))]], rng)
        mask |= _footprint(parts[i], n)
    elif kind == "wrong_colour":
        i = int(rng.integers(len(parts)))
        parts[i] = replace(parts[i], colour=assembly.recolour if parts[i].colour != assembly.recolour else ORANGE)
        mask |= _footprint(parts[i], n)
    else:
        raise ValueError(f"unknown logical anomaly '{kind}'")
    return parts, mask


def render_assembly(name: str, rng, n: int, logical: str | None = None):
    """(image float32 RGB, region of the assembly body, mask of the logical anomaly or None)."""
    assembly = ASSEMBLIES[name]
    image, body = assembly.background(rng, n)
    parts = assembly.plan(rng)
    # Lighting and sensor noise are drawn before the plan is broken, so an anomalous image equals its normal
    # twin (same seed) everywhere outside the anomaly's mask.
    light, noise = rng.uniform(0.94, 1.06), 0.012 * rng.standard_normal(image.shape).astype(np.float32)
    mask = None
    if logical is not None:
        parts, mask = break_plan(assembly, parts, logical, rng, n)
    for part in parts:
        _draw(image, part, n)
    return np.clip(image * light + noise, 0, 1).astype(np.float32), body, mask

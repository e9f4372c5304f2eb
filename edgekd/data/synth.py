"""A deterministic synthetic industrial dataset, so edgekd runs end to end with no downloads.

Five textures (wood, fabric, metal, tile, granite) and two objects (washer, chip) in MVTec AD layout. Normal
images vary in phase, position, lighting and noise; defects (scratch, crack, hole, stain, contamination, missing
part) are painted with their exact pixel masks. Two assemblies (tray, board; edgekd/data/assembly.py) in MVTec
LOCO layout have logical anomalies (parts missing, extra, swapped, misplaced, wrong colour or count) in
test/logical_anomalies beside painted ones in test/structural_anomalies. The same seed always gives the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from edgekd.data.assembly import ASSEMBLIES, render_assembly
from edgekd.data.generation import Sample, check_writable, parse_names, sample_rng, write_category

Image = np.ndarray  # HxWx3 float32 RGB in [0, 1]


def _noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth value noise in [0, 1]: a cells x cells random grid upsampled bicubically."""
    grid = rng.random((cells, cells)).astype(np.float32)
    return np.clip(cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC), 0, 1)


def _fractal(rng: np.random.Generator, size: int, base: int = 4, octaves: int = 4) -> np.ndarray:
    total = sum(_noise(rng, size, base * 2 ** o) * 0.5 ** o for o in range(octaves))
    return (total - total.min()) / max(float(np.ptp(total)), 1e-6)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    return y, x


def _lerp(a, b, t: np.ndarray) -> Image:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return a + (b - a) * t[..., None]


# ---------------------------------------------------------------------------------------------- normal images
def wood(rng, n):
    y, x = _grid(n)
    angle = rng.uniform(-0.1, 0.1)
    across = -x * np.sin(angle) + y * np.cos(angle)
    warp = _fractal(rng, n, base=2, octaves=3)
    rings = np.sin(2 * np.pi * (across / rng.uniform(15, 19) + 2.2 * warp + rng.random()))
    streaks = cv2.resize(rng.random((96, 6)).astype(np.float32), (n, n), interpolation=cv2.INTER_CUBIC).T
    t = np.clip(0.5 + 0.32 * rings + 0.18 * (streaks - 0.5), 0, 1)
    return _lerp((0.38, 0.22, 0.11), (0.74, 0.53, 0.33), t) * rng.uniform(0.95, 1.05), None


def fabric(rng, n):
    y, x = _grid(n)
    period = 8.0
    sx, sy = rng.uniform(0, period, 2)
    checker = (np.floor((x + sx) / period) + np.floor((y + sy) / period)) % 2
    warp = np.abs(np.sin(np.pi * (x + sx) / period))
    weft = np.abs(np.sin(np.pi * (y + sy) / period))
    t = np.where(checker > 0, 0.35 + 0.55 * warp, 0.35 + 0.55 * weft) + 0.12 * (_fractal(rng, n, 32, 2) - 0.5)
    base = np.array([0.22, 0.33, 0.55]) * rng.uniform(0.95, 1.05)
    return np.clip(base * (0.6 + 0.7 * t[..., None]), 0, 1), None


def metal(rng, n):
    noise = rng.normal(size=(n, n)).astype(np.float32)
    brushed = cv2.blur(noise, (41, 1))
    brushed /= brushed.std() + 1e-6
    y, x = _grid(n)
    direction = rng.uniform(0, 2 * np.pi)
    light = 0.06 * ((x * np.cos(direction) + y * np.sin(direction)) / n)
    grey = np.clip(0.56 + 0.045 * brushed + light + rng.uniform(-0.03, 0.03), 0, 1)
    return np.repeat(grey[..., None], 3, axis=2) * np.array([1.0, 1.0, 1.04]), None


def tile(rng, n):
    y, x = _grid(n)
    size, grout = 64, 5
    ox, oy = rng.integers(0, size, 2)
    ix, iy = ((x + ox) // size).astype(int), ((y + oy) // size).astype(int)
    jitter = rng.uniform(-0.04, 0.04, (n // size + 2, n // size + 2))
    body = 0.84 + jitter[iy, ix] + 0.05 * (_fractal(rng, n, 16, 3) - 0.5)
    is_grout = (((x + ox) % size) < grout) | (((y + oy) % size) < grout)
    t = np.where(is_grout, 0.42 + 0.04 * rng.random((n, n)), body)
    return np.clip(t[..., None] * np.array([1.0, 0.97, 0.9]), 0, 1), None


def granite(rng, n):
    grains = cv2.GaussianBlur(rng.random((n, n)).astype(np.float32), (0, 0), 0.8)
    cloud = _fractal(rng, n, 4, 3)
    t = np.clip(0.35 + 0.35 * cloud + 0.9 * (grains - 0.5), 0, 1)
    speck = rng.random((n, n)) > 0.985
    rgb = _lerp((0.25, 0.22, 0.22), (0.78, 0.72, 0.70), t)
    rgb[speck] = (0.08, 0.07, 0.07)
    return rgb, None


def washer(rng, n):
    y, x = _grid(n)
    cy, cx = n / 2 + rng.uniform(-4, 4, 2)
    radius = np.hypot(x - cx, y - cy)
    outer, inner = 0.34 * n + rng.uniform(-1, 1), 0.15 * n
    ring = (radius <= outer) & (radius >= inner)
    background = 0.1 + 0.04 * _fractal(rng, n, 8, 2)
    angle = np.arctan2(y - cy, x - cx)
    light = rng.uniform(0, 2 * np.pi)
    shade = 0.6 + 0.12 * np.cos(angle - light) + 0.1 * (radius - inner) / (outer - inner) + 0.02 * rng.random((n, n))
    t = np.where(ring, shade, background)
    return np.clip(t[..., None] * np.array([1.0, 0.98, 0.92]), 0, 1), ring


def chip(rng, n):
    rgb = _lerp((0.05, 0.25, 0.1), (0.12, 0.42, 0.18), _fractal(rng, n, 8, 3))
    obj = np.zeros((n, n), np.uint8)
    cy, cx = (n / 2 + rng.uniform(-3, 3, 2)).astype(int)
    w, h = int(0.45 * n), int(0.3 * n)
    x0, y0 = cx - w // 2, cy - h // 2
    pin_w, pin_h, pins = max(4, n // 40), max(8, n // 18), 6
    for i in range(pins):
        px = x0 + int((i + 0.5) * w / pins) - pin_w // 2
        for py in (y0 - pin_h, y0 + h):
            cv2.rectangle(rgb, (px, py), (px + pin_w - 1, py + pin_h - 1), (0.78, 0.78, 0.8), -1)
            cv2.rectangle(obj, (px, py), (px + pin_w - 1, py + pin_h - 1), 1, -1)
    cv2.rectangle(rgb, (x0, y0), (x0 + w - 1, y0 + h - 1), (0.12, 0.12, 0.13), -1)
    cv2.rectangle(obj, (x0, y0), (x0 + w - 1, y0 + h - 1), 1, -1)
    cv2.circle(rgb, (x0 + n // 25, y0 + n // 25), max(2, n // 64), (0.6, 0.6, 0.6), -1)
    rgb = rgb + 0.015 * rng.standard_normal(rgb.shape)
    return np.clip(rgb, 0, 1).astype(np.float32), obj.astype(bool)


# --------------------------------------------------------------------------------------------------- defects
def _site(rng, region: np.ndarray | None, n: int, margin: int) -> tuple[int, int]:
    """A random point inside the object (or anywhere inside the margin for textures)."""
    margin = min(margin, n // 5)  # small images keep room for the defect
    if region is not None:
        inner = np.zeros_like(region)
        inner[margin:n - margin, margin:n - margin] = region[margin:n - margin, margin:n - margin]
        ys, xs = np.nonzero(inner if inner.any() else region)
        i = rng.integers(len(ys))
        return int(xs[i]), int(ys[i])
    return tuple(int(v) for v in rng.integers(margin, n - margin, 2))


def _contrast_colour(img: Image, mask: np.ndarray, rng) -> np.ndarray:
    mean = img[mask].mean(axis=0) if mask.any() else img.reshape(-1, 3).mean(axis=0)
    return np.clip(mean + (0.4 if mean.mean() < 0.5 else -0.4) * rng.uniform(0.8, 1.1), 0, 1)


def scratch(img, region, rng):
    n = img.shape[0]
    x, y = _site(rng, region, n, 30)
    points, angle = [(x, y)], rng.uniform(0, np.pi)
    for _ in range(rng.integers(2, 4)):
        angle += rng.uniform(-0.4, 0.4)
        step = rng.uniform(12, 30)
        x, y = x + step * np.cos(angle), y + step * np.sin(angle)
        points.append((x, y))
    mask = np.zeros((n, n), np.uint8)
    cv2.polylines(mask, [np.int32(points)], False, 1, int(rng.integers(2, 4)))
    mask = mask.astype(bool) if region is None else mask.astype(bool) & region  # contrast against the object
    return _paint(img, mask, _contrast_colour(img, mask, rng), 0.85)


def crack(img, region, rng):
    n = img.shape[0]
    mask = np.zeros((n, n), np.uint8)
    x, y = _site(rng, region, n, 30)
    angle = rng.uniform(0, 2 * np.pi)
    for branch in range(2):
        points, bx, by, ba = [(x, y)], x, y, angle + branch * np.pi
        for _ in range(rng.integers(6, 12)):
            ba += rng.uniform(-0.7, 0.7)
            bx, by = bx + 4 * np.cos(ba), by + 4 * np.sin(ba)
            points.append((bx, by))
        cv2.polylines(mask, [np.int32(points)], False, 1, 2)
    mask = mask.astype(bool)
    return _paint(img, mask, img[mask].mean(axis=0) * 0.25, 0.9)


def hole(img, region, rng):
    n = img.shape[0]
    x, y = _site(rng, region, n, 25)
    axes = tuple(int(a) for a in rng.integers(5, 12, 2))
    mask = np.zeros((n, n), np.uint8)
    cv2.ellipse(mask, (x, y), axes, rng.uniform(0, 180), 0, 360, 1, -1)
    mask = mask.astype(bool)
    out, _ = _paint(img, mask, np.array([0.04, 0.035, 0.03]), 1.0)
    rim = mask & ~cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    out[rim] = np.clip(img[rim] * 1.3, 0, 1)
    return out, mask


def stain(img, region, rng):
    n = img.shape[0]
    x, y = _site(rng, region, n, 30)
    radius = rng.uniform(10, 20)
    yy, xx = _grid(n)
    disc = 1 - np.hypot(xx - x, yy - y) / radius
    mask = (disc + 0.5 * (_fractal(rng, n, 16, 2) - 0.5)) > 0.25
    strength = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 2.0) * mask * rng.uniform(0.55, 0.75)
    colour = np.array([(0.35, 0.22, 0.05), (0.65, 0.6, 0.15), (0.1, 0.1, 0.3)][rng.integers(3)])
    out = img * (1 - strength[..., None]) + colour * strength[..., None]
    return out.astype(np.float32), mask


def contamination(img, region, rng):
    n = img.shape[0]
    cx, cy = _site(rng, region, n, 35)
    mask = np.zeros((n, n), np.uint8)
    for _ in range(rng.integers(3, 7)):
        px, py = cx + rng.integers(-18, 19), cy + rng.integers(-18, 19)
        cv2.circle(mask, (int(px), int(py)), int(rng.integers(2, 4)), 1, -1)
    hair = [(cx, cy)]
    for _ in range(5):
        hair.append((hair[-1][0] + rng.integers(-8, 9), hair[-1][1] + rng.integers(-8, 9)))
    cv2.polylines(mask, [np.int32(hair)], False, 1, 2)
    mask = mask.astype(bool)
    colour = np.array([(0.02, 0.02, 0.02), (0.95, 0.95, 0.9), (0.9, 0.45, 0.05)][rng.integers(3)])
    return _paint(img, mask, colour, 1.0)


def missing_part(img, region, rng, background: Callable[[np.random.Generator, int], tuple]):
    """Remove a piece of the object: what was object there shows the background instead."""
    n = img.shape[0]
    empty, _ = background(rng, n)
    piece = np.zeros((n, n), np.uint8)
    ys, xs = np.nonzero(region)
    i = rng.integers(len(ys))
    x, y = int(xs[i]), int(ys[i])
    cv2.circle(piece, (x, y), int(rng.integers(12, 20)), 1, -1)
    mask = piece.astype(bool) & region
    out = img.copy()
    out[mask] = empty[mask]
    return out, mask


def _paint(img: Image, mask: np.ndarray, colour, alpha: float) -> tuple[Image, np.ndarray]:
    out = img.copy()
    out[mask] = (1 - alpha) * img[mask] + alpha * np.asarray(colour, np.float32)
    return out, mask


def _washer_background(rng, n):
    return np.repeat((0.1 + 0.04 * _fractal(rng, n, 8, 2))[..., None], 3, axis=2), None


def _chip_background(rng, n):
    return _lerp((0.05, 0.25, 0.1), (0.12, 0.42, 0.18), _fractal(rng, n, 8, 3)), None


# ------------------------------------------------------------------------------------------------ the table
@dataclass(frozen=True)
class Category:
    render: Callable
    defects: dict[str, Callable]  # structural: painted onto a normal image
    kind: str
    logical: tuple[str, ...] = ()  # logical anomalies, drawn by render_logical; such categories use MVTec LOCO layout

    @property
    def layout(self) -> str:
        return "mvtec_loco" if self.logical else "mvtec_ad"

    def anomaly_kinds(self) -> list[tuple[str, str]]:
        """(anomaly, test folder) pairs: MVTec AD folders by defect, LOCO by logical / structural."""
        if not self.logical:
            return [(d, d) for d in self.defects]
        return [(d, "structural_anomalies") for d in self.defects] + [(d, "logical_anomalies") for d in self.logical]


def _assembly(name: str) -> Category:
    def render(rng, n):
        image, body, _ = render_assembly(name, rng, n)
        return image, body
    structural = {"scratch": scratch, "contamination": contamination, "stain": stain}
    return Category(render, structural, "assembly", ASSEMBLIES[name].logical)


_TEXTURE_DEFECTS = {"scratch": scratch, "crack": crack, "hole": hole, "stain": stain, "contamination": contamination}
CATEGORIES: dict[str, Category] = {
    "wood": Category(wood, _TEXTURE_DEFECTS, "texture"),
    "fabric": Category(fabric, _TEXTURE_DEFECTS, "texture"),
    "metal": Category(metal, _TEXTURE_DEFECTS, "texture"),
    "tile": Category(tile, _TEXTURE_DEFECTS, "texture"),
    "granite": Category(granite, _TEXTURE_DEFECTS, "texture"),
    "washer": Category(washer, {"scratch": scratch, "stain": stain, "contamination": contamination, "hole": hole,
                                "missing_part": lambda i, r, g: missing_part(i, r, g, _washer_background)}, "object"),
    "chip": Category(chip, {"scratch": scratch, "contamination": contamination, "crack": crack,
                            "missing_part": lambda i, r, g: missing_part(i, r, g, _chip_background)}, "object"),
    "tray": _assembly("tray"),
    "board": _assembly("board"),
}


def parse_categories(spec: str) -> list[str]:
    if spec == "logical":
        return [c for c, kind in CATEGORIES.items() if kind.logical]
    return parse_names(spec, list(CATEGORIES), "synthetic", "'logical' (the assemblies) or 'all'")


def render_sample(category: str, split: str, index: int, seed: int, size: int, defect: str | None = None):
    """One image (uint8 RGB) and, for a defect, its mask (bool). Pure function of its arguments."""
    spec = CATEGORIES[category]
    rng = sample_rng(seed, category, f"{split}/{defect or 'good'}", index)
    if defect in spec.logical:
        image, _, mask = render_assembly(category, rng, size, defect)
        return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), mask
    image, region = spec.render(rng, size)
    image = image.astype(np.float32)
    mask = None
    if defect is not None:
        for _ in range(20):  # a defect that lands off the object is drawn again
            candidate, mask = spec.defects[defect](image, region, rng)
            if region is not None:
                mask = mask & region if defect != "missing_part" else mask
                candidate = np.where(mask[..., None], candidate, image)
            if mask.sum() >= 12:
                image = candidate
                break
        else:
            raise RuntimeError(f"could not place {defect} on {category} #{index}")
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), mask


def synthesize(root: str | Path, categories: list[str], seed: int = 0, size: int = 256, n_train: int = 160,
               n_test_good: int = 40, n_per_defect: int = 8, overwrite: bool = False, progress=None) -> list[Path]:
    """Write each category under root/<category> in MVTec AD layout; a category appears only when complete."""
    root = Path(root)
    for category in categories:  # refuse before writing anything
        check_writable(root, category, overwrite)
    written = []
    for category in categories:
        spec = CATEGORIES[category]
        jobs = [("train/good", "train", i, None, f"{i:03d}") for i in range(n_train)]
        jobs += [("test/good", "test", i, None, f"{i:03d}") for i in range(n_test_good)]
        counters: dict[str, int] = {}
        for defect, folder in spec.anomaly_kinds():
            for i in range(n_per_defect):
                number = counters[folder] = counters.get(folder, -1) + 1  # LOCO numbers a folder's images in turn
                jobs.append((f"test/{folder}", "test", i, defect, f"{number if spec.logical else i:03d}"))

        def samples(jobs=jobs, category=category):
            for folder, split, index, defect, stem in jobs:
                image, mask = render_sample(category, split, index, seed, size, defect)
                yield Sample(folder, stem, image, mask, defect)

        meta = {"generator": "edgekd.data.synth", "category": category, "seed": seed, "size": size,
                "kind": spec.kind, "layout": spec.layout, "defects": list(spec.defects),
                "logical": list(spec.logical), "train": n_train, "test_good": n_test_good,
                "per_defect": n_per_defect}
        written.append(write_category(root, category, samples(), meta, overwrite, loco=bool(spec.logical),
                                      total=len(jobs), progress=progress))
    return written

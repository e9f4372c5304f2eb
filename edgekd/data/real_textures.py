"""A benchmark of real surfaces with real-pixel defects, generated (never shipped: the source images keep their own
licences) from images that install offline:

- scikit-image's bundled textures (CC0): grass, gravel, brick; its photos are foreign material;
- Debian `mypaint-data-extras` (CC0): scanned cork, canvas, fibre paper, pastel paper and felt-like card;
- Debian `opencv-doc`: `board.jpg`, a photographed circuit board (a structured object).

Normal images are crops of the source (textures: random position, scale, flips; the board: the same view with a
few pixels of jitter) with mild camera gain, offset and sensor noise. Train and test crops come from disjoint parts
of each texture source, so no test pixel was ever seen in training. Defects are made of real pixels: holes and
cracks darken the surface's own pixels, scratches brighten them, stains and colour shifts re-tint them, foreign
material and contamination paste pixels of other real photos. Defect areas are log-uniform between 0.2% and 8% of
the image (skewed small) and masks are exact (the pixels a defect changed by at least half its strength). The same
seed always gives the same bytes.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from edgekd.data.generation import Sample, check_writable, parse_names, sample_rng, write_category
from edgekd.errors import EdgekdError

Image = np.ndarray  # HxWx3 float32 RGB in [0, 1]
AREA_RANGE = (0.002, 0.08)  # defect area as a fraction of the image, drawn log-uniformly
SOURCE_CACHE = Path(os.environ.get("EDGEKD_SOURCE_CACHE", Path.home() / ".cache" / "edgekd" / "real-sources"))


# ------------------------------------------------------------------------------------------------ sources
@dataclass(frozen=True)
class Source:
    """One real image: scikit-image's bundled data, or a file inside a Debian package (unpacked, not installed)."""
    name: str  # skimage function name, or the file's path inside the package
    package: str | None = None  # Debian package; None for scikit-image

    def describe(self) -> str:
        return f"skimage.data.{self.name}" if self.package is None else f"{self.package}:/{self.name}"


def _unpack_package(package: str) -> Path:
    """The package's files under SOURCE_CACHE/<package>, fetched with apt-get download + dpkg -x on first use."""
    target = SOURCE_CACHE / package
    if (target / ".complete").is_file():
        return target
    if not shutil.which("apt-get") or not shutil.which("dpkg"):
        raise EdgekdError(f"the real-texture benchmark needs Debian package {package}: this machine has no apt-get; "
                          f"unpack it yourself into {target} (dpkg -x) or set EDGEKD_SOURCE_CACHE")
    with tempfile.TemporaryDirectory() as tmp:
        fetched = subprocess.run(["apt-get", "download", package], cwd=tmp, capture_output=True, text=True)
        debs = list(Path(tmp).glob(f"{package}_*.deb"))
        if fetched.returncode != 0 or not debs:
            detail = (fetched.stderr.strip().splitlines() or ["no .deb written"])[-1]
            raise EdgekdError(f"could not download Debian package {package} ({detail}): run 'apt-get update' or "
                              f"unpack it into {target}")
        SOURCE_CACHE.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{package}.", dir=SOURCE_CACHE))
        subprocess.run(["dpkg", "-x", str(debs[0]), str(staging)], check=True)
        (staging / ".complete").write_text(debs[0].name)
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(staging), target)
    return target


@lru_cache(maxsize=None)
def load_source(source: Source) -> Image:
    """The source as float32 RGB in [0, 1]."""
    if source.package is None:
        try:
            import skimage.data
        except ImportError:
            raise EdgekdError("the real-texture benchmark needs scikit-image: pip install scikit-image") from None
        image = getattr(skimage.data, source.name)()
    else:
        path = _unpack_package(source.package) / source.name
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise EdgekdError(f"{path} is missing or unreadable: delete {SOURCE_CACHE / source.package} to fetch again")
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return image[..., :3].astype(np.float32) / 255.0


MYPAINT = "mypaint-data-extras"
_BACKGROUNDS = "usr/share/mypaint/backgrounds"
# Photos whose pixels become foreign material and contamination (never a category's own surface).
FOREIGN = tuple(Source(n) for n in ("coffee", "chelsea", "astronaut", "rocket", "hubble_deep_field", "coins",
                                    "immunohistochemistry", "retina"))


# ------------------------------------------------------------------------------------------------ normal images
def _crop_resize(src: Image, y: float, x: float, side: float, angle: float, size: int, flip: int) -> Image:
    """A side x side crop centred at (y, x), rotated by angle degrees, resampled to size x size."""
    scale = size / side
    matrix = cv2.getRotationMatrix2D((x, y), angle, scale)
    matrix[:, 2] += (size / 2 - x, size / 2 - y)
    out = cv2.warpAffine(src, matrix, (size, size), flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REFLECT)
    if flip & 1:
        out = out[:, ::-1]
    if flip & 2:
        out = out[::-1]
    return np.ascontiguousarray(out)


def _camera(image: Image, rng: np.random.Generator) -> Image:
    """What a camera adds between shots: gain, offset and sensor noise."""
    gain, offset = rng.uniform(0.95, 1.05), rng.uniform(-0.02, 0.02)
    return image * gain + offset + rng.normal(0.0, 0.006, image.shape).astype(np.float32)


@dataclass(frozen=True)
class Surface:
    source: Source
    kind: str  # natural (stochastic), fine (fine scan), structured, object
    rotate: bool = True  # textures without a direction may turn by 90 degrees
    side: tuple[float, float] = (0.30, 0.40)  # crop side as a fraction of the source's shorter side

    def render(self, rng: np.random.Generator, split: str, size: int) -> Image:
        src = load_source(self.source)
        h, w = src.shape[:2]
        side = rng.uniform(*self.side) * min(h, w)
        # Train crops from the left 60% of the source, test crops from the right 40%: disjoint pixels.
        lo, hi = (0.0, 0.6 * w) if split == "train" else (0.6 * w, float(w))
        half = side / 2
        x = rng.uniform(lo + half, max(lo + half, hi - half))
        y = rng.uniform(half, h - half)
        flip = int(rng.integers(0, 4))
        angle = 90.0 * int(rng.integers(0, 4)) if self.rotate else 0.0
        return _camera(_crop_resize(src, y, x, side, angle, size, flip), rng)


@dataclass(frozen=True)
class Board:
    """The same object every time, as parts pass a fixed camera: a few pixels of shift, a degree of turn."""
    source: Source
    kind: str = "object"
    fill: float = 0.9  # the crop's side as a fraction of the photo's shorter side

    def render(self, rng: np.random.Generator, split: str, size: int) -> Image:
        src = load_source(self.source)
        h, w = src.shape[:2]
        y, x = h / 2 + rng.uniform(-4, 4), w / 2 + rng.uniform(-4, 4)
        side = self.fill * min(h, w) * rng.uniform(0.985, 1.015)
        return _camera(_crop_resize(src, y, x, side, rng.uniform(-1.0, 1.0), size, 0), rng)


# ------------------------------------------------------------------------------------------------ defects
def _area(rng: np.random.Generator, size: int) -> float:
    lo, hi = AREA_RANGE
    return math.exp(rng.uniform(math.log(lo), math.log(hi))) * size * size


def _blob(rng: np.random.Generator, size: int, area: float, centre: tuple[float, float] | None = None) -> np.ndarray:
    """An irregular filled blob of about `area` pixels, fully inside the image."""
    points = 14
    wobble = np.convolve(np.tile(rng.normal(0, 1, points), 3), np.ones(3) / 3, "same")[points:2 * points]
    radii = 1.0 + 0.28 * wobble
    angles = np.linspace(0, 2 * np.pi, points, endpoint=False) + rng.uniform(0, 2 * np.pi)
    stretch = rng.uniform(0.6, 1.0)  # elongated or round
    shape = np.stack([radii * np.cos(angles), stretch * radii * np.sin(angles)], 1)
    unit_area = 0.5 * abs(np.dot(shape[:, 0], np.roll(shape[:, 1], 1)) - np.dot(shape[:, 1], np.roll(shape[:, 0], 1)))
    shape *= math.sqrt(area / unit_area)
    turn = rng.uniform(0, np.pi)
    shape = shape @ np.array([[math.cos(turn), -math.sin(turn)], [math.sin(turn), math.cos(turn)]])
    reach = np.abs(shape).max(0) + 2
    if centre is None:
        centre = (rng.uniform(reach[1], size - reach[1]), rng.uniform(reach[0], size - reach[0]))
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(shape + (centre[1], centre[0])).astype(np.int32)], 1)
    return mask.astype(bool)


def _path(rng: np.random.Generator, size: int, length: float, wiggle: float) -> np.ndarray:
    """A random-walk polyline of about `length` pixels, kept inside the image."""
    steps = max(2, int(length / 4))
    heading = rng.uniform(0, 2 * np.pi)
    start = rng.uniform(0.15 * size, 0.85 * size, 2)
    points = [start]
    for _ in range(steps):
        heading += rng.normal(0, wiggle)
        step = points[-1] + 4 * np.array([math.cos(heading), math.sin(heading)])
        if not (2 <= step[0] < size - 2 and 2 <= step[1] < size - 2):
            heading += np.pi  # turn back at the border
            step = points[-1] + 4 * np.array([math.cos(heading), math.sin(heading)])
        points.append(step)
    return np.round(np.array(points)).astype(np.int32)


def _stroke(rng, size: int, area: float, width: int, wiggle: float, branches: int) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    for _ in range(branches):
        cv2.polylines(mask, [_path(rng, size, area / width / branches, wiggle)], False, 1, thickness=width)
    return mask.astype(bool)


def _feather(mask: np.ndarray, sigma: float = 0.8) -> np.ndarray:
    """Soft edge: alpha in [0, 1] that stays >= 0.5 inside the mask's body."""
    return np.clip(cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma) * 1.6, 0, 1)


def _material(rng: np.random.Generator, size: int, exclude: Source | None = None) -> Image:
    """A crop of a foreign real photo, resized to the image size."""
    choices = [s for s in FOREIGN if s != exclude]
    src = load_source(choices[int(rng.integers(len(choices)))])
    h, w = src.shape[:2]
    side = rng.uniform(0.25, 0.6) * min(h, w)
    return _crop_resize(src, rng.uniform(side / 2, h - side / 2), rng.uniform(side / 2, w - side / 2), side,
                        rng.uniform(0, 360), size, 0)


def _luminance(image: Image) -> np.ndarray:
    return image @ np.array([0.299, 0.587, 0.114], np.float32)


def hole(img: Image, rng) -> tuple[Image, np.ndarray]:
    size = img.shape[0]
    mask = _blob(rng, size, _area(rng, size))
    depth = 0.08 + 0.2 * _luminance(_material(rng, size))[..., None]  # dark, with real texture inside
    inside = img * rng.uniform(0.05, 0.2) + depth * 0.5
    rim = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & ~mask
    out = img.copy()
    out[rim] = np.clip(img[rim] * 1.25 + 0.05, 0, 1)  # the lit lip of the hole
    alpha = _feather(mask)[..., None]
    return out * (1 - alpha) + inside * alpha, mask | rim


def crack(img: Image, rng) -> tuple[Image, np.ndarray]:
    size = img.shape[0]
    area = _area(rng, size)
    width = int(rng.integers(2, 4))
    mask = _stroke(rng, size, area, width, wiggle=0.5, branches=1 if area < 600 else 2)
    alpha = _feather(mask, 0.6)[..., None]
    return img * (1 - alpha) + img * rng.uniform(0.15, 0.35) * alpha, mask


def scratch(img: Image, rng) -> tuple[Image, np.ndarray]:
    size = img.shape[0]
    area = _area(rng, size) * 0.5  # thin: the same draw would be far too long
    width = int(rng.integers(1, 3))
    mask = _stroke(rng, size, area, width, wiggle=0.05, branches=int(rng.integers(1, 3)))
    alpha = _feather(mask, 0.5)[..., None]
    bright = img + (1 - img) * rng.uniform(0.55, 0.85)
    return img * (1 - alpha) + bright * alpha, mask


def stain(img: Image, rng) -> tuple[Image, np.ndarray]:
    size = img.shape[0]
    mask = _blob(rng, size, _area(rng, size))
    tint = np.array(rng.uniform(0.25, 0.75, 3), np.float32)  # a liquid's colour, multiplied into the surface
    texture = _luminance(_material(rng, size))[..., None]
    strength = rng.uniform(0.55, 0.85) * (0.75 + 0.25 * texture)
    alpha = (cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 1.5) > 0.5).astype(np.float32)
    alpha = cv2.GaussianBlur(alpha, (0, 0), 1.0)[..., None] * strength
    return img * (1 - alpha) + img * tint * alpha, mask


def colour_shift(img: Image, rng) -> tuple[Image, np.ndarray]:
    """A region re-tinted in Lab (works on grey surfaces too), its texture kept."""
    size = img.shape[0]
    mask = _blob(rng, size, _area(rng, size))
    lab = cv2.cvtColor(np.clip(img, 0, 1), cv2.COLOR_RGB2LAB)
    angle = rng.uniform(0, 2 * np.pi)
    shift = rng.uniform(18, 35)
    lab[..., 1] += shift * math.cos(angle)
    lab[..., 2] += shift * math.sin(angle)
    lab[..., 0] *= rng.uniform(0.85, 1.1)
    shifted = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    alpha = _feather(mask, 1.0)[..., None]
    return img * (1 - alpha) + shifted * alpha, mask


def _soft(mask: np.ndarray, rng, lo: float = 2.0, hi: float = 5.0) -> np.ndarray:
    """A weight with a wide soft edge: stains and fading have no border, they fade out over a few pixels."""
    return cv2.GaussianBlur(mask.astype(np.float32), (0, 0), rng.uniform(lo, hi))


def faint_stain(img: Image, rng) -> tuple[Image, np.ndarray]:
    """A low-contrast stain: the surface 5-20% darker over a region, with at most a faint cast, soft edges."""
    size = img.shape[0]
    mask = _blob(rng, size, _area(rng, size))
    tint = np.array(rng.uniform(0.85, 1.15, 3), np.float32)
    factor = 1.0 - rng.uniform(0.05, 0.20) * tint / tint.mean()
    alpha = _soft(mask, rng)[..., None]
    return img * (1 - alpha) + img * factor * alpha, mask


def hue_shift(img: Image, rng) -> tuple[Image, np.ndarray]:
    """A region's hue turned by 30-90 degrees in Lab with a small cast of 5-12 (a grey surface gets the cast only),
    its lightness and texture kept."""
    size = img.shape[0]
    mask = _blob(rng, size, _area(rng, size))
    lab = cv2.cvtColor(np.clip(img, 0, 1), cv2.COLOR_RGB2LAB)
    turn = rng.uniform(math.pi / 6, math.pi / 2) * rng.choice([-1.0, 1.0])
    a, b = lab[..., 1].copy(), lab[..., 2].copy()
    angle, cast = rng.uniform(0, 2 * math.pi), rng.uniform(5, 12)
    lab[..., 1] = a * math.cos(turn) - b * math.sin(turn) + cast * math.cos(angle)
    lab[..., 2] = a * math.sin(turn) + b * math.cos(turn) + cast * math.sin(angle)
    alpha = _soft(mask, rng, 1.5, 3.0)[..., None]
    return img * (1 - alpha) + cv2.cvtColor(lab, cv2.COLOR_LAB2RGB) * alpha, mask


def faded(img: Image, rng) -> tuple[Image, np.ndarray]:
    """A bleached patch: its local contrast and saturation reduced, a little lighter, soft edges."""
    size = img.shape[0]
    mask = _blob(rng, size, _area(rng, size))
    local = cv2.GaussianBlur(img, (0, 0), 6.0)
    washed = local + (img - local) * rng.uniform(0.45, 0.75)
    grey = _luminance(washed)[..., None]
    washed = grey + (washed - grey) * rng.uniform(0.3, 0.7)
    washed = washed + rng.uniform(0.03, 0.08) * (1 - washed)
    alpha = _soft(mask, rng)[..., None]
    return img * (1 - alpha) + washed * alpha, mask


def foreign(img: Image, rng) -> tuple[Image, np.ndarray]:
    size = img.shape[0]
    mask = _blob(rng, size, _area(rng, size))
    alpha = _feather(mask, 0.7)[..., None]
    return img * (1 - alpha) + _material(rng, size) * alpha, mask


def contamination(img: Image, rng) -> tuple[Image, np.ndarray]:
    """A cluster of small specks of foreign pixels."""
    size = img.shape[0]
    area = _area(rng, size)
    count = int(rng.integers(3, 10))
    spread = math.sqrt(area) * 1.5 + 6
    centre = rng.uniform(spread + 4, size - spread - 4, 2)
    mask = np.zeros((size, size), bool)
    for _ in range(count):
        at = np.clip(centre + rng.normal(0, spread / 2, 2), 6, size - 6)
        mask |= _blob(rng, size, max(6.0, area / count * rng.uniform(0.5, 1.5)), (at[0], at[1]))
    specks = _material(rng, size) * rng.uniform(0.3, 0.8)  # dirt is darker than the photo it came from
    alpha = _feather(mask, 0.5)[..., None]
    return img * (1 - alpha) + specks * alpha, mask


DEFECTS: dict[str, Callable] = {"hole": hole, "crack": crack, "scratch": scratch, "stain": stain,
                                "colour_shift": colour_shift, "foreign": foreign, "contamination": contamination,
                                "faint_stain": faint_stain, "hue_shift": hue_shift, "faded": faded}

CATEGORIES: dict[str, Surface | Board] = {
    "grass": Surface(Source("grass"), "natural"),
    "gravel": Surface(Source("gravel"), "natural"),
    "brick": Surface(Source("brick"), "structured", rotate=False),
    "cork": Surface(Source(f"{_BACKGROUNDS}/ramon/HR_Cork.png", MYPAINT), "fine"),
    "canvas": Surface(Source(f"{_BACKGROUNDS}/ramon/HR_Canvas 01.png", MYPAINT), "fine", rotate=False),
    "fibre_paper": Surface(Source(f"{_BACKGROUNDS}/ramon/HR_DecoPaper.png", MYPAINT), "fine"),
    "pastel_paper": Surface(Source(f"{_BACKGROUNDS}/ramon/HR_PastelPaper 02.png", MYPAINT), "fine"),
    "felt": Surface(Source(f"{_BACKGROUNDS}/mrmamurk/mamurk_b_1.png", MYPAINT), "fine", side=(0.22, 0.3)),
    "pcb": Board(Source("usr/share/doc/opencv-doc/examples/data/board.jpg", "opencv-doc")),
    # A printed carton (a biscuit box's front, photographed): packaging inspection, another aligned object.
    "package": Board(Source("usr/share/doc/opencv-doc/examples/data/box.png", "opencv-doc"), fill=0.95),
}


# ------------------------------------------------------------------------------------------------ the set
def parse_categories(spec: str) -> list[str]:
    return parse_names(spec, list(CATEGORIES), "real-texture")


def _to_uint8(image: Image) -> np.ndarray:
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def render_sample(category: str, split: str, index: int, seed: int, size: int,
                  defect: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """One image (uint8 RGB) and, for a defect, its mask (bool). Pure function of its arguments."""
    rng = sample_rng(seed, category, f"{split}/{defect or 'good'}", index)
    image = CATEGORIES[category].render(rng, split, size)
    if defect is None:
        return _to_uint8(image), None
    defective, mask = DEFECTS[defect](image, rng)
    return _to_uint8(defective), mask


def generate(root: str | Path, categories: list[str], seed: int = 0, size: int = 256, n_train: int = 120,
             n_test_good: int = 40, n_per_defect: int = 8, overwrite: bool = False, progress=None) -> list[Path]:
    """Write each category under root/<category> in MVTec AD layout; a category appears only when complete."""
    root = Path(root)
    for category in categories:  # refuse, and fetch every source, before writing anything
        check_writable(root, category, overwrite)
        load_source(CATEGORIES[category].source)
    for source in FOREIGN:
        load_source(source)
    written = []
    for category in categories:
        jobs = [("train/good", "train", i, None) for i in range(n_train)]
        jobs += [("test/good", "test", i, None) for i in range(n_test_good)]
        jobs += [(f"test/{d}", "test", i, d) for d in DEFECTS for i in range(n_per_defect)]

        def samples(jobs=jobs, category=category):
            for folder, split, index, defect in jobs:
                image, mask = render_sample(category, split, index, seed, size, defect)
                yield Sample(folder, f"{index:03d}", image, mask, defect)

        surface = CATEGORIES[category]
        meta = {"generator": "edgekd.data.real_textures", "category": category, "seed": seed, "size": size,
                "kind": surface.kind, "source": surface.source.describe(), "layout": "mvtec_ad",
                "defects": list(DEFECTS), "train": n_train, "test_good": n_test_good, "per_defect": n_per_defect}
        written.append(write_category(root, category, samples(), meta, overwrite, total=len(jobs), progress=progress))
    return written

"""What every dataset generator (synthetic, real-texture) shares: the per-sample random stream, category names
from the command line, and writing one category in MVTec AD / LOCO layout, staged in a hidden folder and renamed
into place whole, so a killed generator never leaves a half-written category behind."""

from __future__ import annotations

import json
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from edgekd.data.images import write_image_atomic
from edgekd.errors import EdgekdError


def sample_rng(seed: int, category: str, split: str, index: int) -> np.random.Generator:
    """The random stream of one sample: the same arguments always draw the same image."""
    return np.random.default_rng([seed, zlib.crc32(category.encode()), zlib.crc32(split.encode()), index])


def parse_names(spec: str, known: list[str], what: str, also: str = "'all'") -> list[str]:
    """A comma-separated list of known category names (or 'all'), with one clear line for a wrong one."""
    names = list(known) if spec == "all" else [c.strip() for c in spec.split(",") if c.strip()]
    unknown = [c for c in names if c not in known]
    if unknown or not names:
        raise EdgekdError(f"unknown {what} category '{','.join(unknown) or spec}': choose from {', '.join(known)} or {also}")
    return names


@dataclass
class Sample:
    folder: str  # "train/good", "test/good", "test/<defect>" (LOCO: "test/logical_anomalies", ...)
    stem: str
    image: np.ndarray  # HxWx3 uint8 RGB
    mask: np.ndarray | None = None  # HxW bool for anomalies
    defect: str | None = None


def check_writable(root: Path, category: str, overwrite: bool) -> Path:
    final = root / category
    if final.exists() and not overwrite:
        raise EdgekdError(f"{final} already exists: pass --overwrite to replace it or choose another folder")
    return final


def write_category(root: str | Path, category: str, samples: Iterable[Sample], meta: dict, overwrite: bool,
                   loco: bool = False, total: int | None = None, progress=None) -> Path:
    """Write samples under root/<category>; masks to ground_truth/<defect>/<stem>_mask.png (LOCO:
    ground_truth/<folder>/<stem>/000.png); meta (plus each anomaly's type) to <category>/synth.json."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = check_writable(root, category, overwrite)
    staging = Path(tempfile.mkdtemp(prefix=f".{category}.", dir=root))
    task = progress.add_task(f"write {category}", total=total) if progress else None
    try:
        anomalies = {}
        for sample in samples:
            write_image_atomic(staging / sample.folder / f"{sample.stem}.png", sample.image)
            if sample.mask is not None:
                kind_folder = sample.folder.split("/", 1)[1]
                target = (staging / "ground_truth" / kind_folder / sample.stem / "000.png" if loco
                          else staging / "ground_truth" / kind_folder / f"{sample.stem}_mask.png")
                write_image_atomic(target, sample.mask.astype(np.uint8) * 255)
                anomalies[f"{sample.folder}/{sample.stem}.png"] = sample.defect
            if progress:
                progress.advance(task)
        (staging / "synth.json").write_text(json.dumps({**meta, "anomalies": anomalies}, indent=2))
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return final

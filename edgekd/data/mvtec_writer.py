"""Writing one dataset category in MVTec AD / LOCO layout: staged in a hidden folder, renamed into place whole,
so a killed generator never leaves a half-written category behind. Every dataset generator writes through here."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from edgekd.data.images import write_image_atomic
from edgekd.errors import EdgekdError


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

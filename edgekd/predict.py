"""`edgekd predict`: score, mask and overlay for individual images, at each image's own resolution."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from edgekd.atomic import write_bytes_atomic
from edgekd.calibration import above
from edgekd.data.images import read_rgb, resize_rgb, write_image_atomic
from edgekd.errors import EdgekdError
from edgekd.runtime.base import Runtime
from edgekd.scoring import threshold_mask
from edgekd.viz import banner, colour_range, overlay


def output_stems(paths: list[Path]) -> list[str]:
    """File stems for outputs, unique: test/good/000.png and test/hole/000.png, or x.jpg and x.png side by side,
    must not overwrite each other's mask and overlay. The plain stem where it is unique; otherwise the folder and
    the suffix are added, and a number as a last resort (the same file given twice)."""
    def named(path: Path, level: int) -> str:
        path = Path(path)
        return [path.stem, f"{path.parent.name}_{path.stem}", f"{path.parent.name}_{path.stem}_{path.suffix.lstrip('.')}"][level]
    stems, taken = [], set()
    candidates = [[named(p, level) for level in range(3)] for p in paths]
    for options in candidates:
        stem = next((c for c in options if sum(c in other for other in candidates) == 1 and c not in taken), None)
        if stem is None:
            base, n = options[-1], 2
            while f"{base}_{n}" in taken:
                n += 1
            stem = f"{base}_{n}"
        taken.add(stem)
        stems.append(stem)
    return stems


SMALL_SIDE_RATIO = 4  # an image this many times smaller than the model input is mostly interpolation


def size_warning(rgb: np.ndarray, input_size: tuple[int, int]) -> str | None:
    h, w = rgb.shape[:2]
    if h * SMALL_SIDE_RATIO < input_size[0] or w * SMALL_SIDE_RATIO < input_size[1]:
        return (f"{w}x{h} pixels, far below the model's {input_size[1]}x{input_size[0]} input: the verdict is "
                "unreliable; use full-resolution images")
    return None


def predict_images(runtime: Runtime, paths: list[Path], out: Path, batch_size: int = 16,
                   thresholds: dict | None = None) -> tuple[list[dict], list[dict]]:
    """Scores, masks and overlays of the readable images; returns (records, failures). An unreadable file is a
    failure of its own, never the end of the others. thresholds: override the artifact's {'image', 'pixel'}."""
    thresholds = thresholds or runtime.thresholds
    if not thresholds or thresholds.get("image") is None or thresholds.get("pixel") is None:
        raise EdgekdError("this artifact has no thresholds: pass --threshold or re-export from a calibrated checkpoint")
    image_threshold, pixel_threshold = thresholds["image"], thresholds["pixel"]
    vmin, vmax = colour_range(runtime.info.score_stats, pixel_threshold)
    stems = output_stems(paths)
    records, failures = [], []
    for start in range(0, len(paths), batch_size):
        chunk, originals = [], []
        for path, stem in zip(paths[start:start + batch_size], stems[start:start + batch_size]):
            try:
                originals.append(read_rgb(path))
                chunk.append((path, stem))
            except EdgekdError as exc:
                failures.append({"image": str(path), "error": str(exc)})
        if not chunk:
            continue
        prediction = runtime.infer(np.stack([resize_rgb(rgb, runtime.input_size) for rgb in originals]), batch_size)
        for (path, stem), rgb, small_map, score in zip(chunk, originals, prediction.maps, prediction.scores):
            amap = cv2.resize(small_map, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
            mask = threshold_mask(amap, pixel_threshold)
            write_image_atomic(out / f"{stem}_mask.png", mask.astype(np.uint8) * 255)
            anomalous = bool(above(score, image_threshold))
            verdict = f"{'DEFECT' if anomalous else 'OK'}  score {score:.3f}  (threshold {image_threshold:.3f})"
            write_image_atomic(out / f"{stem}_overlay.png", banner(overlay(rgb, amap, mask, vmin, vmax), verdict,
                                                                 (255, 0, 0) if anomalous else (0, 200, 0)))  # RGB
            records.append({"image": str(path), "score": float(score), "anomalous": anomalous,
                            "defect_pixels": int(mask.sum()), "mask": str(out / f"{stem}_mask.png"),
                            "overlay": str(out / f"{stem}_overlay.png"),
                            **({"warning": w} if (w := size_warning(rgb, runtime.input_size)) else {})})
    write_bytes_atomic(out / "predictions.json", json.dumps({"thresholds": thresholds, "predictions": records,
                                                            "failed": failures}, indent=2).encode())
    return records, failures

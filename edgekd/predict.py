"""`edgekd predict`: score, mask and overlay for individual images, at each image's own resolution."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from edgekd.atomic import write_bytes_atomic
from edgekd.data.images import read_rgb, resize_rgb, write_image_atomic
from edgekd.errors import EdgekdError
from edgekd.runtime.base import Runtime
from edgekd.scoring import threshold_mask
from edgekd.viz import colour_range, overlay


def output_stems(paths: list[Path]) -> list[str]:
    """File stems for outputs; test/good/000.png and test/hole/000.png must not overwrite each other."""
    stems = [Path(p).stem for p in paths]
    return [f"{Path(p).parent.name}_{s}" if stems.count(s) > 1 else s for p, s in zip(paths, stems)]


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
    vmin, vmax = colour_range(runtime.info.get("score_stats"), pixel_threshold)
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
            write_image_atomic(out / f"{stem}_overlay.png", overlay(rgb, amap, mask, vmin, vmax))
            records.append({"image": str(path), "score": float(score), "anomalous": bool(score > image_threshold),
                            "defect_pixels": int(mask.sum()), "mask": str(out / f"{stem}_mask.png"),
                            "overlay": str(out / f"{stem}_overlay.png"),
                            **({"warning": w} if (w := size_warning(rgb, runtime.input_size)) else {})})
    write_bytes_atomic(out / "predictions.json", json.dumps({"thresholds": thresholds, "predictions": records,
                                                            "failed": failures}, indent=2).encode())
    return records, failures

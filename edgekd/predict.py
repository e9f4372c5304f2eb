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


def predict_images(runtime: Runtime, paths: list[Path], out: Path, batch_size: int = 16,
                   thresholds: dict | None = None) -> list[dict]:
    """thresholds: override the artifact's {'image': ..., 'pixel': ...}."""
    records = []
    thresholds = thresholds or runtime.thresholds
    if not thresholds or thresholds.get("image") is None or thresholds.get("pixel") is None:
        raise EdgekdError("this artifact has no thresholds: pass --threshold or re-export from a calibrated checkpoint")
    image_threshold, pixel_threshold = thresholds["image"], thresholds["pixel"]
    vmin, vmax = colour_range(runtime.info.get("score_stats"), pixel_threshold)
    stems = output_stems(paths)
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        originals = [read_rgb(p) for p in chunk]  # every file is checked before any output is written
        prediction = runtime.infer(np.stack([resize_rgb(rgb, runtime.input_size) for rgb in originals]), batch_size)
        maps, scores = prediction.maps, prediction.scores
        for path, stem, rgb, small_map, score in zip(chunk, stems[start:], originals, maps, scores):
            amap = cv2.resize(small_map, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
            mask = threshold_mask(amap, pixel_threshold)
            write_image_atomic(out / f"{stem}_mask.png", mask.astype(np.uint8) * 255)
            write_image_atomic(out / f"{stem}_overlay.png", overlay(rgb, amap, mask, vmin, vmax))
            records.append({"image": str(path), "score": float(score), "anomalous": bool(score > image_threshold),
                            "defect_pixels": int(mask.sum()), "mask": str(out / f"{stem}_mask.png"),
                            "overlay": str(out / f"{stem}_overlay.png")})
    write_bytes_atomic(out / "predictions.json", json.dumps({"thresholds": thresholds, "predictions": records},
                                                           indent=2).encode())
    return records

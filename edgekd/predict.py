"""`edgekd predict`: score, mask and overlay for individual images, at each image's own resolution."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from edgekd.data.images import read_rgb, resize_rgb, write_bytes_atomic, write_image_atomic
from edgekd.evaluate import Infer
from edgekd.viz import overlay


def predict_images(infer: Infer, paths: list[Path], input_size: tuple[int, int], thresholds: dict, out: Path,
                   score_stats: dict | None = None) -> list[dict]:
    records = []
    image_threshold, pixel_threshold = thresholds["image"], thresholds["pixel"]
    # Colour scale shared by every overlay: normal images sit in the blue half, the threshold is the middle.
    vmin = score_stats["min"] * 0.5 if score_stats else 0.0
    vmax = vmin + 2 * (pixel_threshold - vmin)
    stems = [Path(p).stem for p in paths]
    for path, stem in zip(paths, stems):
        if stems.count(stem) > 1:  # test/good/000.png and test/hole/000.png must not overwrite each other
            stem = f"{Path(path).parent.name}_{stem}"
        rgb = read_rgb(path)
        maps, scores = infer(resize_rgb(rgb, input_size)[None])
        amap = cv2.resize(maps[0], (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
        mask = amap > pixel_threshold
        score = float(scores[0])
        write_image_atomic(out / f"{stem}_mask.png", mask.astype(np.uint8) * 255)
        write_image_atomic(out / f"{stem}_overlay.png", overlay(rgb, amap, mask, vmin, vmax))
        records.append({"image": str(path), "score": score, "anomalous": score > image_threshold,
                        "defect_pixels": int(mask.sum()), "mask": str(out / f"{stem}_mask.png"),
                        "overlay": str(out / f"{stem}_overlay.png")})
    write_bytes_atomic(out / "predictions.json", json.dumps({"thresholds": thresholds, "predictions": records},
                                                           indent=2).encode())
    return records

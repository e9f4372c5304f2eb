#!/usr/bin/env python
"""How far normal scores move between PNG files and the same images streamed as a compressed video.

For each checkpoint: the normal test images of a category are scored from their PNG files, then written into an
MPEG-4 video (the codec OpenCV's pip wheel writes) and scored frame by frame through `edgekd run`'s runner. The
shift is reported in robust spreads of the PNG scores (1.4826 MAD), with how many video frames the checkpoint's
own training threshold would flag. Compare checkpoints trained with and without train.augment=camera.

    python benchmarks/camera_shift.py --data data/real --category cork runs/a/model.ckpt runs/b/model.ckpt
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from edgekd.atomic import write_bytes_atomic
from edgekd.calibrate import collect_normal_scores
from edgekd.calibration import ThresholdRule
from edgekd.data.layouts import load_dataset
from edgekd.data.loading import load_images
from edgekd.data.video import write_line_video
from edgekd.machine import machine_info
from edgekd.runtime.torch_backend import TorchRuntime
from edgekd.stream.sources import CaptureSettings


def shift(checkpoint: Path, data: Path, category: str, video: Path) -> dict:
    runtime = TorchRuntime.from_checkpoint(checkpoint, device="cpu")
    dataset = load_dataset(data, category)
    normal = [s for s in dataset.test if s.label == 0]
    png = runtime.infer(load_images(normal, runtime.input_size)).scores
    frames = np.array(collect_normal_scores(runtime, str(video), len(normal), CaptureSettings(None, None, None))[0].scores)
    spread = ThresholdRule().spread(png)
    threshold = runtime.thresholds["image"]
    return {"checkpoint": str(checkpoint), "augment": runtime.payload["config"]["train"].get("augment", "none"),
            "png_median": float(np.median(png)), "video_median": float(np.median(frames)),
            "shift_spreads": float((np.median(frames) - np.median(png)) / spread),
            "training_threshold": threshold, "png_flagged": int((png > threshold).sum()),
            "video_flagged": int((frames > threshold).sum()), "frames": int(len(frames))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", type=Path, nargs="+")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--category", required=True)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    dataset = load_dataset(args.data, args.category)
    count = sum(1 for s in dataset.test if s.label == 0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "good.mp4"
        # The video lists the normal test images in order (seed 0 shuffles; the scores are compared as medians).
        write_line_video(dataset, video, count, [], fps=25.0)
        for checkpoint in args.checkpoints:
            rows.append(shift(checkpoint, args.data, args.category, video))
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        write_bytes_atomic(args.json, json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine_info(),
                                                  "category": args.category, "rows": rows}, indent=2).encode())


if __name__ == "__main__":
    main()

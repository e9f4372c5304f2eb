"""A video of a production line made from a dataset's test images: normal parts, with defective ones at frames
you choose. `edgekd data video` writes one; the runner tests and benchmarks stream it."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from edgekd.atomic import write_bytes_atomic
from edgekd.data.images import read_rgb, resize_rgb
from edgekd.data.layouts import Dataset
from edgekd.errors import EdgekdError


NORMAL_PARTS = ("all", "first", "second")


def write_line_video(dataset: Dataset, path: str | Path, frames: int, defect_frames: list[int], fps: float = 25.0,
                     size: int | None = None, seed: int = 0, normal_part: str = "all") -> dict:
    """Frame i shows a defective test image when i is in `defect_frames`, a normal one otherwise (cycling through
    each pool, shuffled by `seed`). Writes the video (under a .partial name, then renamed) and <video>.json with
    the frame list; returns that description. normal_part 'first' or 'second' takes only that half of the normal
    test images, so a calibration clip and a line video can share no image."""
    path = Path(path)
    if normal_part not in NORMAL_PARTS:
        raise EdgekdError(f"--normal-part '{normal_part}' is unknown: use {', '.join(NORMAL_PARTS)}")
    normal = [s for s in dataset.test if s.label == 0] or dataset.train
    half = (len(normal) + 1) // 2
    normal = {"all": normal, "first": normal[:half], "second": normal[half:]}[normal_part]
    defective = [s for s in dataset.test if s.label == 1]
    if not normal or (defect_frames and not defective):
        raise EdgekdError(f"{dataset.root} needs normal and defective test images to make a line video")
    bad = [i for i in defect_frames if not 0 <= i < frames]
    if bad:
        raise EdgekdError(f"defect frames {bad} fall outside 0..{frames - 1}")
    rng = np.random.default_rng(seed)
    normal = [normal[i] for i in rng.permutation(len(normal))]
    defective = [defective[i] for i in rng.permutation(len(defective))]
    first = read_rgb(normal[0].path)
    height, width = (size, size) if size else first.shape[:2]
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.stem + ".partial" + path.suffix)
    writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise EdgekdError(f"OpenCV cannot write {path}: use an .mp4 name")
    wanted, listing, counters = set(defect_frames), [], {"normal": 0, "defect": 0}
    try:
        for index in range(frames):
            kind = "defect" if index in wanted else "normal"
            pool = defective if kind == "defect" else normal
            sample = pool[counters[kind] % len(pool)]
            counters[kind] += 1
            rgb = resize_rgb(read_rgb(sample.path), (height, width))
            writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            listing.append({"frame": index, "defect": sample.defect, "image": str(sample.path)})
    finally:
        writer.release()
    partial.replace(path)
    description = {"video": str(path), "fps": fps, "frames": frames, "size": [height, width], "normal_part": normal_part,
                   "defect_frames": sorted(wanted), "listing": listing}
    write_bytes_atomic(path.with_suffix(".json"), json.dumps(description, indent=2).encode())
    return description

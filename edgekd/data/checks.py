"""Whole-dataset file checks for `edgekd data info`: every image decodes, every mask matches its image."""

from __future__ import annotations

import cv2

from edgekd.data.images import decode
from edgekd.data.layouts import Dataset


def check_files(dataset: Dataset, progress=None) -> list[str]:
    """One line per problem: an image that does not decode, a mask that does not or whose size differs."""
    problems = []
    samples = dataset.train + dataset.test
    task = progress.add_task("check files", total=len(samples)) if progress else None
    for sample in samples:
        image = decode(sample.path, cv2.IMREAD_UNCHANGED)
        if image is None or image.size == 0:
            problems.append(f"{sample.path} does not decode (corrupt or not an image)")
        for mask_path in sample.masks:
            mask = decode(mask_path, cv2.IMREAD_GRAYSCALE)
            if mask is None:
                problems.append(f"mask {mask_path} does not decode")
            elif image is not None and mask.shape[:2] != image.shape[:2]:
                problems.append(f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image is "
                                f"{image.shape[1]}x{image.shape[0]}")
        if progress:
            progress.advance(task)
    return problems

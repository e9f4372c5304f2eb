"""Samples on disk -> arrays in memory at the model's input size."""

from __future__ import annotations

import numpy as np

from edgekd.data.images import read_mask, read_rgb, resize_mask, resize_rgb
from edgekd.data.layouts import Sample


def load_images(samples: list[Sample], size: tuple[int, int], progress=None, label: str = "load") -> np.ndarray:
    """(N,H,W,3) uint8 RGB, resized to the model input size."""
    out = np.empty((len(samples), size[0], size[1], 3), dtype=np.uint8)
    task = progress.add_task(label, total=len(samples)) if progress else None
    for i, sample in enumerate(samples):
        out[i] = resize_rgb(read_rgb(sample.path), size)
        if progress:
            progress.advance(task)
    return out


def load_images_and_masks(samples: list[Sample], size: tuple[int, int], progress=None,
                          label: str = "load") -> tuple[np.ndarray, np.ndarray]:
    """Images as above and (N,H,W) bool ground-truth masks (all False for normal images)."""
    images = np.empty((len(samples), size[0], size[1], 3), dtype=np.uint8)
    masks = np.zeros((len(samples), size[0], size[1]), dtype=bool)
    task = progress.add_task(label, total=len(samples)) if progress else None
    for i, sample in enumerate(samples):
        rgb = read_rgb(sample.path)
        images[i] = resize_rgb(rgb, size)
        if sample.masks:
            masks[i] = resize_mask(read_mask(sample.masks, rgb.shape[:2], sample.path), size)
        if progress:
            progress.advance(task)
    return images, masks

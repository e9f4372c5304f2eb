"""How a category's normal training images divide: the ones the networks fit on, and held-out ones that set the
thresholds and check exports (training and export draw the same split from the same seed)."""

from __future__ import annotations

import numpy as np


def split_normals(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of images to fit on and of held-out normal images for calibration."""
    n_val = min(max(2, int(round(n * fraction))), n - 1) if n >= 3 and fraction > 0 else 0
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])

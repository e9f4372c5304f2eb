"""Running a torch detector over arrays of images in batches."""

from __future__ import annotations

import numpy as np
import torch

from edgekd.data.images import to_model_input
from edgekd.models import AnomalyModel


@torch.no_grad()
def run_model(model: AnomalyModel, images: np.ndarray, batch_size: int = 16, device: torch.device | None = None,
              progress=None, label: str = "infer") -> tuple[np.ndarray, np.ndarray]:
    """(N,H,W,3) uint8 RGB -> anomaly maps (N,H,W) float32 and scores (N,) float32."""
    device = device or next(model.parameters()).device
    model.eval()
    maps = np.empty((len(images), *model.input_size), dtype=np.float32)
    scores = np.empty(len(images), dtype=np.float32)
    task = progress.add_task(label, total=len(images)) if progress else None
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(to_model_input(images[start:start + batch_size])).to(device)
        amap, score = model(batch)
        maps[start:start + len(batch)] = amap[:, 0].float().cpu().numpy()
        scores[start:start + len(batch)] = score.float().cpu().numpy()
        if progress:
            progress.advance(task, len(batch))
    return maps, scores

"""The PyTorch backend: runs a detector in memory or from a training checkpoint (CPU or CUDA)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from edgekd.checkpoint import load_checkpoint
from edgekd.device import resolve_device
from edgekd.models import AnomalyModel
from edgekd.runtime.base import Runtime


class TorchRuntime(Runtime):
    backend = "torch"

    def __init__(self, model: AnomalyModel, info: dict | None = None, device: str | torch.device | None = None,
                 fused_kernels: bool | None = None):
        self.model = model.eval()
        self.device = resolve_device(device) if isinstance(device, str) else (device or next(model.parameters()).device)
        self.model.to(self.device)
        # On a GPU the scoring runs as the fused CUDA kernels (engines/kernels/feature_diff.cu); CPU keeps the
        # reference. EDGEKD_FUSED_KERNELS=0 turns them off, e.g. to compare.
        if fused_kernels is None:
            fused_kernels = self.device.type == "cuda" and os.environ.get("EDGEKD_FUSED_KERNELS", "1") != "0"
        self.model.use_fused_kernels = bool(fused_kernels)
        super().__init__({"input_size": list(model.input_size), "precision": "fp32",
                          "fused_kernels": self.model.use_fused_kernels, **(info or {})})

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, device: str = "auto") -> "TorchRuntime":
        model, payload = load_checkpoint(checkpoint)
        training = payload.get("training", {})
        info = {"thresholds": payload.get("thresholds"), "score_stats": payload.get("score_stats"),
                "model": payload["model"], "category": training.get("category_arg") or training.get("category"),
                "checkpoint": str(checkpoint)}
        runtime = cls(model, info, device)
        runtime.payload = payload
        return runtime

    @torch.no_grad()
    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        amap, score = self.model(torch.from_numpy(batch).to(self.device))
        return amap.float().cpu().numpy(), score.float().cpu().numpy()

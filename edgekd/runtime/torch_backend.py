"""The PyTorch backend: runs a detector in memory or from a training checkpoint (CPU or CUDA)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

from edgekd.checkpoint import load_checkpoint
from edgekd.device import resolve_device
from edgekd.models import AnomalyModel
from edgekd.sidecar import Sidecar
from edgekd.runtime.base import Runtime


class TorchRuntime(Runtime):
    backend = "torch"

    def __init__(self, model: AnomalyModel, info: Sidecar | None = None, device: str | torch.device | None = None,
                 fused_kernels: bool | None = None, cuda_graphs: bool | None = None):
        self.model = model.eval()
        self.device = resolve_device(device) if isinstance(device, str) else (device or next(model.parameters()).device)
        self.model.to(self.device)
        # On a GPU the scoring runs as the fused CUDA kernels (engines/kernels/feature_diff.cu); CPU keeps the
        # reference. EDGEKD_FUSED_KERNELS=0 turns them off, e.g. to compare.
        if fused_kernels is None:
            fused_kernels = self.device.type == "cuda" and os.environ.get("EDGEKD_FUSED_KERNELS", "1") != "0"
        self.model.use_fused_kernels = bool(fused_kernels)
        # A GPU also replays the whole forward as one CUDA graph per batch size: a frame then costs one launch
        # instead of a few hundred, which is most of the time at small batches. EDGEKD_CUDA_GRAPHS=0 turns it off.
        if cuda_graphs is None:
            cuda_graphs = self.device.type == "cuda" and os.environ.get("EDGEKD_CUDA_GRAPHS", "1") != "0"
        self.graphs = CudaGraphs(self.model) if cuda_graphs else None
        super().__init__(info or Sidecar(model=None, input_size=tuple(model.input_size), kind="checkpoint"))

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, device: str = "auto") -> "TorchRuntime":
        from edgekd.artifacts import describe_payload
        model, payload = load_checkpoint(checkpoint)
        info = describe_payload(payload, "checkpoint", checkpoint)
        info.category = payload.get("training", {}).get("category_arg") or info.category
        runtime = cls(model, info, device)
        runtime.payload = payload
        return runtime

    @torch.no_grad()
    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = torch.from_numpy(batch).to(self.device, non_blocking=True)
        outputs = self.graphs(images) if self.graphs is not None else self.model(images)
        amap, score = outputs[:2]
        return amap.float().cpu().numpy(), score.float().cpu().numpy()


class CudaGraphs:
    """The model's forward captured as a CUDA graph per batch size and replayed.

    Capture needs fixed buffers: each batch size gets a static input it is copied into and static outputs that the
    replay overwrites (run() copies them to the host before the next replay). Warm-up runs happen before capture
    on a side stream, as CUDA requires, so lazy initialisation (cuDNN plans, the fused kernels' module) stays out of
    the graph. If a model cannot be captured, it runs eagerly from then on, after one warning."""

    def __init__(self, model: torch.nn.Module, warmup: int = 2):
        self.model, self.warmup = model, warmup
        self.captured: dict[tuple, tuple] = {}
        self.failed = False

    def __call__(self, images: torch.Tensor):
        if self.failed:
            return self.model(images)
        key = tuple(images.shape)
        if key not in self.captured:
            try:
                self.captured[key] = self._capture(images)
            except RuntimeError as exc:
                self.failed = True
                print(f"warning: CUDA graph capture failed ({str(exc).splitlines()[0][:160]}): running without "
                      "CUDA graphs", file=sys.stderr)
                return self.model(images)
        graph, static_input, static_outputs = self.captured[key]
        static_input.copy_(images)
        graph.replay()
        return static_outputs

    def _capture(self, images: torch.Tensor) -> tuple:
        static_input = images.clone()
        side = torch.cuda.Stream(device=images.device)
        side.wait_stream(torch.cuda.current_stream(images.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.model(static_input)
        torch.cuda.current_stream(images.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_outputs = self.model(static_input)
        return graph, static_input, static_outputs


def open_checkpoint(path, device: str = "auto", cuda_graph: bool = False):
    """This runtime's row in edgekd/artifact_kinds.py opens an artifact through here."""
    return TorchRuntime.from_checkpoint(path, device)

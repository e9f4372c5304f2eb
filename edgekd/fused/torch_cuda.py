"""The torch CUDA path of the scoring: the fused kernels on torch tensors, on torch's current stream.

AnomalyModel.score_features calls `fused_scoring` when its features live on a GPU and the fused kernels are on
(`use_fused_kernels`, switched on by the torch runtime); CPU tensors, and training (which needs gradients),
keep the reference module.
"""

from __future__ import annotations

import torch

from edgekd.fused.cuda_kernels import FeatureDiffKernels, LaunchPlan
from edgekd.fused.spec import FusedOpSpec


def fused_scoring(spec: FusedOpSpec, teacher: list[torch.Tensor], student: list[torch.Tensor], poison: bool = False):
    """(anomaly map (B,1,H,W) FP32, score (B,) FP32[, mask (B,1,H,W) uint8]) computed by the CUDA kernels.
    poison: fill the outputs and workspace with NaN / 255 first, so a check sees any value a kernel never wrote."""
    device = teacher[0].device
    kernels = FeatureDiffKernels.for_device(device.index if device.index is not None else torch.cuda.current_device())
    teacher = [(t if t.dtype in (torch.float16, torch.float32) else t.float()).contiguous() for t in teacher]
    student = [s.to(t.dtype).contiguous() for t, s in zip(teacher, student)]
    batch = teacher[0].shape[0]
    plan = LaunchPlan(spec, batch, tuple((t.shape[1], t.shape[2], t.shape[3]) for t in teacher))
    height, width = spec.output_size
    def output(shape, dtype):
        empty = torch.empty(shape, dtype=dtype, device=device)
        return empty.fill_(float("nan") if dtype.is_floating_point else 255) if poison else empty

    workspace = output((plan.workspace_bytes,), torch.uint8)
    amap = output((batch, 1, height, width), torch.float32)
    scores = output((batch,), torch.float32)
    mask = output((batch, 1, height, width), torch.uint8) if spec.threshold is not None else None
    kernels.launch(plan, [t.data_ptr() for t in teacher], [s.data_ptr() for s in student],
                   [t.dtype == torch.float16 for t in teacher], workspace.data_ptr(), amap.data_ptr(),
                   scores.data_ptr(), mask.data_ptr() if mask is not None else 0,
                   torch.cuda.current_stream(device).cuda_stream)
    return (amap, scores) if mask is None else (amap, scores, mask)

"""Backends behind one interface, chosen from the artifact's file type (or forced with --backend)."""

from __future__ import annotations

from pathlib import Path

from edgekd.errors import EdgekdError
from edgekd.runtime.base import Prediction, Runtime

BACKEND_BY_SUFFIX = {".ckpt": "torch", ".pt": "torch", ".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt"}


def backend_for(path: str | Path, backend: str | None = None) -> str:
    if backend:
        if backend not in set(BACKEND_BY_SUFFIX.values()):
            raise EdgekdError(f"unknown backend '{backend}': use torch, onnxruntime or tensorrt")
        return backend
    suffix = Path(path).suffix.lower()
    if suffix not in BACKEND_BY_SUFFIX:
        raise EdgekdError(f"cannot tell the backend of {path} from its suffix '{suffix}': pass a .ckpt, .onnx or "
                          ".engine file, or --backend")
    return BACKEND_BY_SUFFIX[suffix]


def open_runtime(path: str | Path, backend: str | None = None, device: str = "auto", cuda_graph: bool = False) -> Runtime:
    """cuda_graph: replay each batch size's TensorRT work as a captured CUDA graph (TensorRT backend only)."""
    kind = backend_for(path, backend)
    if kind == "torch":
        from edgekd.runtime.torch_backend import TorchRuntime
        return TorchRuntime.from_checkpoint(path, device)
    if kind == "onnxruntime":
        from edgekd.runtime.onnx_backend import OnnxRuntime
        return OnnxRuntime(path, device)
    from edgekd.runtime.tensorrt_backend import TensorRTRuntime
    return TensorRTRuntime(path, device, cuda_graph)


__all__ = ["Prediction", "Runtime", "backend_for", "open_runtime"]

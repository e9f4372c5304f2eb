"""Backends behind one interface; which one opens an artifact is its row in edgekd/artifact_kinds.py (from the
file's suffix and first bytes, or --backend)."""

from __future__ import annotations

from pathlib import Path

from edgekd.artifact_kinds import kind_of
from edgekd.runtime.base import Prediction, Runtime


def open_runtime(path: str | Path, backend: str | None = None, device: str = "auto", cuda_graph: bool = False) -> Runtime:
    """cuda_graph: replay each batch size's TensorRT work as a captured CUDA graph (TensorRT backend only)."""
    return kind_of(path, backend).open(Path(path), device, cuda_graph)


__all__ = ["Prediction", "Runtime", "open_runtime"]

"""The onnxruntime backend: runs exported graphs (single or split layout) on CPU, CUDA or TensorRT providers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekd.artifacts import check_artifact_pair, read_sidecar
from edgekd.errors import EdgekdError
from edgekd.runtime.base import Runtime

PROVIDERS = {"cpu": ["CPUExecutionProvider"],
             "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
             "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]}


def _session(path: Path, providers: list[str]):
    try:
        import onnxruntime as ort
    except ImportError:
        raise EdgekdError("onnxruntime is not installed: pip install onnxruntime (or onnxruntime-gpu)") from None
    available = set(ort.get_available_providers())
    chosen = [p for p in providers if p in available]
    if not chosen:
        raise EdgekdError(f"none of the onnxruntime providers {providers} is available here "
                          f"(available: {', '.join(sorted(available))}): pick another --device")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=chosen)
    except Exception as exc:
        raise EdgekdError(f"onnxruntime cannot load {path}: {str(exc).splitlines()[0][:200]}") from None


class OnnxRuntime(Runtime):
    backend = "onnxruntime"

    def __init__(self, path: str | Path, device: str = "cpu"):
        path = Path(path)
        if not path.is_file():
            raise EdgekdError(f"ONNX file {path} does not exist: create it with 'edgekd export'")
        info = read_sidecar(path)
        super().__init__(info)
        providers = PROVIDERS.get("cpu" if device == "auto" else device.split(":")[0])
        if providers is None:
            raise EdgekdError(f"device '{device}' is not one of {', '.join(PROVIDERS)} for onnxruntime")
        if info.layout == "split":
            self.teacher = _session(path.parent / info.graphs["teacher"], providers)
            self.student = _session(path.parent / info.graphs["student"], providers)
        else:
            self.teacher, self.student = None, _session(path, providers)
        check_artifact_pair(path, info, self.student.get_modelmeta().custom_metadata_map, thresholds=False)
        self.student_inputs = [i.name for i in self.student.get_inputs()]
        self.teacher_outputs = [o.name for o in self.teacher.get_outputs()] if self.teacher else []

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        feeds = {"images": batch}
        if self.teacher is not None:
            feeds.update(zip(self.teacher_outputs, self.teacher.run(self.teacher_outputs, {"images": batch})))
        amap, score = self.student.run(["anomaly_map", "score"], {k: feeds[k] for k in self.student_inputs})
        return amap, score


def open_onnx(path, device: str = "auto", cuda_graph: bool = False):
    """This runtime's row in edgekd/artifact_kinds.py opens an artifact through here."""
    return OnnxRuntime(path, device)

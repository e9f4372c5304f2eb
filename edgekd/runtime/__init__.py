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


WHAT = {"torch": "a PyTorch checkpoint", "onnxruntime": "an ONNX graph", "tensorrt": "a TensorRT engine"}


def sniff_backend(path: str | Path) -> str | None:
    """What the file's first bytes say it is: torch.save writes a zip, an ONNX ModelProto starts with its
    ir_version field (tag 0x08); None when the bytes do not tell (engines, garbage)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError:
        return None
    if head.startswith(b"PK\x03\x04"):
        return "torch"
    return "onnxruntime" if head[:1] == b"\x08" else None


def check_artifact_kind(path: Path, kind: str, forced: bool) -> None:
    """A file whose content is not what its suffix (or --backend) says gets the fix, not a loader's error."""
    if not path.is_file():
        return  # each backend says how to create the missing file
    by_suffix = BACKEND_BY_SUFFIX.get(path.suffix.lower())
    if forced and by_suffix and by_suffix != kind:
        fix = f"export it first ('edgekd export {path}')" if by_suffix == "torch" else \
            f"build an engine first ('edgekd build-engine {path}')" if kind == "tensorrt" else "drop --backend"
        raise EdgekdError(f"--backend {kind} runs {WHAT[kind]}, and {path} is {WHAT[by_suffix]}: {fix}")
    found = sniff_backend(path)
    if found is not None and found != kind:
        right = {"torch": ".ckpt", "onnxruntime": ".onnx"}[found]
        raise EdgekdError(f"{path} is {WHAT[found]}, not {WHAT[kind]} as its name says: rename it to {right}, or pass "
                          f"the file you meant")


def open_runtime(path: str | Path, backend: str | None = None, device: str = "auto", cuda_graph: bool = False) -> Runtime:
    """cuda_graph: replay each batch size's TensorRT work as a captured CUDA graph (TensorRT backend only)."""
    kind = backend_for(path, backend)
    check_artifact_kind(Path(path), kind, backend is not None)
    if kind == "torch":
        from edgekd.runtime.torch_backend import TorchRuntime
        return TorchRuntime.from_checkpoint(path, device)
    if kind == "onnxruntime":
        from edgekd.runtime.onnx_backend import OnnxRuntime
        return OnnxRuntime(path, device)
    from edgekd.runtime.tensorrt_backend import TensorRTRuntime
    return TensorRTRuntime(path, device, cuda_graph)


__all__ = ["Prediction", "Runtime", "backend_for", "open_runtime"]

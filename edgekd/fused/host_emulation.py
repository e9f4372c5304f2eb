"""The fused kernels run on the CPU: engines/kernels/host_emulation.cpp compiles feature_diff.cu with g++ and
emulates each launch (blocks in turn, a host thread per CUDA thread). The launch sequence is the very one the GPU
paths use (KernelSequence.launch), so this checks the kernels' logic, the argument packing and the workspace
layout on machines without a GPU. It says nothing about speed or GPU-only hazards (races, coalescing)."""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from edgekd.errors import EdgekdError
from edgekd.fused.cuda_kernels import KernelSequence, LaunchPlan, kernel_params, kernel_source_path
from edgekd.fused.spec import FusedOpSpec


def _build_library() -> Path:
    source = kernel_source_path()
    shim = source.with_name("host_emulation.cpp")
    digest = hashlib.sha256(source.read_bytes() + shim.read_bytes()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgekd"
    library = cache / f"feature_diff_host_{digest}.so"
    if library.is_file():
        return library
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        raise EdgekdError("the host emulation of the CUDA kernels needs a C++20 compiler: install g++ (or set CXX)")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as staging:
        built = Path(staging) / library.name
        result = subprocess.run([compiler, "-std=c++20", "-O2", "-shared", "-fPIC", "-pthread", "-o", str(built),
                                 str(shim)], capture_output=True, text=True)
        if result.returncode != 0:
            raise EdgekdError(f"g++ could not build the kernel emulation from {shim}: {result.stderr.strip()[:2000]}")
        built.replace(library)  # atomic: a half-written library never sits in the cache
    return library


class HostEmulatedKernels(KernelSequence):
    def __init__(self):
        self.lib = ctypes.CDLL(str(_build_library()))
        self.lib.edgekd_emulate.argtypes = [ctypes.c_char_p] + [ctypes.c_uint] * 6 + [ctypes.c_ulonglong, ctypes.c_void_p]
        self.lib.edgekd_emulate.restype = ctypes.c_int

    def _launch(self, name: str, grid, block, shared: int, stream: int, args: list) -> None:
        params, _keep = kernel_params(args)
        if self.lib.edgekd_emulate(name.encode(), *grid, *block, shared, params.ctypes.data) != 0:
            raise EdgekdError(f"the kernel emulation has no kernel named {name}")


def emulated_feature_diff(spec: FusedOpSpec, teacher: list[np.ndarray], student: list[np.ndarray],
                          kernels: HostEmulatedKernels | None = None) -> tuple[np.ndarray, ...]:
    """Like edgekd.fused.torch_cuda.fused_scoring, on NumPy arrays (FP32 or FP16 NCHW features)."""
    kernels = kernels or HostEmulatedKernels()
    teacher = [np.ascontiguousarray(t if t.dtype in (np.float16, np.float32) else t.astype(np.float32)) for t in teacher]
    student = [np.ascontiguousarray(s.astype(t.dtype)) for t, s in zip(teacher, student)]
    batch = teacher[0].shape[0]
    plan = LaunchPlan(spec, batch, tuple(tuple(int(v) for v in t.shape[1:]) for t in teacher))
    height, width = spec.output_size
    workspace = np.zeros(plan.workspace_bytes, dtype=np.uint8)
    amap = np.full((batch, 1, height, width), np.nan, dtype=np.float32)  # poisoned: every pixel must be written
    scores = np.full(batch, np.nan, dtype=np.float32)
    mask = np.full((batch, 1, height, width), 255, dtype=np.uint8) if spec.threshold is not None else None
    kernels.launch(plan, [t.ctypes.data for t in teacher], [s.ctypes.data for s in student],
                   [t.dtype == np.float16 for t in teacher], workspace.ctypes.data, amap.ctypes.data,
                   scores.ctypes.data, mask.ctypes.data if mask is not None else 0, 0)
    return (amap, scores) if mask is None else (amap, scores, mask)

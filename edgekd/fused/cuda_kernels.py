"""The GPU form of `edgekd::MultiScaleFeatureDiff`: engines/kernels/feature_diff.cu compiled with NVRTC (cuda-python)
and launched in the order the kernels expect. The TensorRT plugin and the torch CUDA path both call
`FeatureDiffKernels.launch`; `LaunchPlan` is the arithmetic they share (workspace layout, grids, shared memory).
"""

from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from edgekd.errors import EdgekdError
from edgekd.fused.spec import MAX_SCALES, FusedOpSpec
from edgekd.scoring import blur_reflects

SOURCE_ENV = "EDGEKD_KERNEL_SOURCE"
COMBINE_CODES = {"add": 0, "mul": 1, "max": 2, "weighted": 3}
# Block shapes fixed in the .cu source (COS_*, ROW_TILE, COL_*, UP_*, TOPK_THREADS).
COS_BLOCK, ROW_TILE, COL_TILE, COL_ROWS, TOPK_THREADS = (32, 8), 256, 32, 8, 1024
UP_BLOCK = (32, 8)
SHARED_LIMIT = 48 * 1024  # bytes of dynamic shared memory a kernel may use without opting in
ALIGN = 256
KERNELS = ("edgekd_cosine_distance_f32", "edgekd_cosine_distance_f16", "edgekd_combine_blur_rows",
           "edgekd_blur_cols_score", "edgekd_upsample_score", "edgekd_init_scores", "edgekd_finish_max_scores",
           "edgekd_topk_mean")


def kernel_source_path() -> Path:
    """engines/kernels/feature_diff.cu of this checkout, or the file named by $EDGEKD_KERNEL_SOURCE."""
    path = Path(os.environ.get(SOURCE_ENV) or Path(__file__).resolve().parents[2] / "engines" / "kernels" / "feature_diff.cu")
    if not path.is_file():
        raise EdgekdError(f"CUDA kernel source {path} not found: run from an edgekd checkout or set {SOURCE_ENV} "
                          "to engines/kernels/feature_diff.cu")
    return path


def compile_cubin(arch: str, source: Path | None = None) -> bytes:
    """NVRTC: source -> cubin for `arch` (e.g. 'sm_87'). Needs no GPU; needs cuda-python and NVRTC
    (pip install 'edgekd[cuda]')."""
    try:
        from cuda.bindings import nvrtc
    except ImportError as exc:
        raise EdgekdError("the fused CUDA kernels need cuda-python and NVRTC: pip install 'edgekd[cuda]'") from exc
    source = source or kernel_source_path()
    try:
        err, program = nvrtc.nvrtcCreateProgram(source.read_bytes(), source.name.encode(), 0, [], [])
    except Exception as exc:  # NVRTC library missing: cuda-python raises when it first loads it
        raise EdgekdError(f"NVRTC is not available ({exc}): install the CUDA toolkit, or pip install nvidia-cuda-nvrtc "
                          "of cuda-python's CUDA major version") from exc
    options = [f"--gpu-architecture={arch}".encode(), b"--std=c++14"]
    (err,) = nvrtc.nvrtcCompileProgram(program, len(options), options)
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        _, size = nvrtc.nvrtcGetProgramLogSize(program)
        log = b" " * size
        nvrtc.nvrtcGetProgramLog(program, log)
        raise EdgekdError(f"NVRTC could not compile {source} for {arch}: {log.decode(errors='replace').strip()}")
    _, size = nvrtc.nvrtcGetCUBINSize(program)
    cubin = b" " * size
    nvrtc.nvrtcGetCUBIN(program, cubin)
    nvrtc.nvrtcDestroyProgram(program)
    return cubin


class ScaleMapsArg(ctypes.Structure):
    """struct ScaleMaps of feature_diff.cu, passed by value."""
    _fields_ = [("maps", ctypes.c_uint64 * MAX_SCALES), ("height", ctypes.c_int * MAX_SCALES),
                ("width", ctypes.c_int * MAX_SCALES), ("weight", ctypes.c_float * MAX_SCALES),
                ("count", ctypes.c_int), ("combine", ctypes.c_int)]


def _aligned(nbytes: int) -> int:
    return (nbytes + ALIGN - 1) // ALIGN * ALIGN


@dataclass(frozen=True)
class LaunchPlan:
    """Everything about one call that depends only on shapes: workspace layout, grids, shared memory."""
    spec: FusedOpSpec
    batch: int
    scales: tuple[tuple[int, int, int], ...]  # (channels, height, width) per scale

    def __post_init__(self):
        self.spec.check_scales(len(self.scales))
        if self.row_shared_bytes > SHARED_LIMIT or self.col_shared_bytes > SHARED_LIMIT:
            raise EdgekdError(f"blur sigma {self.spec.sigma} is too large for the fused kernels' shared-memory tiles "
                              "(radius must stay under ~300 pixels)")

    @property
    def out_h(self) -> int:
        return self.spec.output_size[0]

    @property
    def out_w(self) -> int:
        return self.spec.output_size[1]

    @property
    def grid(self) -> tuple[int, int]:
        return self.spec.grid_size

    @property
    def upsamples(self) -> bool:
        """The blurred grid needs one more pass to reach the output size (map_stride > 1)."""
        return self.grid != (self.out_h, self.out_w)

    @property
    def radius(self) -> int:
        return self.spec.blur_radius

    @property
    def reflect(self) -> int:
        return int(blur_reflects(*self.grid, self.radius))

    @property
    def topk(self) -> int:
        return min(self.spec.topk, self.out_h * self.out_w)

    @cached_property
    def offsets(self) -> dict:
        """Byte offsets in the workspace: one FP32 distance map per scale, the row-blurred grid, the blurred grid
        (when it is upsampled afterwards), the score bits."""
        offsets, at = {"distance": []}, 0
        for _, h, w in self.scales:
            offsets["distance"].append(at)
            at += _aligned(self.batch * h * w * 4)
        grid_bytes = _aligned(self.batch * self.grid[0] * self.grid[1] * 4)
        offsets["rows"] = at
        at += grid_bytes
        offsets["blurred"] = at
        at += grid_bytes if self.upsamples else 0
        offsets["score_bits"] = at
        offsets["total"] = at + _aligned(self.batch * 4)
        return offsets

    @property
    def workspace_bytes(self) -> int:
        return self.offsets["total"]

    @property
    def row_shared_bytes(self) -> int:
        return 4 * ((2 * self.radius + 1) + ROW_TILE + 2 * self.radius)

    @property
    def col_shared_bytes(self) -> int:
        return 4 * ((2 * self.radius + 1) + COL_TILE * (COL_TILE + 2 * self.radius))

    def bytes_moved(self, feature_bytes: int) -> int:
        """What the op must move at least: T and S read once, the outputs written once."""
        features = sum(2 * self.batch * c * h * w * feature_bytes for c, h, w in self.scales)
        outputs = self.batch * self.out_h * self.out_w * (4 + (1 if self.spec.threshold is not None else 0)) + 4 * self.batch
        return features + outputs

    def scale_maps(self, workspace: int) -> ScaleMapsArg:
        arg = ScaleMapsArg()
        for i, (_, h, w) in enumerate(self.scales):
            arg.maps[i] = workspace + self.offsets["distance"][i]
            arg.height[i], arg.width[i] = h, w
            arg.weight[i] = self.spec.weights[i] if self.spec.weights else 1.0
        arg.count, arg.combine = len(self.scales), COMBINE_CODES[self.spec.combine]
        return arg


def _check(result):
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise EdgekdError(f"CUDA driver call failed: {err}")
    return values[0] if len(values) == 1 else values


def kernel_params(args: list) -> tuple[np.ndarray, list]:
    """cuLaunchKernel's `void **kernelParams`: one address per argument (ints are device pointers). The second
    value holds the argument objects, which must outlive the launch call."""
    keep = [a if isinstance(a, (ctypes._SimpleCData, ctypes.Structure)) else ctypes.c_uint64(a) for a in args]
    return np.array([ctypes.addressof(a) for a in keep], dtype=np.uint64), keep


class KernelSequence:
    """The op as a sequence of kernel launches; subclasses say how one kernel is launched (CUDA driver, or the
    host emulation in edgekd/fused/host_emulation.py that checks the same source and sequence without a GPU)."""

    def _launch(self, name: str, grid, block, shared: int, stream: int, args: list) -> None:
        raise NotImplementedError

    def launch(self, plan: LaunchPlan, teacher: list[int], student: list[int], half: list[bool], workspace: int,
               amap: int, scores: int, mask: int, stream: int) -> None:
        """Device pointers in, outputs written; nothing synchronises (everything is queued on `stream`)."""
        self.launch_stage1(plan, teacher, student, half, workspace, stream)
        self.launch_stage2(plan, workspace, amap, scores, mask, stream)

    def launch_stage1(self, plan: LaunchPlan, teacher: list[int], student: list[int], half: list[bool],
                      workspace: int, stream: int) -> None:
        """Per scale, T and S read once into an FP32 distance map in the workspace."""
        c_int, c_float = ctypes.c_int, ctypes.c_float
        for i, (channels, h, w) in enumerate(plan.scales):
            pixels = plan.batch * h * w
            name = "edgekd_cosine_distance_f16" if half[i] else "edgekd_cosine_distance_f32"
            self._launch(name, ((pixels + COS_BLOCK[0] - 1) // COS_BLOCK[0], 1, 1), (*COS_BLOCK, 1), 0, stream,
                         [teacher[i], student[i], workspace + plan.offsets["distance"][i], c_int(channels),
                          c_int(h * w), ctypes.c_longlong(pixels), c_float(plan.spec.eps)])

    def launch_stage2(self, plan: LaunchPlan, workspace: int, amap: int, scores: int, mask: int, stream: int) -> None:
        """Distance maps -> resize to the grid, combine, blur -> (upsample) -> anomaly map, score, mask."""
        c_int, c_float = ctypes.c_int, ctypes.c_float
        rows = workspace + plan.offsets["rows"]
        grid_h, grid_w = plan.grid
        blur = [c_int(plan.radius), c_float(plan.spec.grid_sigma), c_int(plan.reflect)]
        self._launch("edgekd_combine_blur_rows", ((grid_w + ROW_TILE - 1) // ROW_TILE, grid_h, plan.batch),
                     (ROW_TILE, 1, 1), plan.row_shared_bytes, stream,
                     [plan.scale_maps(workspace), rows, c_int(grid_h), c_int(grid_w), *blur])
        use_max = plan.spec.score == "max"
        bits = workspace + plan.offsets["score_bits"] if use_max else 0
        small = ((plan.batch + 255) // 256, 1, 1)
        if use_max:
            self._launch("edgekd_init_scores", small, (256, 1, 1), 0, stream, [bits, c_int(plan.batch)])
        threshold = c_float(plan.spec.threshold if plan.spec.threshold is not None else 0.0)
        # The column pass writes the outputs itself when the grid is the output; otherwise the blurred grid.
        blurred = workspace + plan.offsets["blurred"] if plan.upsamples else amap
        self._launch("edgekd_blur_cols_score", ((grid_w + COL_TILE - 1) // COL_TILE,
                                                (grid_h + COL_TILE - 1) // COL_TILE, plan.batch),
                     (COL_TILE, COL_ROWS, 1), plan.col_shared_bytes, stream,
                     [rows, blurred, 0 if plan.upsamples else mask, 0 if plan.upsamples else bits, c_int(grid_h),
                      c_int(grid_w), *blur, threshold])
        if plan.upsamples:
            self._launch("edgekd_upsample_score", ((plan.out_w + UP_BLOCK[0] - 1) // UP_BLOCK[0],
                                                   (plan.out_h + UP_BLOCK[1] - 1) // UP_BLOCK[1], plan.batch),
                         (*UP_BLOCK, 1), 0, stream, [blurred, c_int(grid_h), c_int(grid_w), amap, mask, bits,
                                                     c_int(plan.out_h), c_int(plan.out_w), threshold])
        if use_max:
            self._launch("edgekd_finish_max_scores", small, (256, 1, 1), 0, stream, [bits, scores, c_int(plan.batch)])
        else:
            self._launch("edgekd_topk_mean", (plan.batch, 1, 1), (TOPK_THREADS, 1, 1), 0, stream,
                         [amap, scores, c_int(plan.out_h * plan.out_w), c_int(plan.topk)])


class FeatureDiffKernels(KernelSequence):
    """The compiled module on one device, in the context that is current (the primary context otherwise)."""

    _cache: dict[int, "FeatureDiffKernels"] = {}
    _lock = threading.Lock()

    def __init__(self, device: int = 0):
        from cuda.bindings import driver
        self.driver = driver
        _check(driver.cuInit(0))
        handle = _check(driver.cuDeviceGet(device))
        if int(_check(driver.cuCtxGetCurrent())) == 0:
            _check(driver.cuCtxSetCurrent(_check(driver.cuDevicePrimaryCtxRetain(handle))))
        major = _check(driver.cuDeviceGetAttribute(driver.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, handle))
        minor = _check(driver.cuDeviceGetAttribute(driver.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, handle))
        self.arch = f"sm_{major}{minor}"
        self.module = _check(driver.cuModuleLoadData(compile_cubin(self.arch)))
        self.functions = {name: _check(driver.cuModuleGetFunction(self.module, name.encode())) for name in KERNELS}

    @classmethod
    def for_device(cls, device: int = 0) -> "FeatureDiffKernels":
        with cls._lock:
            if device not in cls._cache:
                cls._cache[device] = cls(device)
            return cls._cache[device]

    def _launch(self, name: str, grid, block, shared: int, stream: int, args: list) -> None:
        params, _keep = kernel_params(args)
        _check(self.driver.cuLaunchKernel(self.functions[name], *grid, *block, shared, stream, params.ctypes.data, 0))

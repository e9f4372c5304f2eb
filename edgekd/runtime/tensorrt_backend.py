"""The TensorRT backend: runs a serialized engine on an NVIDIA GPU with pinned host buffers, device buffers
and one CUDA stream; pycuda when installed (as on a Jetson), cuda-python otherwise; optional CUDA graphs.

Everything that can be checked without a GPU (sidecar, TensorRT version, GPU presence and model) is checked
before a TensorRT runtime exists: creating one without a GPU crashes the process.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekd.artifacts import check_engine_matches_sidecar, read_sidecar
from edgekd.sidecar import Sidecar
from edgekd.engine.gpu import gpu_description
from edgekd.engine.trt import load_tensorrt
from edgekd.errors import EdgekdError
from edgekd.runtime.base import Runtime


def engine_mismatches(info: Sidecar, trt, gpu: dict | None) -> list[tuple[str, str]]:
    """What keeps an engine (its sidecar `info`) from running with this TensorRT on this GPU, as (problem, fix)
    pairs; empty when it can run. The one place these comparisons live: running refuses on the first problem,
    `edgekd doctor` lists them all."""
    built = info.tensorrt or {}
    made_for = info.built_on_gpu or {}
    source = (info.onnx or {}).get("path", "MODEL.onnx")
    problems = []
    if built.get("version") and (built.get("flavour"), built["version"]) != (trt.flavour, trt.version):
        problems.append((f"was built with {built.get('flavour')} {built['version']} but this machine has {trt.label}",
                         f"rebuild it here with 'edgekd build-engine {source}'"))
    if gpu is None:
        problems.append(("needs an NVIDIA GPU and none is visible",
                         "run the .onnx with onnxruntime (edgekd predict/eval export/NAME.onnx) on this machine"))
    elif made_for and made_for.get("compute_capability") != gpu["compute_capability"]:
        problems.append((f"was built for {made_for.get('name')} (sm {made_for.get('compute_capability')}) but this GPU "
                         f"is {gpu['name']} (sm {gpu['compute_capability']})", "rebuild the engine on this machine"))
    return problems


def check_engine_compatible(path: Path, info: Sidecar) -> None:
    """Raise a clear error when the engine cannot run here; called before TensorRT deserialises anything."""
    check_engine_matches_sidecar(path, info)
    trt = load_tensorrt((info.tensorrt or {}).get("flavour"))
    problems = engine_mismatches(info, trt, gpu_description())
    if problems:
        problem, fix = problems[0]
        raise EdgekdError(f"engine {path} {problem}: {fix}")


class _CudaPyCuda:
    """Stream, pinned host and device memory through pycuda (the design card's choice; ships on Jetsons)."""

    def __init__(self):
        import pycuda.autoinit  # noqa: F401  (creates the context)
        import pycuda.driver as cuda
        self.cuda = cuda
        self.stream = cuda.Stream()

    def pinned(self, shape, dtype):
        return self.cuda.pagelocked_empty(shape, dtype)

    def device(self, nbytes):
        return self.cuda.mem_alloc(nbytes)

    def address(self, buffer):
        return int(buffer)

    def to_device(self, dst, src):
        self.cuda.memcpy_htod_async(dst, src, self.stream)

    def to_host(self, dst, src):
        self.cuda.memcpy_dtoh_async(dst, src, self.stream)

    @property
    def handle(self):
        return self.stream.handle

    def synchronize(self):
        self.stream.synchronize()


class _CudaPython:
    """The same through cuda-python (pip install cuda-python), for machines without pycuda."""

    def __init__(self):
        from cuda.bindings import runtime as cudart
        self.rt = cudart
        err, self.stream = cudart.cudaStreamCreate()
        self._check(err, "cudaStreamCreate")
        self._host = []

    def _check(self, err, what):
        if int(err) != 0:
            raise EdgekdError(f"CUDA call {what} failed with error {int(err)}")

    def pinned(self, shape, dtype):
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        err, ptr = self.rt.cudaMallocHost(nbytes)
        self._check(err, "cudaMallocHost")
        self._host.append(ptr)
        import ctypes
        return np.ctypeslib.as_array((ctypes.c_byte * nbytes).from_address(ptr)).view(dtype).reshape(shape)

    def device(self, nbytes):
        err, ptr = self.rt.cudaMalloc(nbytes)
        self._check(err, "cudaMalloc")
        return ptr

    def address(self, buffer):
        return int(buffer)

    def to_device(self, dst, src):
        self._check(self.rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes,
                                            self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream)[0], "memcpy")

    def to_host(self, dst, src):
        self._check(self.rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes,
                                            self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream)[0], "memcpy")

    @property
    def handle(self):
        return int(self.stream)

    def synchronize(self):
        self._check(self.rt.cudaStreamSynchronize(self.stream)[0], "cudaStreamSynchronize")

    def capture(self, enqueue) -> object | None:
        """Record what `enqueue` puts on the stream as a CUDA graph; None when capture is not possible."""
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal
        if int(self.rt.cudaStreamBeginCapture(self.stream, mode)[0]) != 0:
            return None
        enqueue()
        err, graph = self.rt.cudaStreamEndCapture(self.stream)
        if int(err) != 0:
            return None
        err, executable = self.rt.cudaGraphInstantiate(graph, 0)
        return executable if int(err) == 0 else None

    def launch(self, executable) -> None:
        self._check(self.rt.cudaGraphLaunch(executable, self.stream)[0], "cudaGraphLaunch")


def _cuda(prefer_graphs: bool = False):
    if not prefer_graphs:  # CUDA graphs go through cuda-python's graph API
        try:
            return _CudaPyCuda()
        except ImportError:
            pass
    try:
        return _CudaPython()
    except ImportError:
        raise EdgekdError("running TensorRT engines needs pycuda or cuda-python: pip install 'edgekd[cuda]'") from None


class _Engine:
    """One deserialised engine with buffers sized for the profile's largest batch."""

    def __init__(self, trt, runtime, cuda, path: Path, max_batch: int, cuda_graph: bool = False):
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise EdgekdError(f"TensorRT could not deserialise {path}: rebuild it with 'edgekd build-engine'")
        self.context = self.engine.create_execution_context()
        self.cuda, self.trt = cuda, trt
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in self.names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.host, self.device = {}, {}
        self.cuda_graph = cuda_graph and hasattr(cuda, "capture")
        self.graphs: dict[int, object] = {}  # batch size -> instantiated CUDA graph
        for name in self.names:
            shape = list(self.engine.get_tensor_shape(name))
            shape[0] = max_batch
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            self.host[name] = cuda.pinned(tuple(shape), dtype)
            self.device[name] = cuda.device(self.host[name].nbytes)
            self.context.set_tensor_address(name, cuda.address(self.device[name]))

    def run(self, feeds: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
        for name in self.inputs:
            np.copyto(self.host[name][:batch], feeds[name])
            self.context.set_input_shape(name, (batch, *self.host[name].shape[1:]))
        outputs = [n for n in self.names if n not in self.inputs]

        def enqueue():
            for name in self.inputs:
                self.cuda.to_device(self.device[name], self.host[name])
            if not self.context.execute_async_v3(self.cuda.handle):
                raise EdgekdError("TensorRT execution failed (see the TensorRT log above)")
            for name in outputs:
                self.cuda.to_host(self.host[name], self.device[name])

        if self.cuda_graph and batch in self.graphs:
            self.cuda.launch(self.graphs[batch])
        else:
            enqueue()  # the first run of a shape also lets TensorRT finish its lazy set-up before a capture
            if self.cuda_graph:
                self.cuda.synchronize()
                captured = self.cuda.capture(enqueue)
                if captured is not None:
                    self.graphs[batch] = captured
        self.cuda.synchronize()
        return {name: self.host[name][:batch].copy() for name in outputs}


class TensorRTRuntime(Runtime):
    backend = "tensorrt"

    def __init__(self, path: str | Path, device: str = "auto", cuda_graph: bool = False):
        path = Path(path)
        if not path.is_file():
            raise EdgekdError(f"engine {path} does not exist: build it with 'edgekd build-engine'")
        info = read_sidecar(path)
        super().__init__(info)
        check_engine_compatible(path, info)
        trt = load_tensorrt(info.tensorrt["flavour"]).module
        if info.fused_op == "plugin":  # the plan names our plugin; its creator must exist first
            from edgekd.fused.trt_plugin import register_plugin
            register_plugin(trt)
        self.cuda = _cuda(prefer_graphs=cuda_graph)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.max_batch = info.max_batch
        graphs = info.graphs
        engine = lambda p: _Engine(trt, self.runtime, self.cuda, p, self.max_batch, cuda_graph)
        self.teacher = engine(path.parent / graphs["teacher"]) if graphs else None
        self.student = engine(path.parent / graphs["student"] if graphs else path)

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        maps, scores = [], []
        for start in range(0, len(batch), self.max_batch):  # the engine's profile caps the batch
            chunk = batch[start:start + self.max_batch]
            feeds = {"images": chunk}
            if self.teacher is not None:
                feeds.update(self.teacher.run(feeds, len(chunk)))
            out = self.student.run(feeds, len(chunk))
            maps.append(out["anomaly_map"])
            scores.append(out["score"])
        return np.concatenate(maps), np.concatenate(scores)


def open_engine(path, device: str = "auto", cuda_graph: bool = False):
    """This runtime's row in edgekd/artifact_kinds.py opens an artifact through here."""
    return TensorRTRuntime(path, device, cuda_graph)

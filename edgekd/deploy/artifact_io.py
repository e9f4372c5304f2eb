"""What an exported artifact takes and gives, in the terms a serving config needs: names, dtypes, dims, batch.

Read from the artifact itself (the engine's network description in its sidecar, the ONNX graph's inputs and
outputs) and checked against the sidecar schema (edgekd/artifacts.py), so a config never names a tensor the
artifact does not have.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgekd.artifacts import (INPUT_NAME, OUTPUT_NAMES, check_artifact_pair, check_single_graph, onnx_metadata,
                              read_sidecar)
from edgekd.artifact_kinds import ArtifactKind, kind_by_suffix
from edgekd.errors import EdgekdError
from edgekd.sidecar import Sidecar

PLUGIN_LIBRARY = "libedgekd_plugin.so"
# TensorRT / ONNX element type names -> Triton's data types
TRITON_TYPES = {"FLOAT": "TYPE_FP32", "HALF": "TYPE_FP16", "UINT8": "TYPE_UINT8", "INT8": "TYPE_INT8",
                "INT32": "TYPE_INT32", "INT64": "TYPE_INT64", "BOOL": "TYPE_BOOL", "FLOAT16": "TYPE_FP16"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # TensorRT/ONNX element type name: FLOAT, UINT8, ...
    dims: tuple[int, ...]  # without the batch dimension

    @property
    def triton_type(self) -> str:
        if self.dtype not in TRITON_TYPES:
            raise EdgekdError(f"tensor {self.name} has element type {self.dtype}, which edgekd does not map to Triton")
        return TRITON_TYPES[self.dtype]


@dataclass(frozen=True)
class ArtifactIO:
    path: Path
    kind: ArtifactKind  # its row in edgekd/artifact_kinds.py
    info: Sidecar
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch: int | None  # the engine profile's largest batch; None for ONNX (dynamic)

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.info.input_size)


def _engine_io(path: Path, info: Sidecar) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...], int]:
    network, profile = info.network, info.profile
    if not network or not profile:
        raise EdgekdError(f"sidecar of {path} lacks the engine's network or profile: rebuild it with "
                          "'edgekd build-engine MODEL.onnx'")
    def spec(entry):
        return TensorSpec(entry["name"], entry["dtype"], tuple(int(d) for d in entry["shape"][1:]))
    return (tuple(spec(e) for e in network["inputs"]), tuple(spec(e) for e in network["outputs"]), info.max_batch)


def _onnx_io(path: Path, info: Sidecar) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    import onnx
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises several types for damaged files
        raise EdgekdError(f"{path} is not a readable ONNX file ({exc.__class__.__name__}): re-export it with "
                          "'edgekd export model.ckpt'") from None
    check_artifact_pair(path, info, onnx_metadata(path, model))  # the runtime's own checks, before any is written
    graph = model.graph
    h, w = info.input_size
    # The exporter's outputs: the map and mask at the input size, one score per image (edgekd/artifacts.py).
    known = {INPUT_NAME: (3, h, w), "anomaly_map": (1, h, w), "score": (), "mask": (1, h, w)}
    def spec(value):
        if value.name not in known:
            raise EdgekdError(f"{path} has a tensor '{value.name}' that edgekd did not export: re-export it")
        dtype = onnx.TensorProto.DataType.Name(value.type.tensor_type.elem_type)
        return TensorSpec(value.name, dtype, known[value.name])
    initializers = {i.name for i in graph.initializer}
    return (tuple(spec(v) for v in graph.input if v.name not in initializers), tuple(spec(v) for v in graph.output))


def check_loadable_by_full_tensorrt(io: ArtifactIO, consumer: str, plugin, plugin_where: str) -> None:
    """Stock consumers (Triton's tensorrt backend, DeepStream) load engines of full TensorRT only, and an engine whose
    scoring is the edgekd plugin layer needs the plugin library beside it. `consumer` finishes the first message."""
    if not io.kind.loads_without_gpu:  # an engine: the TensorRT flavour that built it matters
        flavour = (io.info.tensorrt or {}).get("flavour")
        if flavour != "tensorrt":
            raise EdgekdError(f"{io.path.name} was built by {flavour or 'an unknown TensorRT'}; {consumer}")
        if io.info.fused_op == "plugin" and plugin is None:
            raise EdgekdError(f"{io.path.name} computes its scoring in the edgekd plugin layer: pass --plugin "
                              f"{PLUGIN_LIBRARY} (built from engines/plugin/ {plugin_where})")
    if plugin is not None and not Path(plugin).is_file():
        raise EdgekdError(f"plugin library {plugin} does not exist: build it from engines/plugin/ (cmake) and pass "
                          "its path")


def _engine_tensors(path: Path, info: Sidecar):
    check_artifact_pair(path, info)  # the plan is the one its sidecar describes
    return _engine_io(path, info)


# How each kind that stock servers load tells its tensors: the graph itself, or the engine's sidecar.
TENSOR_READERS = {"onnx": lambda path, info: (*_onnx_io(path, info), None), "engine": _engine_tensors}


def read_artifact_io(artifact: str | Path) -> ArtifactIO:
    """The artifact's tensors; one clear line for a missing file, a split export or an unknown kind."""
    path = Path(artifact)
    if not path.is_file():
        raise EdgekdError(f"{path} does not exist: pass an .onnx from 'edgekd export' or an .engine from "
                          "'edgekd build-engine'")
    kind = kind_by_suffix(path)
    if kind is None or kind.triton_platform is None:
        raise EdgekdError(f"{path} is neither an .onnx nor an .engine/.plan file: serving configs are written for "
                          "exported artifacts")
    info = read_sidecar(path)
    check_single_graph(path, info)
    inputs, outputs, max_batch = TENSOR_READERS[kind.name](path, info)
    if (info.thresholds or {}).get("image") is None:
        raise EdgekdError(f"{path} has no image threshold: run 'edgekd calibrate {path} --source CLIP' first (a server "
                          "without one would call every frame normal)")
    names = [o.name for o in outputs]
    if [i.name for i in inputs] != [INPUT_NAME] or names[:2] != list(OUTPUT_NAMES[:2]):
        raise EdgekdError(f"{path} takes {[i.name for i in inputs]} and gives {names}; edgekd artifacts take "
                          f"'{INPUT_NAME}' and give {', '.join(OUTPUT_NAMES)}: re-export it")
    return ArtifactIO(path, kind, info, inputs, outputs, max_batch)

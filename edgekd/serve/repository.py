"""The model repository `edgekd serve` hands Triton: one Python-backend model per artifact, each running the
artifact through edgekd's own runtime (edgekd/serve/triton_model.py)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from edgekd.artifacts import check_artifact_pair, check_single_graph, read_info
from edgekd.calibration import check_thresholds
from edgekd.deploy.triton_parameters import check_model_name, model_parameters
from edgekd.errors import EdgekdError
from edgekd.artifact_kinds import kind_of

MODEL_SOURCE = Path(__file__).with_name("triton_model.py")


@dataclass(frozen=True)
class ServedModel:
    name: str
    artifact: Path
    backend: str  # torch, onnxruntime or tensorrt
    input_size: tuple[int, int]
    thresholds: dict
    model: str


def describe(artifact: str | Path, name: str | None = None, backend: str | None = None) -> ServedModel:
    """What the server needs to know about an artifact, read without loading it (engines need a GPU to load)."""
    path = Path(artifact).resolve()
    if not path.is_file():
        raise EdgekdError(f"{artifact} does not exist: pass a model.ckpt, an .onnx or an .engine")
    kind = kind_of(path, backend)
    info = read_info(path, kind)
    if not kind.loads_without_gpu:  # a GPU, the same TensorRT and the same GPU model: checked here, not in the server
        from edgekd.runtime.tensorrt_backend import check_engine_compatible
        check_engine_compatible(path, info)
    if kind.has_sidecar:
        check_single_graph(artifact, info)
        check_artifact_pair(path, info, thresholds=False)
    check_thresholds(info.thresholds, str(artifact))  # every kind, checkpoints too
    thresholds = info.thresholds or {}
    if thresholds.get("image") is None:
        raise EdgekdError(f"{artifact} has no image threshold: run 'edgekd calibrate {artifact} --source CLIP' first "
                          "(a server without one would call every frame normal)")
    name = check_model_name(name or path.name.split(".")[0], "model name")
    return ServedModel(name, path, kind.backend, tuple(info.input_size), thresholds, str(info.model))


def config_text(model: ServedModel, max_batch: int, instances: int, queue_delay_us: int, device: str) -> str:
    h, w = model.input_size
    params = model_parameters(model.model, model.input_size, model.thresholds, artifact=str(model.artifact),
                              backend=model.backend, device=device)
    lines = [f"name: \"{model.name}\"", "backend: \"python\"", f"max_batch_size: {max_batch}",
             "input [",
             f"  {{ name: \"frames\" data_type: TYPE_UINT8 dims: [ {h}, {w}, 3 ] optional: true }},",
             f"  {{ name: \"images\" data_type: TYPE_FP32 dims: [ 3, {h}, {w} ] optional: true }}",
             "]", "output [",
             f"  {{ name: \"anomaly_map\" data_type: TYPE_FP32 dims: [ 1, {h}, {w} ] }},",
             "  { name: \"score\" data_type: TYPE_FP32 dims: [ 1 ] },",
             f"  {{ name: \"mask\" data_type: TYPE_UINT8 dims: [ 1, {h}, {w} ] }}", "]",
             f"dynamic_batching {{ max_queue_delay_microseconds: {queue_delay_us} }}",
             # Python-backend instances are processes; the runtime inside each picks the GPU itself
             f"instance_group [ {{ count: {instances} kind: KIND_CPU }} ]"]
    lines += [f"parameters: {{ key: \"{k}\" value: {{ string_value: {json.dumps(v)} }} }}" for k, v in params.items()]
    return "\n".join(lines) + "\n"


def write_serving_repository(models: list[ServedModel], root: Path, max_batch: int, instances: int,
                             queue_delay_us: int = 1000, device: str = "auto") -> Path:
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise EdgekdError(f"two artifacts would both be served as {sorted(n for n in names if names.count(n) > 1)[0]!r}: "
                          "rename one (the model name is the file name up to its first dot)")
    for model in models:
        folder = root / model.name
        (folder / "1").mkdir(parents=True)
        shutil.copyfile(MODEL_SOURCE, folder / "1" / "model.py")
        (folder / "config.pbtxt").write_text(config_text(model, max_batch, instances, queue_delay_us, device))
    return root

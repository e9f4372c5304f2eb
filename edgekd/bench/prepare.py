"""The artifact each benchmark row runs: the checkpoint itself, an ONNX export or a TensorRT engine, made with
`edgekd export` / `build-engine` (their parity and accuracy gates included) and cached by checkpoint checksum."""

from __future__ import annotations

from pathlib import Path

from edgekd.artifacts import exported_stem, read_sidecar
from edgekd.backbones.weights import sha256_of
from edgekd.bench.plan import FAILED, SKIPPED, Model
from edgekd.engine.gpu import gpu_count
from edgekd.artifact_kinds import kind_for_backend
from edgekd.errors import EdgekdError


class NotRunnable(Exception):
    """This row cannot run here; the message is its one-line reason."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status = status


def _cached(path: Path, checkpoint_sha: str) -> bool:
    """An earlier export of the same checkpoint (its sidecar names the checkpoint's checksum)."""
    if not path.is_file():
        return False
    try:
        return read_sidecar(path).source_sha256 == checkpoint_sha
    except EdgekdError:
        return False


def onnx_for(model: Model, precision: str, int8_for: str, cache: Path, data: Path | None, category: str | None,
             max_drop: float) -> Path:
    from edgekd.export.exporter import export_checkpoint
    folder = cache / model.name
    target = folder / f"{exported_stem(model.name, precision, int8_for)}.onnx"
    if _cached(target, sha256_of(model.checkpoint)):
        return target
    try:
        return export_checkpoint(model.checkpoint, precision, out_dir=folder, name=model.name, data=data,
                                 category=category, max_drop=max_drop,
                                 int8_for=int8_for if precision == "int8" else "tensorrt").artifact
    except EdgekdError as exc:
        raise NotRunnable(FAILED, str(exc)) from None


def artifact_for(model: Model, backend: str, precision: str, max_batch: int, cache: Path, data: Path | None,
                 category: str | None, max_drop: float) -> Path:
    """The file a runtime opens for this (model, backend, precision), or NotRunnable with the reason."""
    if model.error is not None:
        raise NotRunnable(FAILED, model.error)
    kind = kind_for_backend(backend)
    if not kind.loads_without_gpu and gpu_count() == 0:
        raise NotRunnable(SKIPPED, f"{kind.description} runs on an NVIDIA GPU and none is visible here")
    if model.fixed is not None:
        return model.fixed
    return PRODUCERS[kind.name](model, precision, max_batch, cache, data, category, max_drop)


def _checkpoint_row(model: Model, precision: str, max_batch, cache, data, category, max_drop) -> Path:
    if precision != "fp32":  # the torch runtime runs a checkpoint as it was trained; a GPU row was mislabelled
        raise NotRunnable(SKIPPED, f"torch rows run the checkpoint in FP32; edgekd's {precision.upper()} runs in "
                                   "onnxruntime or TensorRT")
    return model.checkpoint


def _onnx_row(model: Model, precision: str, max_batch, cache, data, category, max_drop) -> Path:
    return onnx_for(model, precision, "onnxruntime", cache, data, category, max_drop)


def _engine_row(model: Model, precision: str, max_batch, cache, data, category, max_drop) -> Path:
    from edgekd.engine.builder import build_engine  # the ONNX comes from onnx_for, which exported it
    source = onnx_for(model, precision, "tensorrt", cache, data, category, max_drop)
    folder = cache / model.name / "engines"  # beside the ONNX, an engine's sidecar would replace the ONNX's
    engine = folder / f"{source.stem}.engine"
    if engine.is_file():
        info = read_sidecar(engine)
        if (info.onnx or {}).get("sha256") == sha256_of(source) and (info.max_batch or 0) >= max_batch:
            return engine
    try:
        return build_engine(source, folder, f"1,{max_batch},{max_batch}").engine
    except EdgekdError as exc:
        raise NotRunnable(FAILED, f"engine build failed: {exc}") from None


# How the benchmark makes each kind of artifact from a checkpoint (each row's export and build checks included).
PRODUCERS = {"checkpoint": _checkpoint_row, "onnx": _onnx_row, "engine": _engine_row}


def check_engine_batches(engine: Path, batches: list[int]) -> None:
    """An engine given as it is runs only the batch sizes of its optimisation profile."""
    largest = read_sidecar(engine).max_batch
    too_big = [b for b in batches if largest is not None and b > largest]
    if too_big:
        raise EdgekdError(f"--batch {max(too_big)} is above the largest batch of {engine}'s profile ({largest}): "
                          f"rebuild it with 'edgekd build-engine ... --batch 1,{max(too_big)},{max(too_big)}' or "
                          f"lower --batch")

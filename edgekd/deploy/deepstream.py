"""`edgekd export-deepstream`: an nvinfer config (and a note on the outputs) for a DeepStream pipeline.

nvinfer feeds the network y = net-scale-factor * (x - offsets[c]) from 8-bit pixels. edgekd graphs normalise
inside (the sidecar says so), so nvinfer only has to bring pixels to [0, 1]: net-scale-factor 1/255, offsets 0.
The map, score and mask are not detections or classes: nvinfer attaches them as tensor metadata
(network-type 100, output-tensor-meta 1) for a probe to read.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from edgekd.atomic import write_bytes_atomic
from edgekd.deploy.artifact_io import PLUGIN_LIBRARY, check_loadable_by_full_tensorrt, read_artifact_io
from edgekd.errors import EdgekdError
from edgekd.sidecar import Sidecar

NETWORK_MODES = {"fp32": 0, "int8": 1, "fp16": 2}
COLOR_FORMATS = {"RGB": 0, "BGR": 1}


def _scale_and_offsets(info: Sidecar) -> tuple[float, list[float]]:
    norm = info.input.normalization
    if norm.get("in_graph", False):
        return 1.0 / 255.0, [0.0, 0.0, 0.0]
    # Not in the graph: nvinfer must do it, and it has one scale for all channels.
    std = set(round(s, 6) for s in norm["std"])
    if len(std) != 1:
        raise EdgekdError(f"the model expects per-channel std {norm['std']} outside the graph, which nvinfer cannot "
                          "apply (one net-scale-factor): re-export it with edgekd (normalisation in the graph)")
    s = norm["std"][0]
    return 1.0 / (255.0 * s), [m * 255.0 for m in norm["mean"]]


NVINFER_MODEL_KEY = {"engine": "model-engine-file", "onnx": "onnx-file"}  # by artifact kind: what nvinfer loads


def nvinfer_config(artifact_name: str, info: Sidecar, kind: str, batch: int, output_names: list[str], gpu_id: int = 0,
                   plugin: bool = False) -> str:
    precision = info.precision
    if precision not in NETWORK_MODES:
        raise EdgekdError(f"precision {precision!r} has no nvinfer network-mode: export fp32, fp16 or int8")
    scale, offsets = _scale_and_offsets(info)
    h, w = info.input_size
    model_line = f"{NVINFER_MODEL_KEY[kind]}={artifact_name}"
    lines = ["# nvinfer config written by edgekd: the network takes RGB in [0, 1] (it normalises itself)",
             "[property]", f"gpu-id={gpu_id}", model_line, f"batch-size={batch}",
             f"network-mode={NETWORK_MODES[precision]}", f"net-scale-factor={scale:.10g}",
             f"offsets={';'.join(f'{o:.6g}' for o in offsets)}",
             f"model-color-format={COLOR_FORMATS[info.input.color]}",
             f"infer-dims=3;{h};{w}", "network-input-order=0", "maintain-aspect-ratio=0", "scaling-filter=1",
             f"output-blob-names={';'.join(output_names)}",
             "# not a detector or classifier: the outputs are attached as tensor metadata for a probe",
             "network-type=100", "output-tensor-meta=1", "process-mode=1", "gie-unique-id=1", "interval=0"]
    if plugin:  # loading the library registers the MultiScaleFeatureDiff creator before the engine is read
        lines.append(f"custom-lib-path={PLUGIN_LIBRARY}")
    return "\n".join(lines) + "\n"


def note_text(info: Sidecar, artifact_name: str, outputs: list[str]) -> str:
    thresholds = info.thresholds or {}
    h, w = info.input_size
    return "\n".join([
        f"# {artifact_name} in DeepStream", "",
        "`nvinfer_config.txt` is the `config-file-path` of an nvinfer element (primary mode, full frame). The",
        f"frame is scaled to {w}x{h} and converted to RGB by nvinfer; the network normalises it itself.", "",
        "Reading the outputs: with `output-tensor-meta=1`, every frame's `NvDsFrameMeta` carries an",
        "`NvDsInferTensorMeta` user meta (meta type NVDSINFER_TENSOR_OUTPUT_META). In a pad probe after nvinfer,",
        "find that user meta, then its output layers by name:", "",
        f"- `anomaly_map`: float32, 1x{h}x{w}, higher = more anomalous (same units as the thresholds below);",
        "- `score`: float32, one value: the image's anomaly score;",
        *([f"- `mask`: uint8, 1x{h}x{w}, 1 where the map exceeds the pixel threshold;"] if "mask" in outputs else []),
        "", f"The frame is a defect when score > {thresholds.get('image')} (image threshold); pixels of the map above "
        f"{thresholds.get('pixel')} (pixel threshold) are defect pixels. These come from the artifact's sidecar (copied "
        "here as edgekd.json); after `edgekd calibrate` on the line's own camera, write this folder again.", "",
        "The engine (if one is given) must come from the same TensorRT version and GPU model as the DeepStream "
        "installation; with an .onnx, nvinfer builds the engine itself on first start and caches it.", ""])


def write_deepstream(artifact: str | Path, out: str | Path, batch: int | None = None, overwrite: bool = False,
                     plugin: str | Path | None = None) -> Path:
    io = read_artifact_io(artifact)
    check_loadable_by_full_tensorrt(io, "DeepStream runs engines of full TensorRT: build it on the Jetson/desktop with "
                                    "'edgekd build-engine', or pass the .onnx and let nvinfer build it", plugin,
                                    "on that machine")
    if io.info.precision == "int8" and io.info.int8_for == "onnxruntime":  # only ONNX has this form
        raise EdgekdError(f"{io.path.name} is the onnxruntime form of INT8 (integer operators nvinfer's TensorRT does "
                          "not build the same way): export --precision int8 without --int8-for (the TensorRT form) for "
                          "DeepStream")
    batch = (io.max_batch or 1) if batch is None else batch
    if batch < 1 or (io.max_batch is not None and batch > io.max_batch):
        raise EdgekdError(f"--batch {batch} must be between 1 and the engine's profile maximum ({io.max_batch})")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EdgekdError(f"--out {out} is a file: name a folder for the DeepStream files")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise EdgekdError(f"{out} is not empty: pass --overwrite to write into it, or another --out")
    outputs = [o.name for o in io.outputs]
    try:
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(io.path, out / io.path.name)
        shutil.copyfile(io.path.with_suffix(".json"), out / "edgekd.json")
        if plugin is not None:
            shutil.copyfile(plugin, out / PLUGIN_LIBRARY)
        write_bytes_atomic(out / "nvinfer_config.txt",
                           nvinfer_config(io.path.name, io.info, io.kind.name, batch, outputs, plugin=plugin is not None).encode())
        write_bytes_atomic(out / "README.md", note_text(io.info, io.path.name, outputs).encode())
    except OSError as exc:
        raise EdgekdError(f"could not write {out} ({exc.strerror or exc}): check the path and the free space") from None
    return out / "nvinfer_config.txt"

"""Writing a detector as ONNX graph(s) (FP32, or FP16 networks with FP32 scoring) and stamping metadata."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import torch

from edgekd.artifacts import INPUT_NAME, OUTPUT_NAMES
from edgekd.export.graph_passes import fold_pads_into_convs
from edgekd.export.graphs import DetectorGraph, StudentGraph, TeacherGraph
from edgekd.fused.onnx_function import attach_function, fused_nodes, set_threshold
from edgekd.fused.spec import DOMAIN, OP_VERSION
from edgekd.models import AnomalyModel
from edgekd.models.base import FLOAT32_MODULES

OPSET = 17
FUSED_OP_FORMS = ("function", "off")  # the scoring as one edgekd node with a function body, or as stock ops


def _torch_export(module: torch.nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str]) -> None:
    dynamic = {name: {0: "batch"} for name in inputs + outputs}
    module.eval()  # the exporter restores the wrapper's mode afterwards: a fresh wrapper is in training mode
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated but exact and fast here
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=OPSET, input_names=inputs,
                          output_names=outputs, dynamic_axes=dynamic, do_constant_folding=True,
                          custom_opsets={DOMAIN: OP_VERSION})
    model = onnx.load(str(path))
    fold_pads_into_convs(model)  # leaves unused constant chains behind; runtimes drop them when loading
    if fused_nodes(model):
        attach_function(model)
    onnx.save(model, str(path))


def float32_nodes(graph: onnx.GraphProto) -> list[str]:
    """Nodes that stay FP32 under FP16/INT8: everything outside the teacher and student networks, i.e. the
    input normalisation, the feature-difference scoring, the global branches' statistics and the mask. Exported
    node names carry the module path (/<submodule>/.../<op>); top-level ops, the fused scoring node and the
    scoring modules (FLOAT32_MODULES) are not networks."""
    def in_network(name: str) -> bool:
        parts = name.split("/")
        return len(parts) >= 3 and parts[1] not in FLOAT32_MODULES
    return [n.name for n in graph.node if not in_network(n.name)]


def set_mask_threshold(path: Path, threshold: float) -> None:
    """Rewrite the mask threshold of the ONNX file at `path` (see write_mask_threshold)."""
    model = onnx.load(str(path))
    write_mask_threshold(model, threshold)
    onnx.save(model, str(path))


def write_mask_threshold(model: onnx.ModelProto, threshold: float) -> None:
    """Rewrite, in memory, the constant that the graph's `mask` output compares the anomaly map with (the fused
    node's `threshold` attribute, or the Greater constant of an unfused graph); no mask output, no change."""
    if set_threshold(model, threshold):
        return
    producers = {out: node for node in model.graph.node for out in node.output}
    greater = [n for n in model.graph.node if n.op_type == "Greater" and n.input[0] == "anomaly_map"]
    if not greater:
        return  # exported without a mask output
    name = greater[0].input[1]
    initializers = {i.name: i for i in model.graph.initializer}
    if name in initializers:  # constants become initializers after onnxruntime's pre-processing
        tensor = initializers[name]
    else:
        tensor = producers[name].attribute[0].t
    dtype = onnx.numpy_helper.to_array(tensor).dtype
    tensor.CopyFrom(onnx.numpy_helper.from_array(np.array(threshold, dtype=dtype), name=tensor.name))


def set_metadata(path: Path, fields: dict) -> None:
    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in fields.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.save(model, str(path))


def export_graphs(model: AnomalyModel, pixel_threshold: float | None, folder: Path, stem: str, layout: str,
                  fused_op: str = "function") -> dict[str, Path]:
    """Write the graph(s) of `model` in its current precision into `folder`; returns {'detector': path} or
    {'teacher': ..., 'student': ...}."""
    fused = fused_op == "function"
    model = model.cpu().eval()
    h, w = model.input_size
    dummy = torch.rand(1, 3, h, w)
    outputs = list(OUTPUT_NAMES if pixel_threshold is not None else OUTPUT_NAMES[:2])
    if layout == "single":
        path = folder / f"{stem}.onnx"
        _torch_export(DetectorGraph(model, pixel_threshold, fused), (dummy,), path, [INPUT_NAME], outputs)
        return {"detector": path}
    with torch.no_grad():
        feats = model.teacher_features(dummy)
    names = [f"teacher_{i}" for i in range(len(feats))]
    teacher, student = folder / f"{stem}.teacher.onnx", folder / f"{stem}.student.onnx"
    _torch_export(TeacherGraph(model), (dummy,), teacher, [INPUT_NAME], names)
    _torch_export(StudentGraph(model, pixel_threshold, fused), (dummy, *feats), student, [INPUT_NAME, *names], outputs)
    return {"teacher": teacher, "student": student}

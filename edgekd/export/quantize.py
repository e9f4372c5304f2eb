"""INT8 by explicit Q/DQ: onnxruntime's static quantiser with per-channel symmetric INT8 weights, calibrated on
normal training images. The input normalisation, the scoring, the patch memory's distances and the mask are
excluded, so they stay float; so are the stems where the exporter falls back to float stems. For onnxruntime the
patch memory's matrix product is INT8 (memory_product_nodes), written as one MatMulIntegerToFloat that adds the
memory's squared norms as its bias (_product_with_bias).

Two targets want different activations:
- tensorrt: symmetric INT8 activations (zero point 0), the only Q/DQ form TensorRT builds.
- onnxruntime: asymmetric UINT8 activations. onnxruntime's CPU kernels take uint8 x int8; with them every
  Conv+ReLU6 becomes one QLinearConv (the activation folds into the output range), where the TensorRT form leaves
  most convolutions in float between Dequantize/Quantize pairs and runs slower than FP32 on a CPU."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import onnx

from edgekd.errors import EdgekdError
from edgekd.export.onnx_export import float32_nodes
from edgekd.fused.onnx_function import attach_function, fused_nodes

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
INT8_TARGETS = ("tensorrt", "onnxruntime")
# Where the stem-to-stride-4 segment of each feature extractor runs: "int8" like the rest, "float", or "auto":
# INT8 first, and float only when that export fails parity or the accuracy gate (edgekd/export/exporter.py); that
# float try also keeps the patch memory's product float.
STEM_MODES = ("auto", "int8", "float")


def stem_nodes(graph: onnx.GraphProto) -> list[str]:
    """The first segment of each feature extractor (stem to the stride-4 tap): teacher and, where the student is a
    backbone copy (STFPM), the student's. It is a third of the MACs. In INT8 on the real-texture benchmark it costs
    at most a few tenths of a point (benchmarks/results/int8-stems/int8_stems.md); on the synthetic tile it once cost 15.6
    points of AUPRO, so the exporter keeps it in float wherever the gate says so."""
    return [n.name for n in graph.node if "/segments.0/" in n.name]


def memory_product_nodes(graph: onnx.GraphProto) -> list[str]:
    """The patch memory's matrix product (patches x memory items): a quarter of the RD INT8 graph's time while it
    stayed float. In INT8 onnxruntime runs it as one integer MatMul with float output (_unquantize_outputs; the
    distances around it stay float): the whole RD graph 1.23x at batch 1 and 1.37x at batch 8, 1.32x and 1.57x
    with _product_with_bias, no metric on the 9 real-texture categories more than 0.22 points from the float product
    (benchmarks/results/int8-forms/int8_forms.md). Only
    for the onnxruntime target: the TensorRT form is not measured (that needs a GPU), so it keeps the product
    float."""
    return [n.name for n in graph.node if n.op_type == "MatMul" and n.name.startswith("/patch_memory/")]


def _readers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes that read it."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return readers


def _unquantize_outputs(model: onnx.ModelProto, names: list[str]) -> int:
    """Drop the Quantize/Dequantize pair the quantizer puts after these nodes' outputs, so that their consumers read
    the float output. For the memory's product (patches x memory items, 2M values per image) onnxruntime then fuses
    the product and its dequantization into one integer MatMul with float output; with the pair it ran a quantized
    MatMul, then dequantized its whole output (1 ms per image). Returns how many pairs went."""
    graph, names = model.graph, set(names)
    outputs = {output for node in graph.node if node.name in names for output in node.output}
    readers = _readers(graph)
    quantizers = [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] in outputs]
    dropped, replaced = [], {}
    for quantizer in quantizers:
        dequantizers = readers.get(quantizer.output[0], [])
        if any(n.op_type != "DequantizeLinear" for n in dequantizers):
            continue  # something else reads the quantized tensor: leave the pair
        dropped += [quantizer, *dequantizers]
        replaced.update({d.output[0]: quantizer.input[0] for d in dequantizers})
    for node in dropped:
        graph.node.remove(node)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in replaced:
                node.input[i] = replaced[name]
    used = {name for node in graph.node for name in node.input}
    for initializer in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(initializer)
    return sum(node.op_type == "QuantizeLinear" for node in dropped)


def _product_with_bias(model: onnx.ModelProto, names: list[str]) -> int:
    """Write each of these MatMuls, when both its inputs are dequantized and its only reader adds a constant vector,
    as onnxruntime's MatMulIntegerToFloat with that vector as its bias: the integer product, its scaling and the add
    in one pass over the output. onnxruntime's own fusion leaves the add out, a second pass over the memory
    product's 2M values per image (0.39 ms of RD INT8's 8 ms). Returns how many it wrote."""
    graph, names = model.graph, set(names)
    producers = {output: node for node in graph.node for output in node.output}
    readers = _readers(graph)
    vectors = {i.name: i for i in graph.initializer if len(i.dims) == 1}
    written = 0
    for product in [n for n in graph.node if n.name in names and n.op_type == "MatMul"]:
        dequantized = [producers.get(name) for name in product.input]
        add = readers.get(product.output[0], [])
        if len(add) != 1 or add[0].op_type != "Add" or any(d is None or d.op_type != "DequantizeLinear"
                                                           or len(d.input) != 3 for d in dequantized):
            continue
        add = add[0]
        bias = [name for name in add.input if name != product.output[0]]
        if len(bias) != 1 or bias[0] not in vectors:
            continue
        (a, a_scale, a_zero), (b, b_scale, b_zero) = (list(d.input) for d in dequantized)
        fused = onnx.helper.make_node("MatMulIntegerToFloat", [a, b, a_scale, b_scale, a_zero, b_zero, bias[0]],
                                      list(add.output), name=product.name, domain="com.microsoft")
        graph.node.insert(list(graph.node).index(add), fused)
        for node in (product, add):
            graph.node.remove(node)
        for node in dequantized:  # a dequantized input that something else reads stays
            if readers[node.output[0]] == [product]:
                graph.node.remove(node)
        written += 1
    if written and not any(op.domain == "com.microsoft" for op in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return written


def quantize_int8(fp32_path: Path, out_path: Path, calibration: dict[str, np.ndarray], method: str = "minmax",
                  batch_size: int = 8, target: str = "tensorrt", float_stems: bool = False) -> Path:
    """calibration: graph input name -> (N, ...) float32 arrays from normal images (e.g. {'images': ...}).
    float_stems: the exporter's cautious form after a failed check; it keeps the memory's product float too."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if target not in INT8_TARGETS:
        raise EdgekdError(f"INT8 target '{target}' is unknown: use one of {', '.join(INT8_TARGETS)}")
    if method not in CALIBRATION_METHODS:
        raise EdgekdError(f"calibration method '{method}' is unknown: use one of {', '.join(CALIBRATION_METHODS)}")
    count = min(len(v) for v in calibration.values())
    if count == 0:
        raise EdgekdError("INT8 calibration needs normal images: the training split is empty")

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.start = 0

        def get_next(self):
            if self.start >= count:
                return None
            batch = {name: values[self.start:self.start + batch_size] for name, values in calibration.items()}
            self.start += batch_size
            return batch

    prepared = out_path.with_name(out_path.stem + ".prep.onnx")
    root, level = logging.getLogger(), logging.getLogger().level
    try:
        # onnxruntime's quantizer logs on the root logger ("Axis 1 is out-of-range for weight ...": 1-D weights
        # it quantizes per tensor instead); those lines are not the user's to act on.
        root.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # no ORT graph optimisation here: it would inline the fused scoring op (edgekd::MultiScaleFeatureDiff)
            quant_pre_process(str(fp32_path), str(prepared), skip_optimization=True, skip_symbolic_shape=True)
            graph = onnx.load(str(prepared)).graph
            keep_float = float32_nodes(graph) + (stem_nodes(graph) if float_stems else [])
            for_tensorrt = target == "tensorrt"
            integer_memory = not for_tensorrt and not float_stems  # memory_product_nodes says why
            if integer_memory:
                integer_products = set(memory_product_nodes(graph))
                keep_float = [name for name in keep_float if name not in integer_products]
            quantize_static(str(prepared), str(out_path), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QInt8 if for_tensorrt else QuantType.QUInt8,
                            weight_type=QuantType.QInt8, nodes_to_exclude=keep_float,
                            calibrate_method={"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                                              "entropy": CalibrationMethod.Entropy}[method],
                            extra_options={"ActivationSymmetric": for_tensorrt, "WeightSymmetric": True,
                                           "QuantizeBias": False})  # TensorRT takes no INT32 bias Q/DQ
    finally:
        root.setLevel(level)
        prepared.unlink(missing_ok=True)
    model = onnx.load(str(out_path))
    products = memory_product_nodes(model.graph) if integer_memory else []
    if products and _unquantize_outputs(model, products):
        _product_with_bias(model, products)
        onnx.save(model, str(out_path))
    if fused_nodes(model):  # the features now come from DequantizeLinear: the body's channel sums change form
        onnx.save(attach_function(model), str(out_path))
    return out_path

"""Feature tensors and op graphs shared by the fused-op tests (tests/test_fused_op*.py)."""

import numpy as np
import onnx
import torch

from edgekd.fused.onnx_function import op_model
from edgekd.fused.spec import FusedOpSpec


def export_op(spec: FusedOpSpec, features: list[torch.Tensor]) -> onnx.ModelProto:
    return op_model(spec, features)


def make_features(shapes, dtype, batch=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    teacher = [torch.randn(batch, *s, generator=generator).to(dtype) for s in shapes]
    # students close to the teacher, as trained ones are, plus a few pixels far off
    student = [(t.float() + 0.3 * torch.randn(t.shape, generator=generator)) for t in teacher]
    for s in student:
        h, w = s.shape[-2:]
        s[:, :, : max(1, h // 3), : max(1, w // 3)] = torch.randn(s[:, :, : max(1, h // 3), : max(1, w // 3)].shape,
                                                                  generator=generator)
    return teacher + [s.to(dtype) for s in student]


def fed_by(model: onnx.ModelProto, features: list[torch.Tensor], producer: str,
            zero_point: np.ndarray = np.array(128, np.uint8)) -> onnx.ModelProto:
    """The op model with each feature made by a `producer` node from a new input `<name>_raw` of fixed channels:
    'Relu' (a float op) or 'DequantizeLinear' (after a QuantizeLinear, as in an INT8 graph: onnxruntime's UINT8
    form by default, TensorRT's with an INT8 zero point of 0); the body re-attached."""
    graph = model.graph
    for value, feature in zip(graph.input, features):
        name = value.name
        value.name = f"{name}_raw"
        channels = value.type.tensor_type.shape.dim[1]
        channels.ClearField("dim_param")
        channels.dim_value = int(feature.shape[1])
        if producer == "Relu":
            graph.node.insert(0, onnx.helper.make_node("Relu", [value.name], [name]))
            continue
        graph.initializer.extend([onnx.numpy_helper.from_array(np.array(0.02, np.float32), f"{name}_scale"),
                                  onnx.numpy_helper.from_array(zero_point, f"{name}_zero")])
        graph.node.insert(0, onnx.helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_scale", f"{name}_zero"],
                                                   [name]))
        graph.node.insert(0, onnx.helper.make_node("QuantizeLinear", [value.name, f"{name}_scale", f"{name}_zero"],
                                                   [f"{name}_q"]))
    from edgekd.fused.onnx_function import attach_function
    return attach_function(model)

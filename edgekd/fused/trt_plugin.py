"""`MultiScaleFeatureDiff` as a TensorRT IPluginV3 plugin written in Python; enqueue launches the fused CUDA kernels.

Registered from Python (`register_plugin`), for TensorRT 10.x/11.x and TensorRT-RTX, which share the IPluginV3
Python interfaces. The ONNX parser imports the edgekd node as this plugin instead of its function body when the
creator is registered (the node's `plugin_namespace` attribute asks for it; edgekd/engine/builder.py also sets
ENABLE_PLUGIN_OVERRIDE for parsers that predate that attribute).
A plan that contains the plugin needs it registered again before deserialisation (the TensorRT runtime does).
"""

from __future__ import annotations

import numpy as np

from edgekd.fused.onnx_function import PLUGIN_NAMESPACE as NAMESPACE
from edgekd.fused.spec import OP_NAME, OP_VERSION, FusedOpSpec

_FIELD_TYPES = {"output_size": "INT32", "combine": "CHAR", "weights": "FLOAT32", "sigma": "FLOAT32", "score": "CHAR",
                "topk": "INT32", "eps": "FLOAT32", "threshold": "FLOAT32", "map_stride": "INT32"}
_registered: dict[int, object] = {}  # id(trt module) -> creator, kept alive as long as the process


def spec_from_fields(fields) -> FusedOpSpec:
    """PluginFieldCollection (from the parser: the node's attributes) -> the op's spec."""
    values = {}
    for field in fields:
        data = np.asarray(field.data)
        if field.name in ("combine", "score"):
            values[field.name] = bytes(data.astype(np.uint8).tobytes()).rstrip(b"\0").decode()
        elif field.name in ("output_size", "weights"):
            values[field.name] = data.reshape(-1).tolist()
        elif data.size and field.name != "plugin_namespace":
            values[field.name] = data.reshape(-1)[0].item()
    return FusedOpSpec.from_attributes(values)


def fields_of(trt, spec: FusedOpSpec, keep: list):
    """The spec as plugin fields. PluginField only points at its data: the arrays go into `keep`, which the caller
    holds for as long as TensorRT may read the fields."""
    kinds = trt.PluginFieldType
    fields = []
    for name, value in spec.attributes().items():
        kind = _FIELD_TYPES[name]
        if kind == "CHAR":
            data = np.frombuffer(value.encode() + b"\0", dtype=np.int8)
        else:
            data = np.asarray(value if isinstance(value, list) else [value],
                              dtype=np.int32 if kind == "INT32" else np.float32)
        keep.append(data)
        fields.append(trt.PluginField(name, data, getattr(kinds, kind)))
    return trt.PluginFieldCollection(fields)


def plugin_classes(trt):
    """The plugin and creator classes for one TensorRT Python module (tensorrt or tensorrt_rtx)."""

    class MultiScaleFeatureDiffPlugin(trt.IPluginV3, trt.IPluginV3OneCore, trt.IPluginV3OneBuild,
                                      trt.IPluginV3OneRuntime):
        def __init__(self, spec: FusedOpSpec | None = None):
            trt.IPluginV3.__init__(self)
            trt.IPluginV3OneCore.__init__(self)
            trt.IPluginV3OneBuild.__init__(self)
            trt.IPluginV3OneRuntime.__init__(self)
            self.plugin_name, self.plugin_namespace, self.plugin_version = OP_NAME, NAMESPACE, str(OP_VERSION)
            self.spec = spec
            self.num_outputs = spec.num_outputs if spec else 2
            self.timing_cache_id = ""

        # -- core / build ------------------------------------------------------------------------------------
        def get_capability_interface(self, kind):
            return self

        def get_output_data_types(self, input_types):
            return [trt.DataType.FLOAT, trt.DataType.FLOAT, trt.DataType.UINT8][:self.num_outputs]

        def get_output_shapes(self, inputs, shape_inputs, builder):
            batch = inputs[0][0]
            height, width = self.spec.output_size
            amap = trt.DimsExprs([batch, builder.constant(1), builder.constant(height), builder.constant(width)])
            return [amap, trt.DimsExprs([batch]), amap][:self.num_outputs]

        def supports_format_combination(self, pos, in_out, num_inputs):
            desc = in_out[pos].desc
            if desc.format != trt.TensorFormat.LINEAR:
                return False
            if pos < num_inputs:  # T0..Tk-1 FP32 or FP16; each S_i in its T_i's type
                scales = num_inputs // 2
                if pos >= scales:
                    return desc.type == in_out[pos - scales].desc.type
                return desc.type in (trt.DataType.FLOAT, trt.DataType.HALF)
            return desc.type == (trt.DataType.UINT8 if pos - num_inputs == 2 else trt.DataType.FLOAT)

        def configure_plugin(self, inputs, outputs):
            pass

        def get_workspace_size(self, inputs, outputs):
            return self._plan([tuple(d.max) for d in inputs]).workspace_bytes

        def get_valid_tactics(self):
            return []

        def set_tactic(self, tactic):
            pass

        # -- runtime -------------------------------------------------------------------------------------------
        def on_shape_change(self, inputs, outputs):
            pass

        def enqueue(self, input_desc, output_desc, inputs, outputs, workspace, stream):
            from edgekd.fused.cuda_kernels import FeatureDiffKernels
            plan = self._plan([tuple(d.dims) for d in input_desc])
            scales = len(plan.scales)
            half = [input_desc[i].type == trt.DataType.HALF for i in range(scales)]
            FeatureDiffKernels.for_device().launch(plan, list(inputs[:scales]), list(inputs[scales:]), half,
                                                   int(workspace), int(outputs[0]), int(outputs[1]),
                                                   int(outputs[2]) if self.num_outputs == 3 else 0, int(stream))

        def get_fields_to_serialize(self):
            self._field_data = []
            return fields_of(trt, self.spec, self._field_data)

        def attach_to_context(self, context):
            return self.clone()

        def clone(self):
            return MultiScaleFeatureDiffPlugin(self.spec)

        def _plan(self, shapes):
            from edgekd.fused.cuda_kernels import LaunchPlan
            scales = len(shapes) // 2
            return LaunchPlan(self.spec, int(shapes[0][0]), tuple(tuple(int(v) for v in s[1:4]) for s in shapes[:scales]))

    class MultiScaleFeatureDiffCreator(trt.IPluginCreatorV3One):
        def __init__(self):
            trt.IPluginCreatorV3One.__init__(self)
            self.name, self.plugin_namespace, self.plugin_version = OP_NAME, NAMESPACE, str(OP_VERSION)
            self.field_names = trt.PluginFieldCollection(
                [trt.PluginField(name, np.array([]), getattr(trt.PluginFieldType, kind))
                 for name, kind in _FIELD_TYPES.items()])

        def create_plugin(self, name, fields, phase):
            return MultiScaleFeatureDiffPlugin(spec_from_fields(fields))

    return MultiScaleFeatureDiffPlugin, MultiScaleFeatureDiffCreator


def register_plugin(trt) -> object:
    """Register the creator with `trt`'s plugin registry once per process; returns it."""
    key = id(trt)
    if key not in _registered:
        _, creator_class = plugin_classes(trt)
        creator = creator_class()
        trt.get_plugin_registry().register_creator(creator, NAMESPACE)
        _registered[key] = creator
    return _registered[key]

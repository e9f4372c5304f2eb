"""edgekd::MultiScaleFeatureDiff in TensorRT: which form the parser imports (the function body or our plugin), the
Python plugin's negotiation, the C++ plugin's attributes, and the GPU verification's checks (the op itself:
tests/test_fused_op.py)."""

import numpy as np
import onnx
import pytest
import torch

from edgekd.fused.onnx_function import fused_nodes, op_model
from edgekd.fused.cuda_kernels import LaunchPlan, kernel_source_path
from edgekd.fused.spec import FusedOpSpec
from fused_op_helpers import export_op, fed_by, make_features

ort = pytest.importorskip("onnxruntime")


# -- TensorRT: which form the parser imports ---------------------------------------------------------------------
def _rtx():
    return pytest.importorskip("tensorrt_rtx")


def _parse(trt, model: onnx.ModelProto, override: bool):
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if override:
        parser.set_flag(trt.OnnxParserFlag.ENABLE_PLUGIN_OVERRIDE)
    ok = parser.parse(model.SerializeToString())
    return ok, builder, network


def test_parser_imports_function_body_without_override_and_engine_builds():
    trt = _rtx()
    spec = FusedOpSpec((32, 32), threshold=0.5)
    shapes = [(4, 8, 8), (6, 4, 4)]
    model = export_op(spec, make_features(shapes, torch.float32))
    ok, builder, network = _parse(trt, model, override=False)
    assert ok
    kinds = {network.get_layer(i).type for i in range(network.num_layers)}
    assert trt.LayerType.PLUGIN_V3 not in kinds and trt.LayerType.REDUCE in kinds  # the body's stock layers
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = list(shapes[i % len(shapes)])
        profile.set_shape(tensor.name, [1] + dims, [2] + dims, [4] + dims)
    config.add_optimization_profile(profile)
    assert builder.build_serialized_network(network, config) is not None


@pytest.mark.parametrize("producer", ["Relu", "DequantizeLinear"])
def test_parser_builds_the_body_in_its_onnxruntime_forms(producer):
    """The forms the body takes for onnxruntime (1x1 convolutions of ones, Pow, the phase upsample with edge
    padding and DepthToSpace) are stock layers TensorRT's parser imports and builds."""
    trt = _rtx()
    spec = FusedOpSpec((32, 32), threshold=0.5, map_stride=4)
    shapes = [(4, 8, 8), (6, 4, 4)]
    features = make_features(shapes, torch.float32)
    model = fed_by(op_model(spec, features), features, producer, np.array(0, np.int8))
    ops = {n.op_type for n in model.functions[0].node}
    assert "DepthToSpace" in ops and ("Pow" in ops) == (producer == "DequantizeLinear")
    ok, builder, network = _parse(trt, model, override=False)
    assert ok
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        dims = list(shapes[i % len(shapes)])
        profile.set_shape(network.get_input(i).name, [1] + dims, [2] + dims, [4] + dims)
    config.add_optimization_profile(profile)
    assert builder.build_serialized_network(network, config) is not None


def test_parser_hands_the_node_to_a_registered_plugin():
    """With our creator registered, the parser asks it for the local function's node, with the node's attributes
    as plugin fields: because the node carries `plugin_namespace`, or (a node without it) because of the parser
    flag ENABLE_PLUGIN_OVERRIDE; otherwise the function body wins even with the plugin registered. The probe
    creator declines after recording the fields: TensorRT-RTX 1.7 aborts the process once a Python-defined plugin
    object is handed back (NVIDIA's own Python plugin sample too), so the full build is left to TensorRT 10/11."""
    trt = _rtx()
    from edgekd.fused.trt_plugin import fields_of, plugin_classes, spec_from_fields
    _, creator_class = plugin_classes(trt)
    received = []

    class Probe(creator_class):
        def create_plugin(self, name, fields, phase):
            received.append(spec_from_fields(fields))
            return None

    spec = FusedOpSpec((40, 24), combine="weighted", weights=(0.25, 0.75), sigma=1.5, score="topk", topk=9,
                       threshold=0.3)
    model = export_op(spec, make_features([(4, 8, 8), (6, 4, 4)], torch.float32))
    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    node = fused_nodes(bare)[0]
    kept = [a for a in node.attribute if a.name != "plugin_namespace"]
    del node.attribute[:]
    node.attribute.extend(kept)
    registry = trt.get_plugin_registry()
    probe = Probe()
    registry.register_creator(probe, "")
    try:
        ok, _, _ = _parse(trt, model, override=False)
        assert not ok and received == [spec]  # the node's plugin_namespace picks the registered plugin
        ok, _, _ = _parse(trt, bare, override=False)
        assert ok and len(received) == 1  # no attribute, no flag: the function body
        ok, _, _ = _parse(trt, bare, override=True)
        assert not ok and received == [spec, spec]  # the flag picks the plugin
    finally:
        registry.deregister_creator(probe)
    ok, _, network = _parse(trt, model, override=True)  # nothing registered: the body, whatever asks for a plugin
    assert ok and network.num_layers > 10
    keep = []
    assert spec_from_fields(fields_of(trt, spec, keep)) == spec  # what the plugin serialises into a plan reads back


def test_gpu_verification_check_rejects_nan_and_drift():
    """benchmarks/verify_fused_kernels.py must fail a kernel that leaves a NaN or drifts from the float64 reference."""
    import importlib.util
    from pathlib import Path
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "verify_fused_kernels.py"
    module_spec = importlib.util.spec_from_file_location("verify_fused_kernels", script)
    verify = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(verify)
    spec = FusedOpSpec((24, 20), threshold=0.8)
    features = verify.random_features([(5, 7, 5), (3, 4, 4)], 2, torch.float32, seed=0)
    reference = spec.reference()(*features)
    exact = [r.numpy() for r in reference]
    assert verify.check(spec, exact, features)["passed"] and (exact[0] > 0.81).any()
    poisoned = exact[0].copy()
    poisoned[1, 0, 3, 4] = np.nan
    assert not verify.check(spec, [poisoned, exact[1], exact[2]], features)["passed"]
    assert not verify.check(spec, [exact[0] * 1.001, exact[1], exact[2]], features)["passed"]
    flipped = exact[2].copy()
    flipped[exact[0] > 0.8 + 0.01] = 0  # pixels clearly above the threshold reported as normal
    assert not verify.check(spec, [exact[0], exact[1], flipped], features)["passed"]


def test_python_plugin_negotiates_types_formats_and_workspace():
    """The build-time answers of the Python IPluginV3, asked directly with TensorRT's own descriptor objects."""
    trt = _rtx()
    from edgekd.fused.trt_plugin import fields_of, plugin_classes, spec_from_fields
    _, creator_class = plugin_classes(trt)
    spec = FusedOpSpec((256, 256), threshold=0.6)
    keep = []
    plugin = creator_class().create_plugin("p", fields_of(trt, spec, keep), trt.TensorRTPhase.BUILD)
    assert plugin.spec == spec and plugin.num_outputs == 3
    assert plugin.get_output_data_types([trt.DataType.HALF] * 6) == [trt.DataType.FLOAT, trt.DataType.FLOAT,
                                                                     trt.DataType.UINT8]

    def desc(dtype, dims=None):
        d = trt.DynamicPluginTensorDesc()
        d.desc.type, d.desc.format = dtype, trt.TensorFormat.LINEAR
        if dims:
            d.max = trt.Dims(dims)
        return d

    shapes = [(8, 24, 64, 64), (8, 40, 32, 32), (8, 112, 16, 16)]
    half_inputs = [desc(trt.DataType.HALF, s) for s in shapes] * 2
    outputs = [desc(trt.DataType.FLOAT), desc(trt.DataType.FLOAT), desc(trt.DataType.UINT8)]
    io = half_inputs + outputs
    assert all(plugin.supports_format_combination(pos, io, 6) for pos in range(9))
    mixed = half_inputs[:3] + [desc(trt.DataType.FLOAT, s) for s in shapes] + outputs
    assert not plugin.supports_format_combination(3, mixed, 6)  # S must match its T
    assert not plugin.supports_format_combination(8, half_inputs + outputs[:2] + [desc(trt.DataType.FLOAT)], 6)
    assert not plugin.supports_format_combination(0, [desc(trt.DataType.INT8, shapes[0])] + io[1:], 6)
    assert plugin.get_workspace_size(half_inputs, outputs) == LaunchPlan(spec, 8, tuple(s[1:] for s in shapes)).workspace_bytes
    clone = plugin.clone()
    assert spec_from_fields(clone.get_fields_to_serialize()) == spec


def test_cpp_plugin_declares_every_attribute_with_the_python_plugins_type():
    """engines/plugin/ cannot be compiled here (no TensorRT headers): at least its creator's field list must name
    every attribute of the op with the type the Python plugin uses, so one .onnx means the same to both."""
    import re
    from edgekd.fused.trt_plugin import _FIELD_TYPES
    source = (kernel_source_path().parents[1] / "plugin" / "MultiScaleFeatureDiffPlugin.cu").read_text()
    declared = dict(re.findall(r'PluginField\("(\w+)", nullptr, PluginFieldType::k(\w+),', source))
    spec = FusedOpSpec((64, 64), combine="weighted", weights=(1.0, 2.0), threshold=0.5, map_stride=4)
    assert set(spec.attributes()) == set(_FIELD_TYPES) == set(declared)
    assert declared == _FIELD_TYPES
    for name in _FIELD_TYPES:  # read back by the creator and written out when the engine is serialised
        assert f'name == "{name}"' in source and f'emplace_back("{name}"' in source

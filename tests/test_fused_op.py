"""edgekd::MultiScaleFeatureDiff: the ONNX function body against the reference scoring module in every mode, the
CUDA source compiling for the CI architectures, and the launch arithmetic (TensorRT's side:
tests/test_fused_op_tensorrt.py)."""

import shutil
import subprocess

import numpy as np
import onnx
import pytest
import torch

from edgekd.fused.cuda_kernels import LaunchPlan, compile_cubin, kernel_source_path
from edgekd.fused.onnx_function import fused_nodes, node_spec, op_model, set_threshold
from edgekd.fused.spec import FusedOpSpec
from fused_op_helpers import export_op, fed_by, make_features

ort = pytest.importorskip("onnxruntime")

# (spec, per-scale (C, h, w), feature dtype): every combine and score mode, blur on/off, odd sizes, FP16 and FP32
CASES = [
    (FusedOpSpec((64, 64), threshold=0.4), [(24, 16, 16), (40, 8, 8), (112, 4, 4)], torch.float32),
    (FusedOpSpec((50, 37), combine="mul", sigma=1.5, score="topk", topk=17), [(7, 13, 9), (5, 7, 5)], torch.float16),
    (FusedOpSpec((33, 33), combine="max", sigma=0.0, threshold=0.9), [(3, 33, 33), (9, 5, 3)], torch.float32),
    (FusedOpSpec((40, 24), combine="weighted", weights=(0.25, 1.5, 0.5), sigma=2.0, score="topk", topk=5000),
     [(6, 10, 6), (4, 20, 12), (8, 5, 3)], torch.float16),
    (FusedOpSpec((6, 6), sigma=4.0, score="max"), [(5, 3, 3)], torch.float32),  # map smaller than the radius
    # the scoring grid (map_stride > 1): combined and blurred on the grid, upsampled once
    (FusedOpSpec((64, 64), threshold=0.4, map_stride=4), [(24, 16, 16), (40, 8, 8), (112, 4, 4)], torch.float32),
    (FusedOpSpec((96, 64), combine="weighted", weights=(1.0, 0.5), sigma=6.0, score="topk", topk=300, threshold=0.5,
                 map_stride=8), [(6, 24, 16), (4, 12, 8)], torch.float16),
    (FusedOpSpec((40, 24), combine="max", sigma=2.0, map_stride=2), [(3, 10, 6), (5, 20, 12)], torch.float32),
    (FusedOpSpec((32, 32), sigma=4.0, map_stride=16), [(4, 8, 8)], torch.float32),  # the upsample alone: no blur
    (FusedOpSpec((24, 24), sigma=6.0, map_stride=8), [(4, 8, 8)], torch.float32),  # 3x3 grid, radius 3: clamped
]


def _run(model: onnx.ModelProto, features: list[torch.Tensor]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {n: f.numpy() for n, f in zip(names, features)})


@pytest.mark.parametrize("spec,shapes,dtype", CASES)
def test_function_body_matches_reference(spec, shapes, dtype):
    features = make_features(shapes, dtype)
    model = export_op(spec, features)
    onnx.checker.check_model(model)
    assert [(n.domain, n.op_type) for n in model.graph.node] == [("edgekd", "MultiScaleFeatureDiff")]
    assert node_spec(fused_nodes(model)[0]) == spec  # the attributes carry the whole meaning
    got = _run(model, features)
    expected = spec.reference()(*features)
    assert len(got) == spec.num_outputs
    assert got[0].shape == (3, 1, *spec.output_size) and got[0].dtype == np.float32
    span = float(expected[0].max() - expected[0].min()) or 1.0
    assert np.abs(got[0] - expected[0].numpy()).max() <= 1e-5 * span + 1e-6
    assert np.allclose(got[1], expected[1].numpy(), rtol=1e-5, atol=1e-6)
    if spec.threshold is not None:
        assert got[2].dtype == np.uint8 and np.array_equal(got[2], expected[2].numpy())
        assert 0 < got[2].sum() < got[2].size  # the threshold splits the map: the comparison is really tested


def test_function_runs_any_batch_and_feature_size():
    spec = FusedOpSpec((32, 32), threshold=0.5)
    model = export_op(spec, make_features([(4, 8, 8)], torch.float32, batch=1))
    other = make_features([(6, 11, 5)], torch.float32, batch=5, seed=3)  # other batch, channels and size than traced
    got = _run(model, other)
    expected = spec.reference()(*other)
    assert got[0].shape == (5, 1, 32, 32) and np.allclose(got[0], expected[0].numpy(), atol=1e-5)


def test_threshold_attribute_drives_the_mask():
    spec = FusedOpSpec((32, 32), threshold=0.5)
    features = make_features([(4, 8, 8)], torch.float32)
    model = export_op(spec, features)
    body = model.functions[0]
    assert any(a.ref_attr_name == "threshold" for n in body.node for a in n.attribute)
    amap = _run(model, features)[0]
    cut = float(np.median(amap))
    assert set_threshold(model, cut)
    assert np.array_equal(_run(model, features)[2], (amap > cut).astype(np.uint8))


def test_spec_errors_and_reference_shapes():
    from edgekd.errors import EdgekdError
    with pytest.raises(EdgekdError, match="weighted"):
        FusedOpSpec((8, 8), combine="weighted")
    with pytest.raises(EdgekdError, match="1 to 8 scales"):
        FusedOpSpec((8, 8)).check_scales(9)
    with pytest.raises(EdgekdError, match="attributes"):
        FusedOpSpec.from_attributes({"combine": "add"})


# -- the CUDA source ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["sm_87", "sm_89", "sm_90"])
def test_kernels_compile_with_nvcc(arch, tmp_path):
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if shutil.os.path.exists("/usr/local/cuda/bin/nvcc") else None)
    if nvcc is None:
        pytest.skip("nvcc is not installed on this machine")
    cubin = tmp_path / f"feature_diff.{arch}.cubin"
    result = subprocess.run([nvcc, f"-arch={arch}", "-cubin", "-O3", "-Werror", "all-warnings", "-o", str(cubin),
                             str(kernel_source_path())], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert cubin.stat().st_size > 10_000
    symbols = cubin.read_bytes()
    for kernel in ("edgekd_cosine_distance_f16", "edgekd_combine_blur_rows", "edgekd_blur_cols_score", "edgekd_topk_mean"):
        assert kernel.encode() in symbols


def test_kernels_compile_with_nvrtc():
    pytest.importorskip("cuda.bindings.nvrtc")
    cubin = compile_cubin("sm_87")
    assert cubin[:4] == b"\x7fELF" and b"edgekd_cosine_distance_f32" in cubin


def test_launch_plan_lays_out_a_workspace_without_overlaps():
    spec = FusedOpSpec((256, 256), sigma=4.0)
    plan = LaunchPlan(spec, 8, ((24, 64, 64), (40, 32, 32), (112, 16, 16)))
    spans = [(plan.offsets["distance"][i], 8 * h * w * 4) for i, (_, h, w) in enumerate(plan.scales)]
    spans += [(plan.offsets["rows"], 8 * 256 * 256 * 4), (plan.offsets["score_bits"], 8 * 4)]
    for (a, size_a), (b, _) in zip(spans, spans[1:]):
        assert a % 256 == 0 and a + size_a <= b
    assert spans[-1][0] + spans[-1][1] <= plan.workspace_bytes
    assert plan.radius == 16 and plan.reflect == 1 and plan.topk == 100 and not plan.upsamples
    grid = LaunchPlan(FusedOpSpec((256, 256), sigma=4.0, map_stride=4), 8, plan.scales)
    assert grid.grid == (64, 64) and grid.radius == 4 and grid.upsamples
    assert grid.offsets["blurred"] - grid.offsets["rows"] == 8 * 64 * 64 * 4  # both grid-sized, back to back
    assert grid.offsets["score_bits"] - grid.offsets["blurred"] == 8 * 64 * 64 * 4
    assert grid.workspace_bytes < plan.workspace_bytes
    # Lite0 RD at 256 px, FP16, batch 8: T and S read once = 2 * 8 * (24*64*64 + 40*32*32 + 112*16*16) * 2 bytes
    assert plan.bytes_moved(2) == 2 * 8 * (98304 + 40960 + 28672) * 2 + 8 * 256 * 256 * 4 + 32
    with pytest.raises(Exception, match="too large"):
        LaunchPlan(FusedOpSpec((512, 512), sigma=200.0), 1, ((4, 8, 8),))


@pytest.fixture(scope="module")
def host_kernels():
    from edgekd.fused.host_emulation import HostEmulatedKernels
    return HostEmulatedKernels()


def _compare_kernels(got, expected, threshold: float | None):
    assert not any(np.isnan(g).any() for g in got[:2])  # outputs start poisoned with NaN: every value was written
    span = float(expected[0].max() - expected[0].min()) or 1.0
    assert np.abs(got[0] - expected[0].numpy()).max() <= 1e-5 * span + 1e-6
    assert np.allclose(got[1], expected[1].numpy(), rtol=1e-5, atol=1e-6)
    if threshold is not None:  # a pixel within rounding of the threshold may flip; anything else must agree
        near = np.abs(expected[0].numpy() - threshold) < 1e-5
        assert np.array_equal(got[2][~near], expected[2].numpy()[~near]) and got[2].max() <= 1


@pytest.mark.parametrize("spec,shapes,dtype", CASES)
def test_cuda_source_matches_reference_in_host_emulation(spec, shapes, dtype, host_kernels):
    """The CUDA kernels and their launch sequence, run on the CPU (engines/kernels/host_emulation.cpp)."""
    from edgekd.fused.host_emulation import emulated_feature_diff
    features = make_features(shapes, dtype)
    half = len(features) // 2
    got = emulated_feature_diff(spec, [f.numpy() for f in features[:half]], [f.numpy() for f in features[half:]],
                                host_kernels)
    _compare_kernels(got, spec.reference()(*features), spec.threshold)


def test_host_emulated_topk_with_ties(host_kernels):
    """Identical features give a flat map: the radix select must still average exactly k values."""
    from edgekd.fused.host_emulation import emulated_feature_diff
    spec = FusedOpSpec((20, 20), sigma=0.0, score="topk", topk=37)
    teacher = [np.ones((2, 3, 5, 5), np.float32), np.full((2, 2, 4, 4), 2.0, np.float32)]
    student = [t.copy() for t in teacher]
    student[0][1, :, 0, 0] = [1.0, -1.0, 0.5]  # one differing pixel in the second image
    got = emulated_feature_diff(spec, teacher, student, host_kernels)
    expected = spec.reference()(*[torch.from_numpy(a) for a in teacher + student])
    assert np.allclose(got[1], expected[1].numpy(), atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("spec,shapes,dtype", CASES)
def test_cuda_kernels_match_reference(spec, shapes, dtype):
    from edgekd.fused.torch_cuda import fused_scoring
    features = [f.cuda() for f in make_features(shapes, dtype)]
    half = len(features) // 2
    got = [g.cpu().numpy() for g in fused_scoring(spec, features[:half], features[half:])]
    _compare_kernels(got, spec.reference()(*[f.cpu() for f in features]), spec.threshold)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_runtime_cuda_graph_replays_match_eager_runs():
    from edgekd.checkpoint import build_model
    from edgekd.config import load_config
    from edgekd.runtime.torch_backend import TorchRuntime
    config = load_config(None, ["model=rd", "teacher=efficientnet_lite0", "input_size=96"])
    model = build_model(config, pretrained_teacher=False)
    graphed = TorchRuntime(model, device="cuda")
    assert graphed.graphs is not None and graphed.model.use_fused_kernels
    eager = TorchRuntime(model, device="cuda", cuda_graphs=False)
    rng = np.random.default_rng(0)
    for batch in (3, 1, 3):  # a new batch size captures again; the same one replays with new frames
        frames = rng.random((batch, 3, 96, 96), np.float32)
        (got_map, got_score), (ref_map, ref_score) = graphed.run(frames), eager.run(frames)
        assert np.allclose(got_map, ref_map, atol=1e-5) and np.allclose(got_score, ref_score, atol=1e-5)
    assert set(graphed.graphs.captured) == {(3, 3, 96, 96), (1, 3, 96, 96)} and not graphed.graphs.failed


@pytest.mark.slow
def test_torch_runtime_keeps_the_reference_on_cpu(wood_checkpoint):
    from edgekd.runtime.torch_backend import TorchRuntime
    runtime = TorchRuntime.from_checkpoint(wood_checkpoint, device="cpu")
    assert runtime.model.use_fused_kernels is False
    batch = np.random.default_rng(0).random((2, 3, 128, 128), dtype=np.float32)
    expected = runtime.run(batch)
    runtime.model.use_fused_kernels = True  # asked for, but CPU tensors still take the reference path
    got = runtime.run(batch)
    assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])


def _what_features_become(features: list[torch.Tensor], producer: str) -> list[torch.Tensor]:
    if producer == "Relu":
        return [torch.relu(f.float()) for f in features]
    return [(torch.clamp(torch.round(f.float() / 0.02) + 128, 0, 255) - 128) * 0.02 for f in features]


def _ones_convolutions(body: onnx.FunctionProto) -> int:
    """Convolutions in the body whose weight is a constant (1, C, 1, 1) of ones: channel sums."""
    constants = {n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t) for n in body.node
                 if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}
    weights = [constants.get(n.input[1]) for n in body.node if n.op_type == "Conv"]
    return sum(1 for w in weights if w is not None and w.ndim == 4 and w.shape[0] == 1 and w.shape[2:] == (1, 1)
               and w.shape[1] > 1 and np.all(w == 1))


@pytest.mark.parametrize("producer", ["Relu", "DequantizeLinear"])
def test_body_sums_channels_by_convolution_after_float_ops_and_by_reducesum_after_dequantize(producer):
    spec = FusedOpSpec((64, 64), threshold=0.4, map_stride=4)
    shapes = [(24, 16, 16), (40, 8, 8), (112, 4, 4)]
    features = make_features(shapes, torch.float32)
    model = fed_by(op_model(spec, features), features, producer)
    onnx.checker.check_model(model)
    body = model.functions[0]
    ops = [n.op_type for n in body.node]
    if producer == "Relu":  # three sums per scale (t.s, t.t, s.s), no ReduceSum over channels left
        assert _ones_convolutions(body) == 3 * len(shapes) and "ReduceSum" not in ops and "Pow" not in ops
    else:  # squares by Pow: one input edge per feature, so one DequantizeLinear fewer per feature at run time
        assert _ones_convolutions(body) == 0 and ops.count("ReduceSum") == 3 * len(shapes)
        assert ops.count("Pow") == 2 * len(shapes)
    assert "DepthToSpace" in ops and ops.count("Resize") == len(shapes)  # the final upsample is no Resize
    got = _run(model, features)
    expected = spec.reference()(*_what_features_become(features, producer))
    span = float(expected[0].max() - expected[0].min())
    assert np.abs(got[0] - expected[0].numpy()).max() <= 1e-5 * span + 1e-6
    assert np.allclose(got[1], expected[1].numpy(), rtol=1e-5, atol=1e-6)
    assert (got[2] != expected[2].numpy()).mean() < 1e-4  # only pixels within rounding of the threshold may differ


def test_feature_channels_refuses_unknown_or_mismatched_channels():
    from edgekd.fused.onnx_function import feature_channels
    spec = FusedOpSpec((32, 32))
    features = make_features([(4, 8, 8)], torch.float32)
    model = op_model(spec, features)  # graph inputs: no producer, channels not fixed
    assert feature_channels(model, fused_nodes(model)) is None
    fixed = fed_by(op_model(spec, features), features, "Relu")
    assert feature_channels(fixed, fused_nodes(fixed)) == (4,)


@pytest.mark.parametrize("factor", [2, 3, 4, 8])
def test_upsample_phases_is_the_bilinear_resize(factor):
    from edgekd.scoring import resize, upsample_phases
    amap = torch.rand(2, 1, 9, 6, dtype=torch.float64)
    expected = resize(amap, (9 * factor, 6 * factor))
    assert torch.allclose(upsample_phases(amap, factor), expected, atol=1e-12)
    assert torch.allclose(upsample_phases(amap.float(), factor), expected.float(), atol=1e-6)

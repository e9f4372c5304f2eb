"""Real TensorRT engines built on this CPU-only machine with TensorRT-RTX; runtime errors checked without a GPU.

Never create a TensorRT runtime here: without a GPU it crashes the process. Only the builder is used.
"""

import shutil

import onnx
import pytest
from onnx import TensorProto, helper

from edgekd.artifacts import read_sidecar, stamped_fields, write_sidecar
from edgekd.engine.builder import build_engine, parse_batch
from edgekd.engine.gpu import gpu_count
from edgekd.errors import EdgekdError
from edgekd.export.onnx_export import set_metadata
from edgekd.runtime import open_runtime

pytestmark = pytest.mark.slow
trt = pytest.importorskip("tensorrt_rtx")


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_engine_builds_from_every_precision(onnx_exports, tmp_path, precision):
    onnx_path = onnx_exports[precision]
    result = build_engine(onnx_path, tmp_path, batch="1,2,4", flavour="tensorrt_rtx")
    assert result.engine == tmp_path / f"wood.{precision}.engine" and result.engine.stat().st_size > 100_000
    assert result.engine.read_bytes()[:1] != b"{"  # a raw plan, no JSON header glued on
    assert [t["name"] for t in result.inputs] == ["images"] and result.inputs[0]["shape"] == [-1, 3, 128, 128]
    assert [t["name"] for t in result.outputs] == ["anomaly_map", "score", "mask"]
    assert result.outputs[2]["dtype"] == "UINT8"
    info = read_sidecar(result.engine)
    assert info.kind == "engine" and info.precision == precision
    assert info.profile["batch"] == {"min": 1, "opt": 2, "max": 4}
    assert info.profile["shapes"]["images"] == [[1, 3, 128, 128], [2, 3, 128, 128], [4, 3, 128, 128]]
    assert info.tensorrt["flavour"] == "tensorrt_rtx" and info.onnx["sha256"]
    assert info.timing_cache is None and not (tmp_path / "timing.cache").exists()  # TensorRT-RTX keeps none


def test_split_layout_builds_two_engines(split_export, tmp_path):
    result = build_engine(split_export, tmp_path, batch="1,1,2", flavour="tensorrt_rtx")
    assert {p.name for p in tmp_path.glob("*.engine")} == {"wood.fp32.teacher.engine", "wood.fp32.student.engine"}
    assert read_sidecar(result.engine).graphs == {"teacher": "wood.fp32.teacher.engine",
                                                      "student": "wood.fp32.student.engine"}


def test_batch_and_dla_errors(onnx_exports, tmp_path):
    for bad in ("8,4,1", "0,1,2", "a,b,c", "1,2"):
        with pytest.raises(EdgekdError, match="--batch"):
            parse_batch(bad)
    assert parse_batch("4") == (4, 4, 4)
    with pytest.raises(EdgekdError, match="no DLA cores"):
        build_engine(onnx_exports["fp32"], tmp_path, dla_core=0, flavour="tensorrt_rtx")
    with pytest.raises(EdgekdError, match="does not exist"):
        build_engine(tmp_path / "missing.onnx", tmp_path, flavour="tensorrt_rtx")
    with pytest.raises(EdgekdError, match="takes a .ckpt or an .onnx"):
        build_engine(tmp_path / "model.pb", tmp_path, flavour="tensorrt_rtx")
    with pytest.raises(EdgekdError, match="tensorrt is not installed"):
        build_engine(onnx_exports["fp32"], tmp_path, flavour="tensorrt")


def test_parse_failure_names_the_node_and_op(onnx_exports, tmp_path):
    node = helper.make_node("Frobnicate", ["images"], ["anomaly_map"], name="mystery_node", domain="acme")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["b", 3, 8, 8])],
                              [helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["b", 1, 8, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("acme", 1)])
    path = tmp_path / "odd.onnx"
    onnx.save(model, str(path))
    info = read_sidecar(onnx_exports["fp32"])
    write_sidecar(path, info)
    set_metadata(path, {"edgekd_version": info.edgekd_version, **stamped_fields(info)})  # a file and sidecar that agree
    with pytest.raises(EdgekdError, match=r"cannot parse .*odd\.onnx: node 'mystery_node' \(op Frobnicate\)"):
        build_engine(path, tmp_path / "engines", flavour="tensorrt_rtx")


@pytest.fixture
def built_engine(onnx_exports, tmp_path):
    return build_engine(onnx_exports["fp16"], tmp_path, batch="1,1,2", flavour="tensorrt_rtx").engine


@pytest.mark.skipif(gpu_count() > 0, reason="checks the no-GPU error; this machine has a GPU")
def test_engine_runtime_without_gpu_is_a_clear_error(built_engine):
    with pytest.raises(EdgekdError, match="needs an NVIDIA GPU"):
        open_runtime(built_engine)


def test_stale_engine_is_caught_from_the_sidecar(built_engine):
    info = read_sidecar(built_engine)
    info.tensorrt["version"] = "0.9.0"
    write_sidecar(built_engine, info)
    with pytest.raises(EdgekdError, match="built with tensorrt_rtx 0.9.0 .* rebuild it"):
        open_runtime(built_engine)
    shutil.move(str(built_engine.with_suffix(".json")), str(built_engine.with_suffix(".bak")))
    with pytest.raises(EdgekdError, match="has no sidecar"):
        open_runtime(built_engine)


def test_engine_for_another_gpu_is_caught_before_loading(built_engine, monkeypatch):
    import edgekd.runtime.tensorrt_backend as backend
    info = read_sidecar(built_engine)
    info.built_on_gpu = {"name": "NVIDIA H100", "compute_capability": "9.0"}
    monkeypatch.setattr(backend, "gpu_description", lambda index=0: {"name": "Orin", "compute_capability": "8.7"})
    with pytest.raises(EdgekdError, match=r"built for NVIDIA H100 \(sm 9.0\) but this GPU is Orin \(sm 8.7\)"):
        backend.check_engine_compatible(built_engine, info)  # a check only: no TensorRT runtime is created

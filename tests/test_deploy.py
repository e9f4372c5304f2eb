"""export-triton and export-deepstream: repositories and configs read from real exports, validated with Triton's
own model-config schema (tritonclient's protobuf)."""

import json
import shutil

import pytest

from cli_runner import edgekd
from edgekd.deploy.triton_repository import RepositoryOptions, write_repository
from edgekd.errors import EdgekdError

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
text_format = pytest.importorskip("google.protobuf.text_format")


def parse_config(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_onnx_repository_is_a_valid_triton_config_read_from_the_artifact(onnx_exports, tmp_path):
    artifact = onnx_exports["fp16"]
    sidecar = json.loads(artifact.with_suffix(".json").read_text())
    result = edgekd("export-triton", artifact, "--repo", tmp_path / "repo", "--max-batch", "8", "--instances", "2",
                    "--kind", "cpu")
    assert result.returncode == 0, result.stderr
    model = tmp_path / "repo" / "wood"
    config = parse_config(model / "config.pbtxt")
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 8 and config.name == "wood"
    h, w = sidecar["input_size"]
    assert [(i.name, model_config_pb2.DataType.Name(i.data_type), list(i.dims)) for i in config.input] == \
        [("images", "TYPE_FP32", [3, h, w])]
    outputs = {o.name: (model_config_pb2.DataType.Name(o.data_type), list(o.dims), list(o.reshape.shape)) for o in config.output}
    assert outputs == {"anomaly_map": ("TYPE_FP32", [1, h, w], []), "score": ("TYPE_FP32", [1], []),
                       "mask": ("TYPE_UINT8", [1, h, w], [])}
    assert config.output[1].HasField("reshape")  # the per-image score is a scalar to the model
    assert config.instance_group[0].count == 2 and config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert json.loads(params["edgekd_image_threshold"]) == sidecar["thresholds"]["image"]
    assert json.loads(params["edgekd_pixel_threshold"]) == sidecar["thresholds"]["pixel"]
    assert (model / "1" / "model.onnx").read_bytes() == artifact.read_bytes()
    assert json.loads((model / "edgekd.json").read_text()) == sidecar
    readme = (tmp_path / "repo" / "README.md").read_text()
    assert "docker run --rm -p 8000:8000" in readme and "tritonserver --model-repository=/models" in readme
    assert "--gpus" not in readme  # a CPU instance group needs no GPU
    # a second model keeps the first one's README section; the same name again needs --overwrite
    assert edgekd("export-triton", artifact, "--repo", tmp_path / "repo", "--name", "wood_b").returncode == 0
    assert "## wood\n" in (tmp_path / "repo" / "README.md").read_text()
    again = edgekd("export-triton", artifact, "--repo", tmp_path / "repo")
    assert again.returncode != 0 and "already exists: pass --overwrite" in again.stderr
    assert not list((tmp_path / "repo").glob(".*partial"))


@pytest.fixture(scope="module")
def rtx_engine(onnx_exports, tmp_path_factory):
    pytest.importorskip("tensorrt_rtx")
    from edgekd.engine.builder import build_engine
    return build_engine(onnx_exports["fp16"], tmp_path_factory.mktemp("engines"), batch="1,2,4",
                        flavour="tensorrt_rtx").engine


def full_tensorrt_copy(engine, folder):
    """The same plan with its sidecar saying full TensorRT built it: what a Jetson or the Triton container makes.
    (Full TensorRT does not install here; the config is written from the sidecar, which this copy keeps true.)"""
    folder.mkdir()
    target = folder / engine.name
    shutil.copyfile(engine, target)
    info = json.loads(engine.with_suffix(".json").read_text())
    info["tensorrt"] = {**info["tensorrt"], "flavour": "tensorrt", "version": "10.8.0"}
    target.with_suffix(".json").write_text(json.dumps(info))
    return target


def test_engine_repository_takes_batch_and_tensors_from_the_engine(rtx_engine, tmp_path):
    refused = edgekd("export-triton", rtx_engine, "--repo", tmp_path / "repo")
    assert refused.returncode != 0 and "tensorrt_rtx" in refused.stderr and "--platform onnxruntime" in refused.stderr
    assert not (tmp_path / "repo" / "wood").exists()
    engine = full_tensorrt_copy(rtx_engine, tmp_path / "trt")
    result = edgekd("export-triton", engine, "--repo", tmp_path / "repo")
    assert result.returncode == 0, result.stderr
    config = parse_config(tmp_path / "repo" / "wood" / "config.pbtxt")
    network = json.loads(engine.with_suffix(".json").read_text())["network"]
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 4  # the profile's maximum
    assert [list(o.dims) for o in config.output] == [o["shape"][1:] or [1] for o in network["outputs"]]
    assert (tmp_path / "repo" / "wood" / "1" / "model.plan").read_bytes() == engine.read_bytes()
    readme = (tmp_path / "repo" / "README.md").read_text()
    assert "--gpus all" in readme and "TensorRT 10.8.0" in readme
    too_big = edgekd("export-triton", engine, "--repo", tmp_path / "repo2", "--max-batch", "16")
    assert too_big.returncode != 0 and "exceeds the engine's profile (4)" in too_big.stderr
    cpu = edgekd("export-triton", engine, "--repo", tmp_path / "repo2", "--kind", "cpu")
    assert cpu.returncode != 0 and "runs on a GPU only" in cpu.stderr


def test_plugin_engines_ship_the_plugin_and_preload_it(rtx_engine, tmp_path):
    engine = full_tensorrt_copy(rtx_engine, tmp_path / "trt")
    info = json.loads(engine.with_suffix(".json").read_text())
    engine.with_suffix(".json").write_text(json.dumps({**info, "fused_op": "plugin"}))
    missing = edgekd("export-triton", engine, "--repo", tmp_path / "repo")
    assert missing.returncode != 0 and "--plugin libedgekd_plugin.so" in missing.stderr
    library = tmp_path / "libedgekd_plugin.so"
    library.write_bytes(b"\x7fELF stand-in: only copied, never loaded here")
    assert edgekd("export-triton", engine, "--repo", tmp_path / "repo", "--plugin", library).returncode == 0
    assert (tmp_path / "repo" / "plugins" / "libedgekd_plugin.so").read_bytes() == library.read_bytes()
    assert "LD_PRELOAD=/plugins/libedgekd_plugin.so" in (tmp_path / "repo" / "README.md").read_text()


def test_repository_refuses_what_a_server_cannot_take(onnx_exports, split_export, tmp_path):
    with pytest.raises(EdgekdError, match="split export"):
        write_repository(split_export, tmp_path, RepositoryOptions("x", "onnxruntime"))
    with pytest.raises(EdgekdError, match=r"--platform tensorrt serves a TensorRT engine \(.engine, from"):
        write_repository(onnx_exports["fp32"], tmp_path, RepositoryOptions("x", "tensorrt"))
    with pytest.raises(EdgekdError, match="unknown: use one of tensorrt, onnxruntime"):
        write_repository(onnx_exports["fp32"], tmp_path, RepositoryOptions("x", "tf"))
    lonely = tmp_path / "lonely.onnx"
    shutil.copyfile(onnx_exports["fp32"], lonely)
    with pytest.raises(EdgekdError, match="has no sidecar"):
        write_repository(lonely, tmp_path / "repo", RepositoryOptions("x", "onnxruntime"))
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("precision,mode", [("fp32", 0), ("fp16", 2), ("int8", 1)])
def test_deepstream_config_feeds_the_network_what_it_expects(precision, mode, onnx_exports, tmp_path):
    artifact = onnx_exports[precision]
    result = edgekd("export-deepstream", artifact, "--out", tmp_path / "ds")
    assert result.returncode == 0, result.stderr
    lines = dict(line.split("=", 1) for line in (tmp_path / "ds" / "nvinfer_config.txt").read_text().splitlines()
                 if "=" in line and not line.startswith("#"))
    info = json.loads(artifact.with_suffix(".json").read_text())
    h, w = info["input_size"]
    assert lines["onnx-file"] == artifact.name and (tmp_path / "ds" / artifact.name).is_file()
    assert int(lines["network-mode"]) == mode and lines["infer-dims"] == f"3;{h};{w}"
    assert abs(float(lines["net-scale-factor"]) - 1 / 255) < 1e-9 and lines["offsets"] == "0;0;0"  # normalised in-graph
    assert lines["model-color-format"] == "0" and lines["output-blob-names"] == "anomaly_map;score;mask"
    assert lines["network-type"] == "100" and lines["output-tensor-meta"] == "1"
    note = (tmp_path / "ds" / "README.md").read_text()
    assert str(info["thresholds"]["image"]) in note and "NvDsInferTensorMeta" in note


def test_deepstream_refuses_rtx_engines_and_full_folders(rtx_engine, onnx_exports, tmp_path):
    refused = edgekd("export-deepstream", rtx_engine, "--out", tmp_path / "ds")
    assert refused.returncode != 0 and "DeepStream runs engines of full TensorRT" in refused.stderr
    engine = full_tensorrt_copy(rtx_engine, tmp_path / "trt")
    assert edgekd("export-deepstream", engine, "--out", tmp_path / "ds", "--batch", "2").returncode == 0
    config = (tmp_path / "ds" / "nvinfer_config.txt").read_text()
    assert f"model-engine-file={engine.name}" in config and "batch-size=2" in config
    full = edgekd("export-deepstream", onnx_exports["fp32"], "--out", tmp_path / "ds")
    assert full.returncode != 0 and "is not empty: pass --overwrite" in full.stderr


# -- what a stock server is handed is consistent and finite (the runtime's own checks, in one place) -----------------
def _copy_pair(artifact, folder, sidecar_from=None, edit=None):
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / artifact.name
    shutil.copyfile(artifact, target)
    info = json.loads((sidecar_from or artifact).with_suffix(".json").read_text())
    if edit:
        edit(info)
    target.with_suffix(".json").write_text(json.dumps(info))
    return target


def _nan_thresholds(artifact, folder):
    """An ONNX and sidecar that agree with each other and both carry a NaN image threshold."""
    import onnx
    model = onnx.load(str(artifact))
    info = json.loads(artifact.with_suffix(".json").read_text())
    info["thresholds"]["image"] = float("nan")
    for entry in model.metadata_props:
        if entry.key == "thresholds":
            entry.value = json.dumps(info["thresholds"])
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / artifact.name
    onnx.save(model, str(target))
    target.with_suffix(".json").write_text(json.dumps(info))
    return target


def test_servers_get_only_consistent_finite_thresholds_and_safe_names(onnx_exports, tmp_path, capsys, monkeypatch):
    from cli_runner import run_main

    def cli(*args):  # the CLI entry point, in this process (a dozen cases)
        code, _, err = run_main(capsys, monkeypatch, *args)
        assert "Traceback" not in err
        return code, err
    mixed = _copy_pair(onnx_exports["fp32"], tmp_path / "mixed", sidecar_from=onnx_exports["fp16"])
    nan = _nan_thresholds(onnx_exports["fp32"], tmp_path / "nan")
    for command in ("export-triton", "export-deepstream"):
        where = ("--repo", tmp_path / f"{command}-repo") if command == "export-triton" else ("--out", tmp_path / f"{command}-ds")
        code, err = cli(command, mixed, *where)
        assert code == 2 and "disagree on precision" in err, err
        code, err = cli(command, nan, *where)
        assert code == 2 and "unusable image threshold" in err, err
        assert not where[1].exists() or not any(where[1].iterdir())
    code, err = cli("serve", nan, "--http", "0", "--grpc", "0", "--metrics", "0")
    assert code == 2 and "unusable image threshold" in err, err
    for name in ("../../x", "a\"b", "x y", "", "-lead", "a" * 65):
        code, err = cli("export-triton", onnx_exports["fp32"], "--repo", tmp_path / "repo", "--name", name)
        assert code == 2 and "is not a Triton model name" in err, (name, err)
    assert not (tmp_path / "x").exists() and not (tmp_path / "repo").exists()
    code, err = cli("export-triton", onnx_exports["fp32"], "--repo", tmp_path / "repo", "--name", "line_3-a")
    assert code == 0, err
    assert parse_config(tmp_path / "repo" / "line_3-a" / "config.pbtxt").name == "line_3-a"


def test_deepstream_refuses_the_onnxruntime_int8_form_and_a_file_as_out(onnx_exports, tmp_path):
    ort_form = _copy_pair(onnx_exports["int8"], tmp_path / "ort", edit=lambda info: info.update(int8_for="onnxruntime"))
    refused = edgekd("export-deepstream", ort_form, "--out", tmp_path / "ds")
    assert refused.returncode == 2 and "onnxruntime form of INT8" in refused.stderr and not (tmp_path / "ds").exists()
    (tmp_path / "file").write_text("x")
    for command, option in (("export-deepstream", "--out"), ("export-triton", "--repo")):
        refused = edgekd(command, onnx_exports["fp32"], option, tmp_path / "file")
        assert refused.returncode == 2 and "is a file" in refused.stderr and "Traceback" not in refused.stderr

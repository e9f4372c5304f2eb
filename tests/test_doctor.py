"""`edgekd doctor`: this machine as it is, a Jetson as JetPack's files describe it (a fake tree), and the exit code
that says whether `edgekd run` can open a given artifact."""

import json
import shutil

import pytest

from cli_runner import edgekd
from edgekd.doctor import opencv_build

CPU_FREQ = "sys/devices/system/cpu/cpu0/cpufreq"


def jetson_tree(root, release="# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, EABI: aarch64",
                pmode="0002", pinned=False):
    for rel, text in {"etc/nv_tegra_release": release, "var/lib/nvpmodel/status": f"pmode:{pmode}\n",
                      f"{CPU_FREQ}/scaling_min_freq": "729600\n", f"{CPU_FREQ}/scaling_max_freq": "729600\n" if pinned else "1984000\n",
                      "proc/meminfo": "MemTotal: 16000000 kB\nMemAvailable:  524288 kB\n", "dev/video0": "", "dev/nvhost-nvdla0": "",
                      "dev/nvhost-nvdla1": "", "usr/sbin/nvargus-daemon": ""}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def run_doctor(*args):
    result = edgekd("doctor", "--json", *args)
    return result, {c["name"]: c for c in json.loads(result.stdout)}


def test_this_machine_says_what_it_has_and_lacks():
    result, checks = run_doctor()
    assert result.returncode == 0, result.stderr  # no artifact asked about, and torch/OpenCV are here
    assert checks["python"]["status"] == "ok" and checks["onnxruntime"]["status"] == "ok"
    assert "CPUExecutionProvider" in checks["onnxruntime"]["detail"]
    assert checks["jetson"]["status"] == "info" and "not a Jetson" in checks["jetson"]["detail"]
    assert checks["gpu"]["status"] in ("ok", "missing") and (checks["gpu"]["status"] == "ok" or checks["gpu"]["fix"])
    assert all(c["fix"] for c in checks.values() if c["status"] in ("missing", "wrong"))  # every problem has its fix
    plain = edgekd("doctor")
    assert plain.returncode == 0 and ("missing" not in plain.stdout or "fix: " in plain.stdout)


def test_a_jetson_as_its_files_describe_it(tmp_path):
    result, checks = run_doctor("--root", jetson_tree(tmp_path))
    assert checks["jetpack"]["status"] == "ok" and "L4T 36.3 (JetPack 6.0)" in checks["jetpack"]["detail"]
    assert checks["nvpmodel"]["status"] == "wrong" and "nvpmodel -m 0" in checks["nvpmodel"]["fix"]
    assert checks["jetson_clocks"]["status"] == "wrong" and "jetson_clocks" in checks["jetson_clocks"]["fix"]
    assert checks["dla"]["detail"].startswith("2 DLA core(s)")
    assert checks["cameras"]["detail"].endswith("/dev/video0") and checks["csi"]["status"] == "ok"
    assert checks["memory"]["status"] == "wrong" and "0.5 GiB" in checks["memory"]["detail"]
    # pip's OpenCV has no GStreamer: on a Jetson that is wrong (CSI cameras), with JetPack's OpenCV as the fix
    assert checks["opencv"]["status"] == "wrong" and "GStreamer" in checks["opencv"]["fix"]
    _, tuned = run_doctor("--root", jetson_tree(tmp_path / "tuned", pmode="0000", pinned=True))
    assert tuned["nvpmodel"]["status"] == "ok" and tuned["jetson_clocks"]["status"] == "ok"
    _, old = run_doctor("--root", jetson_tree(tmp_path / "old", release="# R35 (release), REVISION: 4.1, GCID: 1"))
    assert old["jetpack"]["status"] == "wrong" and "JetPack 5.1.2" in old["jetpack"]["detail"]


def test_opencv_build_information_is_read():
    info = "  Video I/O:\n    DC1394:    NO\n    FFMPEG:    YES\n      avcodec: YES (58)\n    GStreamer:   YES (1.20.3)\n    v4l/v4l2:    YES (linux/videodev2.h)\n"
    assert opencv_build(info) == {"gstreamer": True, "ffmpeg": True, "v4l2": True}
    assert opencv_build(info.replace("GStreamer:   YES (1.20.3)", "GStreamer:   NO"))["gstreamer"] is False


def test_exit_code_says_whether_run_can_open_the_artifact(onnx_exports, tmp_path):
    result, checks = run_doctor("--model", onnx_exports["fp32"])
    assert result.returncode == 0 and checks[f"artifact {onnx_exports['fp32'].name}"]["status"] == "ok"
    missing = edgekd("doctor", "--model", tmp_path / "nope.onnx")
    assert missing.returncode == 1 and "does not exist" in missing.stdout
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08not a graph")
    shutil.copyfile(onnx_exports["fp32"].with_suffix(".json"), broken.with_suffix(".json"))
    result, checks = run_doctor("--model", broken)
    assert result.returncode == 1 and checks["artifact broken.onnx"]["status"] == "wrong" and checks["artifact broken.onnx"]["fix"]


def test_engines_are_checked_against_this_machine(onnx_exports, tmp_path):
    pytest.importorskip("tensorrt_rtx")
    from edgekd.engine.builder import build_engine
    from edgekd.engine.gpu import gpu_count
    if gpu_count():
        pytest.skip("a GPU is here: the engine may run")
    engine = build_engine(onnx_exports["fp16"], tmp_path / "engines", batch="1,1,2", flavour="tensorrt_rtx").engine
    result, checks = run_doctor("--model", engine, "--engines", tmp_path / "engines")
    assert result.returncode == 1  # an engine cannot run without a GPU: `edgekd run` would fail
    assert "needs an NVIDIA GPU" in checks[f"artifact {engine.name}"]["detail"]
    assert checks[f"engine {engine.name}"]["status"] == "wrong" and "needs an NVIDIA GPU" in checks[f"engine {engine.name}"]["detail"]
    info = json.loads(engine.with_suffix(".json").read_text())
    info["tensorrt"]["version"] = "1.0.0"  # as if built by another TensorRT-RTX
    engine.with_suffix(".json").write_text(json.dumps(info))
    _, checks = run_doctor("--engines", tmp_path / "engines")
    assert "built with tensorrt_rtx 1.0.0 but this machine has" in checks[f"engine {engine.name}"]["detail"]


def test_doctor_and_run_agree_on_what_can_be_opened(wood_checkpoint, synth_root, tmp_path):
    """Reported: doctor said 'edgekd run can open it' for an artifact run then refused."""
    import torch
    from edgekd.checkpoint import read_checkpoint
    payload = read_checkpoint(wood_checkpoint)
    no_thresholds = tmp_path / "no_thresholds.ckpt"
    torch.save({**payload, "thresholds": None}, no_thresholds)
    mismatched = tmp_path / "mismatched.ckpt"
    torch.save({**payload, "state_dict": {k: v for i, (k, v) in enumerate(payload["state_dict"].items()) if i % 2}},
               mismatched)
    frames = tmp_path / "frames"
    frames.mkdir()
    shutil.copyfile(sorted((synth_root / "wood" / "test" / "good").glob("*.png"))[0], frames / "0.png")
    for artifact in (no_thresholds, mismatched):
        result, checks = run_doctor("--model", artifact)
        assert result.returncode == 1 and checks[f"artifact {artifact.name}"]["status"] == "wrong", checks
        ran = edgekd("run", "--model", artifact, "--source", frames)
        assert ran.returncode == 2 and "error: " in ran.stderr

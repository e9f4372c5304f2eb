"""Hardening (messages): `next:` lines that work, messages that point the right way, a matrix of bad inputs each
answered in one line, and runs that did not score every frame saying so. The rest: tests/test_hardening.py and
tests/test_hardening_inputs.py."""

from __future__ import annotations

import json
import os
import shutil

import cv2
import numpy as np

from cli_runner import assert_one_line_error, edgekd, run_main
from edgekd.errors import EdgekdError


# -- 6. messages that point the right way, `next:` lines that work ------------------------------------------------

def test_next_lines_printed_by_train_and_export_work(synth_root, tmp_path):
    run = tmp_path / "run"
    result = edgekd("train", "--data", synth_root, "--category", "wood", "--out", run, "--epochs", "1",
                 "--set", "input_size=64", "--set", "model_options.memory_size=0", "--set", "train.augment=none")
    assert result.returncode == 0, result.stderr
    commands = [line.split("next:", 1)[1].strip() for line in result.stdout.splitlines() if "next:" in line]
    result = edgekd("export", run / "model.ckpt", "--out", tmp_path / "export")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("next:"))
    commands += [lines[at].split("next:", 1)[1].strip()]
    assert commands[0].startswith("edgekd eval") and commands[1].startswith("edgekd eval")
    assert lines[at + 1].strip().startswith("edgekd build-engine")
    try:
        import tensorrt_rtx  # noqa: F401  (builds real engines without a GPU)
        commands.append(lines[at + 1].strip())
    except ImportError:
        pass  # build-engine's own tests cover it where TensorRT(-RTX) is installed
    for command in commands:
        words = command.split()[1:]
        result = edgekd(*words, "--out", tmp_path / "eval", cwd=tmp_path)
        assert result.returncode == 0, f"{command}: {result.stderr}"


def test_misleading_cases_now_point_the_right_way(wood_checkpoint, exports, synth_root, tmp_path, capsys,
                                                   monkeypatch):
    onnx_path = exports[1]["fp32"].artifact
    image = next((synth_root / "wood" / "test" / "good").glob("*.png"))
    ckpt_as_onnx = tmp_path / "model.onnx"
    shutil.copy(wood_checkpoint, ckpt_as_onnx)
    onnx_as_ckpt = tmp_path / "model.ckpt"
    shutil.copy(onnx_path, onnx_as_ckpt)
    garbage_engine = tmp_path / "x.engine"
    garbage_engine.write_bytes(os.urandom(256))
    random_onnx = tmp_path / "random.onnx"
    random_onnx.write_bytes(os.urandom(256))
    shutil.copy(onnx_path.with_suffix(".json"), random_onnx.with_suffix(".json"))
    one_image = tmp_path / "one" / "normal"
    one_image.mkdir(parents=True)
    shutil.copy(image, one_image / "a.png")
    cases = [
        (["predict", ckpt_as_onnx, image], "is a PyTorch checkpoint, not an ONNX graph", "rename it to .ckpt"),
        (["predict", onnx_as_ckpt, image], "is an ONNX graph, not a PyTorch checkpoint", "rename it to .onnx"),
        (["predict", wood_checkpoint, image, "--backend", "onnxruntime"], "--backend onnxruntime runs an ONNX graph",
         "export it first"),
        (["predict", garbage_engine, image], "has no sidecar", "edgekd build-engine"),
        (["build-engine", random_onnx], "edgekd export", ""),
        (["train", "--data", synth_root], "holds several categories (washer, wood)", "--category"),
        (["export", wood_checkpoint, "--precision", "fp16", "--int8-for", "onnxruntime"], "--int8-for onnxruntime",
         "--precision int8 only"),
        (["train", "--data", tmp_path / "one"], "has 1 normal training image(s); training needs at least 3"),
    ]
    from edgekd.engine.trt import load_tensorrt
    try:
        if load_tensorrt().flavour == "tensorrt_rtx":  # a timing cache exists on full TensorRT only
            cases.append((["build-engine", onnx_path, "--timing-cache", tmp_path / "t.cache"],
                          "--timing-cache is for full TensorRT", "drop --timing-cache"))
    except EdgekdError:
        pass  # no TensorRT of either flavour here: build-engine's own tests say so
    for args, *fragments in cases:
        code, _, err = run_main(capsys, monkeypatch, *args, "--out", tmp_path / "o")
        assert_one_line_error(code, err, *[f for f in fragments if f])


def test_tiny_images_get_a_warning_and_data_info_finds_broken_files(wood_checkpoint, synth_root, tmp_path, capsys,
                                                                   monkeypatch):
    tiny = tmp_path / "tiny.png"
    cv2.imwrite(str(tiny), np.zeros((8, 8, 3), np.uint8))
    code, out, err = run_main(capsys, monkeypatch, "predict", wood_checkpoint, tiny, "--out", tmp_path / "p")
    assert code == 0 and "warning:" in err and "8x8 pixels" in err
    data = tmp_path / "data"
    shutil.copytree(synth_root / "wood", data / "wood")
    next((data / "wood" / "train" / "good").glob("*.png")).write_bytes(b"\x89PNG broken")
    mask = next((data / "wood" / "ground_truth").rglob("*.png"))
    cv2.imwrite(str(mask), np.zeros((10, 12), np.uint8))
    code, out, err = run_main(capsys, monkeypatch, "data", "info", data, "--category", "wood")
    assert code == 2 and "does not decode" in err and "is 12x10 but its image is 128x128" in err
    assert "libpng" not in err


# -- 7. the matrix: a few dozen bad inputs, each one line, never a traceback ----------------------------------------

def test_bad_input_matrix(wood_checkpoint, exports, synth_root, tmp_path, capsys, monkeypatch):
    onnx_path = exports[1]["fp32"].artifact
    image = next((synth_root / "wood" / "test" / "good").glob("*.png"))
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(wood_checkpoint.read_bytes()[:5000])
    empty = tmp_path / "empty"
    empty.mkdir()
    yaml_bad = tmp_path / "bad.yaml"
    yaml_bad.write_text("train: [unclosed\n")
    no_sidecar = tmp_path / "lonely.onnx"
    shutil.copy(onnx_path, no_sidecar)
    train = ["train", "--data", synth_root, "--category", "wood", "--out", tmp_path / "r"]
    cases = [
        train + ["--set", "train.lr=nan"], train + ["--set", "train.batch_size=0"], train + ["--set", "input_size=7"],
        train + ["--set", "train.epochs=abc"], train + ["--set", "train.lr=-1"], train + ["--set", "train.epochs=-1"],
        train + ["--set", "train.val_fraction=1.0"], train + ["--set", "nosuch.key=1"], train + ["--set", "noequals"],
        train + ["--config", yaml_bad], train + ["--config", tmp_path / "missing.yaml"],
        ["train", "--data", tmp_path / "nowhere", "--out", tmp_path / "r2"],
        ["train", "--data", empty, "--out", tmp_path / "r3"],
        ["train", "--data", synth_root, "--category", "nosuch", "--out", tmp_path / "r4"],
        ["eval", tmp_path / "missing.ckpt", "--data", synth_root],
        ["eval", corrupt, "--data", synth_root],
        ["eval", wood_checkpoint.with_name("last.ckpt"), "--data", synth_root],
        ["predict", wood_checkpoint, tmp_path / "missing.png", "--out", tmp_path / "p1"],
        ["predict", no_sidecar, image, "--out", tmp_path / "p2"],
        ["predict", wood_checkpoint, image, "--threshold", "inf", "--out", tmp_path / "p3"],
        ["predict", wood_checkpoint, image, "--backend", "cuda-magic"],
        ["predict", tmp_path / "model.xyz", image],
        ["export", wood_checkpoint, "--precision", "fp8", "--out", tmp_path / "e1"],
        ["export", wood_checkpoint, "--layout", "triple", "--out", tmp_path / "e2"],
        ["build-engine", image, "--out", tmp_path / "g1"],
        ["build-engine", onnx_path, "--batch", "8,4,1", "--out", tmp_path / "g2"],
        ["run", "--model", wood_checkpoint],
        ["run", "--model", wood_checkpoint, "--source", tmp_path / "missing.mp4"],
        ["run", "--model", wood_checkpoint, "--source", empty],
        ["run", "--model", wood_checkpoint, "--source", image.parent, "--hysteresis", "x"],
        ["run", "--model", wood_checkpoint, "--source", image.parent, "--threshold", "nan"],
        ["calibrate", wood_checkpoint],
        ["calibrate", wood_checkpoint, "--source", empty],
        ["data", "video", synth_root, tmp_path / "v.mp4", "--category", "nosuch"],
        ["data", "info", tmp_path / "nowhere"],
    ]
    for args in cases:
        code, out, err = run_main(capsys, monkeypatch, *args)
        assert "Traceback" not in err + out, (args, err)
        assert_one_line_error(code, err)


# -- runs that did not score every frame say so ------------------------------------------------------------------------
def test_a_video_damaged_mid_file_is_not_complete_and_truth_counts_every_frame(onnx_exports, synth_root, tmp_path):
    """Reported: 101 of 200 frames read, exit 0, and --truth said 10 of 10 (10 more defect frames never scored)."""
    from edgekd.data.layouts import load_dataset
    from edgekd.data.video import write_line_video
    description = write_line_video(load_dataset(synth_root, "wood"), tmp_path / "line.mp4", 60, list(range(5, 60, 10)))
    capture = cv2.VideoCapture(str(tmp_path / "line.mp4"))
    avi = cv2.VideoWriter(str(tmp_path / "line.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 25, tuple(description["size"][::-1]))
    while (frame := capture.read())[0]:
        avi.write(frame[1])
    avi.release()
    data = (tmp_path / "line.avi").read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[: len(data) // 2])  # the second half of the file is gone
    truth = tmp_path / "cut.json"
    truth.write_text(json.dumps({**description, "video": str(tmp_path / "cut.avi")}))
    result = edgekd("run", "--model", onnx_exports["fp32"], "--source", tmp_path / "cut.avi", "--truth", truth,
                    "--stats-every", "0", "--threshold", "0")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and "were never scored" in result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    scored = summary["truth"]["scored"]
    assert summary["complete"] is False and 0 < scored < 60 and summary["truth"]["frames"] == 60
    unscored_defects = [i for i in range(5, 60, 10) if i >= scored]
    assert unscored_defects and summary["truth"]["missed_unscored"] == unscored_defects
    assert summary["truth"]["detected"] <= 6 - len(unscored_defects)
    assert "frames never scored" in result.stderr


def test_a_truth_file_of_another_video_is_refused(onnx_exports, synth_root, tmp_path):
    from edgekd.data.layouts import load_dataset
    from edgekd.data.video import write_line_video
    write_line_video(load_dataset(synth_root, "wood"), tmp_path / "short.mp4", 12, [3])
    write_line_video(load_dataset(synth_root, "wood"), tmp_path / "long.mp4", 30, [3, 13])
    result = edgekd("run", "--model", onnx_exports["fp32"], "--source", tmp_path / "short.mp4", "--truth",
                    tmp_path / "long.json")
    assert_one_line_error(result.returncode, result.stderr, "describes a video of 30 frames", "has 12")
    renamed = tmp_path / "renamed.mp4"
    shutil.copyfile(tmp_path / "short.mp4", renamed)
    result = edgekd("run", "--model", onnx_exports["fp32"], "--source", renamed, "--truth", tmp_path / "short.json",
                    "--stats-every", "0")
    assert result.returncode == 0 and "was written for short.mp4, not renamed.mp4" in result.stderr, result.stderr

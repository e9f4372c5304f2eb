"""Bad input and faults, as a hostile but honest tester meets them: one clear line and a non-zero exit, never a
traceback, a silent success or a half-written file; never a defect called normal because of a bad value."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from cli_runner import edgekd, run_main

from edgekd.config import load_config
from edgekd.errors import EdgekdError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def assert_ends_in_error(code: int, err: str, *fragments: str) -> None:
    """After long work (progress shown), a refusal is the last line."""
    assert code != 0 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(f in last for f in fragments), err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code != 0, err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# -- 1. configuration values: one place, every path -------------------------------------------------------------

def test_numbers_written_like_1e_4_are_numbers_in_files_and_overrides(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  lr: 1e-4\n  epochs: 3\n")  # PyYAML reads 1e-4 as text
    assert load_config(config)["train"]["lr"] == pytest.approx(1e-4)
    assert load_config(None, ["train.lr=1e-4"])["train"]["lr"] == pytest.approx(1e-4)


@pytest.mark.parametrize("override, fragment", [
    ("train.lr=nan", "train.lr=nan is not finite"),
    ("train.lr=-1", "train.lr=-1 is out of range"),
    ("train.lr=0", "train.lr=0 is out of range"),
    ("train.batch_size=0", "train.batch_size=0 is out of range"),
    ("train.epochs=abc", "train.epochs='abc' is not a number"),
    ("train.epochs=-1", "train.epochs=-1 is out of range"),
    ("train.epochs=2.5", "train.epochs=2.5 must be a whole number"),
    ("train.val_fraction=1.0", "train.val_fraction=1 is out of range"),
    ("input_size=7", "input_size=7 is out of range"),
    ("input_size=100", "must be a multiple of 32"),
    ("scoring.sigma=inf", "scoring.sigma=inf is not finite"),
    ("threshold.quantile=2", "threshold.quantile=2 is out of range"),
    ("train.optimizer=rmsprop", "train.optimizer='rmsprop' is unknown"),
    ("train.amp=maybe", "train.amp='maybe' must be true or false"),
    ("train.betas=[0.5]", "train.betas=[0.5] must be a list of 2 numbers"),
])
def test_bad_config_values_name_key_value_and_range(override, fragment):
    with pytest.raises(EdgekdError) as caught:
        load_config(CONFIGS / "rd_lite0.yaml", [override])
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


# -- 2. thresholds never hide a defect ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fp32_pair(exports, tmp_path_factory):
    """A private copy of an FP32 export and its sidecar, free to damage."""
    folder = tmp_path_factory.mktemp("pair")
    source = exports[1]["fp32"].artifact
    for path in (source, source.with_suffix(".json")):
        shutil.copy(path, folder / path.name)
    return folder / source.name


def test_nan_thresholds_in_a_sidecar_are_refused_not_used(fp32_pair, synth_root, tmp_path, capsys, monkeypatch):
    from edgekd.runtime import open_runtime
    onnx_path = tmp_path / fp32_pair.name
    shutil.copy(fp32_pair, onnx_path)
    info = json.loads(fp32_pair.with_suffix(".json").read_text())
    info["thresholds"]["image"] = float("nan")
    onnx_path.with_suffix(".json").write_text(json.dumps(info))  # the ONNX metadata still holds the real values
    with pytest.raises(EdgekdError, match="disagree on thresholds"):
        open_runtime(onnx_path)
    crack = next((synth_root / "wood" / "test" / "crack").glob("*.png"))
    code, _, err = run_main(capsys, monkeypatch, "predict", onnx_path, crack, "--out", tmp_path / "p")
    assert_one_line_error(code, err, "disagree on thresholds")
    assert not (tmp_path / "p" / "predictions.json").exists()


def test_threshold_nan_on_the_command_line_is_refused(wood_checkpoint, synth_root, tmp_path, capsys, monkeypatch):
    crack = next((synth_root / "wood" / "test" / "crack").glob("*.png"))
    code, _, err = run_main(capsys, monkeypatch, "predict", wood_checkpoint, crack, "--threshold", "nan",
                            "--out", tmp_path / "p")
    assert_one_line_error(code, err, "--threshold nan is not a finite number")


def test_a_nan_threshold_stored_in_a_checkpoint_is_refused_and_calibrate_replaces_it(wood_checkpoint, synth_root,
                                                                                   tmp_path):
    from edgekd.checkpoint import update_checkpoint
    from edgekd.runtime import open_runtime
    from edgekd.calibration import Thresholds
    broken = tmp_path / "model.ckpt"
    shutil.copy(wood_checkpoint, broken)
    update_checkpoint(broken, thresholds={"image": float("nan"), "pixel": 0.5})
    with open_runtime(broken) as runtime, pytest.raises(EdgekdError, match="unusable image threshold"):
        Thresholds.resolve(runtime.thresholds, None)
    result = edgekd("calibrate", broken, "--source", synth_root / "wood" / "test" / "good")
    assert result.returncode == 0, result.stderr
    with open_runtime(broken) as runtime:
        assert np.isfinite(runtime.thresholds["image"])


def test_save_threshold_refuses_a_test_set_without_defects_and_keeps_the_thresholds(wood_checkpoint, synth_root,
                                                                                   tmp_path, capsys, monkeypatch):
    from edgekd.checkpoint import read_checkpoint
    data = tmp_path / "only_good"
    shutil.copytree(synth_root / "wood" / "train", data / "wood" / "train")
    shutil.copytree(synth_root / "wood" / "test" / "good", data / "wood" / "test" / "good")
    checkpoint = tmp_path / "model.ckpt"
    shutil.copy(wood_checkpoint, checkpoint)
    before = read_checkpoint(checkpoint)["thresholds"]
    code, _, err = run_main(capsys, monkeypatch, "eval", checkpoint, "--data", data, "--category", "wood",
                            "--save-threshold", "--out", tmp_path / "eval")
    assert_one_line_error(code, err, "has no defective images", "keeps its thresholds")
    assert read_checkpoint(checkpoint)["thresholds"] == before
    # Without --save-threshold the same evaluation runs and says why its metrics are n/a, without numpy noise.
    code, out, err = run_main(capsys, monkeypatch, "eval", checkpoint, "--data", data, "--category", "wood",
                              "--out", tmp_path / "eval")
    assert code == 0 and "n/a" in out and "note: the test split of wood has no defective images" in err
    assert "RuntimeWarning" not in err


def test_a_killed_calibrations_temp_files_are_removed_by_the_next(fp32_pair, synth_root, tmp_path):
    from edgekd.calibrate import calibrate
    onnx_path = tmp_path / fp32_pair.name
    shutil.copy(fp32_pair, onnx_path)
    shutil.copy(fp32_pair.with_suffix(".json"), onnx_path.with_suffix(".json"))
    stale = [tmp_path / f".{name}.calibrate.tmp" for name in (onnx_path.name, onnx_path.with_suffix(".json").name)]
    for path in stale:
        path.write_bytes(b"half")  # what SIGKILL between staging and renaming leaves
    calibrate(onnx_path, str(synth_root / "wood" / "test" / "good"), frames=100)
    assert not any(path.exists() for path in stale)


def test_an_onnx_paired_with_another_exports_sidecar_is_refused(fp32_pair, exports, tmp_path):
    from edgekd.runtime import open_runtime
    onnx_path = tmp_path / fp32_pair.name
    shutil.copy(fp32_pair, onnx_path)
    other = exports[1]["fp16"].artifact.with_suffix(".json")  # same model, another export
    shutil.copy(other, onnx_path.with_suffix(".json"))
    with pytest.raises(EdgekdError, match="disagree on precision"):
        open_runtime(onnx_path)


def test_an_engine_that_does_not_match_its_sidecar_is_refused_before_tensorrt_reads_it(tmp_path):
    from edgekd.artifacts import SIDECAR_FORMAT
    from edgekd.runtime import open_runtime
    engine = tmp_path / "wood.fp16.engine"
    engine.write_bytes(b"not the plan that was built")
    engine.with_suffix(".json").write_text(json.dumps({
        "format": SIDECAR_FORMAT, "format_version": 1, "input_size": [128, 128], "engine_sha256": "0" * 64,
        "onnx": {"path": "export/wood.fp16.onnx"}, "tensorrt": {"flavour": "tensorrt_rtx"}}))
    with pytest.raises(EdgekdError, match="does not match its sidecar.*edgekd build-engine export/wood.fp16.onnx"):
        open_runtime(engine)


# -- 3. output places checked before long work -------------------------------------------------------------------

def test_every_output_place_is_checked_first(wood_checkpoint, synth_root, tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    a_folder = tmp_path / "a_folder"
    a_folder.mkdir()
    image = next((synth_root / "wood" / "test" / "good").glob("*.png"))
    video = tmp_path / "clip.mp4"
    cases = [
        (["train", "--data", synth_root, "--category", "wood", "--out", a_file], "is a file, but a folder"),
        (["train", "--data", synth_root, "--category", "wood", "--out", a_file / "run"], "is a file, not a folder"),
        (["eval", wood_checkpoint, "--data", synth_root, "--out", a_file], "is a file, but a folder"),
        (["predict", wood_checkpoint, image, "--out", a_file], "is a file, but a folder"),
        (["export", wood_checkpoint, "--out", a_file], "is a file, but a folder"),
        (["data", "synth", a_file], "is a file, but a folder"),
        (["data", "video", synth_root, a_folder, "--category", "wood"], "is a folder, but a file"),
        (["run", "--model", wood_checkpoint, "--source", video, "--jsonl", a_folder], "--jsonl"),
        (["run", "--model", wood_checkpoint, "--source", video, "--save-video", a_folder], "--save-video"),
        (["run", "--model", wood_checkpoint, "--source", video, "--save-video", tmp_path / "out.gif"], "must end in"),
        (["run", "--model", wood_checkpoint, "--source", video, "--save-masks", a_file], "--save-masks"),
        (["calibrate", wood_checkpoint, "--source", video, "--plot", a_folder], "--plot"),
    ]
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        cases.append((["train", "--data", synth_root, "--category", "wood", "--out", locked / "run"], "no write permission"))
    for args, fragment in cases:
        started = time.monotonic()
        code, _, err = run_main(capsys, monkeypatch, *args)
        assert_one_line_error(code, err, fragment)
        assert time.monotonic() - started < 30, args  # refused before the long work


def test_a_rerun_into_the_same_folder_does_not_replace_a_model_unasked(wood_checkpoint, synth_root, capsys,
                                                                       monkeypatch):
    code, _, err = run_main(capsys, monkeypatch, "train", "--data", synth_root, "--category", "wood",
                            "--out", wood_checkpoint.parent)
    assert_one_line_error(code, err, "model.ckpt already exists", "--overwrite")


# -- 4. edgekd run: corrupt patches, whole outputs, honest exits ----------------------------------------------------

def _numbered_avi(path: Path, frames: int = 120, size: int = 128) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (size, size))
    for i in range(frames):
        image = np.full((size, size, 3), 40 + i % 200, np.uint8)
        cv2.putText(image, str(i), (10, 60), cv2.FONT_HERSHEY_SIMPLEX, 1, (255, 255, 255), 2)
        writer.write(image)
    writer.release()
    return path


def test_a_corrupt_patch_mid_file_is_skipped_and_counted_not_taken_for_the_end(tmp_path):
    from edgekd.stream.sources import CORRUPT, END, OK, open_source
    clean = _numbered_avi(tmp_path / "clean.avi", 193)
    data = bytearray(clean.read_bytes())
    start = int(len(data) * 0.28)
    data[start:start + 30000] = np.random.default_rng(0).integers(0, 256, 30000, dtype=np.uint8).tobytes()
    damaged = tmp_path / "damaged.avi"
    damaged.write_bytes(bytes(data))
    probe = cv2.VideoCapture(str(damaged))
    plain_reads = 0
    while probe.read()[0]:
        plain_reads += 1
    assert plain_reads < 180  # OpenCV alone stops at the damage
    source = open_source(str(damaged))
    counts = {OK: 0, CORRUPT: 0}
    while (read := source.read()).status != END:
        counts[read.status] += 1
    source.close()
    assert counts[OK] >= 185 and counts[CORRUPT] >= 1


def test_jsonl_never_ends_in_half_a_line_when_a_write_fails(tmp_path, monkeypatch):
    from edgekd.sinks import Result
    from edgekd.sinks import files as sinks
    path = tmp_path / "events.jsonl"
    sink = sinks.JsonlSink(path)
    result = Result(0, 0.0, None, np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.float32),
                    np.zeros((8, 8), np.uint8), 0.5, False, False)
    sink.write(result, None)
    real_write = os.write

    def disk_fills_mid_line(fd, data):  # the kernel takes part of the line, then the disk is full
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(sinks.os, "write", disk_fills_mid_line)
    with pytest.raises(OSError):
        sink.write(result, None)
    monkeypatch.setattr(sinks.os, "write", real_write)
    sink.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["frame"] == 0 and path.read_text().endswith("\n")


def test_a_video_sink_that_fails_leaves_no_file_under_its_final_name(tmp_path):
    from edgekd.sinks import VideoSink
    sink = VideoSink(tmp_path / "out.mp4", 25.0)
    from edgekd import sinks as sinks_module
    result = sinks_module.Result(0, 0.0, None, np.zeros((64, 64, 3), np.uint8), np.zeros((8, 8), np.float32),
                                 np.zeros((8, 8), np.uint8), 0.5, False, False)
    sink.write(result, np.zeros((64, 64, 3), np.uint8))
    kept = sink.abandon()
    assert not (tmp_path / "out.mp4").exists() and kept == tmp_path / "out.partial.mp4" and kept.is_file()


def test_jsonl_from_a_folder_names_the_files(wood_checkpoint, synth_root, tmp_path):
    folder = synth_root / "wood" / "test" / "crack"
    result = edgekd("run", "--model", wood_checkpoint, "--source", folder, "--jsonl", tmp_path / "e.jsonl",
                 "--stats-every", "0")
    assert result.returncode == 0, result.stderr
    names = [json.loads(line)["file"] for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert names == sorted(p.name for p in folder.glob("*.png"))


# -- 5. nothing half-written survives a kill ---------------------------------------------------------------------

def test_leftovers_of_killed_runs_are_cleaned_and_resume_finds_the_whole_checkpoint(synth_root, tmp_path):
    from edgekd.checkpoint import read_checkpoint
    from edgekd.train import train
    cfg = load_config(CONFIGS / "rd_lite0.yaml", ["input_size=64", "train.batch_size=8", "train.epochs=1",
                                                   "model_options.memory_size=0", "train.augment=none"])
    out = tmp_path / "run"
    train(cfg, synth_root, "wood", out)
    stale = out / ".last.ckpt.k1ll3d.tmp"
    stale.write_bytes(b"\0" * 1024)  # what SIGKILL during a checkpoint write leaves
    cfg["train"]["epochs"] = 2
    result = train(cfg, synth_root, "wood", out, resume=True)
    assert not stale.exists() and result.resumed_at == 1 and result.epochs_run == 1
    assert read_checkpoint(out / "last.ckpt", resume=True)["epoch"] == 2
    with pytest.raises(EdgekdError, match="already has all 2 epochs"):
        train(cfg, synth_root, "wood", out, resume=True)


def test_export_leftovers_are_cleaned_and_a_refused_export_leaves_no_folder(wood_checkpoint, tmp_path, capsys,
                                                                           monkeypatch):
    out = tmp_path / "export"
    dead = out / ".export-999999999-abcd"  # a staging folder whose process is gone
    dead.mkdir(parents=True)
    (dead / "half.onnx").write_bytes(b"\0")
    code, _, err = run_main(capsys, monkeypatch, "export", wood_checkpoint, "--precision", "fp16", "--out", out,
                            "--max-drop", "-1")
    assert_ends_in_error(code, err, "fp16 export refused")
    assert not dead.exists() and not any(out.iterdir())
    fresh = tmp_path / "fresh"
    code, _, err = run_main(capsys, monkeypatch, "export", wood_checkpoint, "--precision", "fp16", "--out", fresh,
                            "--max-drop", "-1")
    assert_ends_in_error(code, err, "fp16 export refused")
    assert not fresh.exists()


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


# -- configs: every YAML problem is one line -------------------------------------------------------------------------
@pytest.mark.parametrize("content, fragment", [
    (b"train:\n  epochs: 3\n  epochs: 4\n", "key 'epochs' is given twice"),
    (b"train: &t {epochs: 3}\nthreshold: *t\n", "anchors and aliases"),
    (b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", "not valid YAML"),
    (b"train:\n  epochs: !!python/object/apply:os.system ['true']\n", "not valid YAML"),
    (b"\x89PNG\r\n\x1a\n\x00\x00binary", "not UTF-8 text"),
    ("train:\n  epochs: 3\n".encode("utf-16"), "not UTF-8 text"),
    (b"train: {epochs: 3\n", "not valid YAML"),
    (b"model_options:\n  wdith: 64\n", "model_options.wdith is not an option of 'rd': valid options are width"),
    (b"model: stfpm\nmodel_options:\n  width: 64\n", "model_options.width is not an option of 'stfpm'"),
    (b"scoring:\n  weights: [1, 2, 3]\n", "only used with scoring.combine=weighted"),
])
def test_every_config_problem_is_one_line(capsys, monkeypatch, tmp_path, content, fragment):
    config = tmp_path / "bad.yaml"
    config.write_bytes(content)
    code, _, err = run_main(capsys, monkeypatch, "train", "--config", config, "--data", tmp_path, "--category", "x",
                            "--out", tmp_path / "run")
    assert_one_line_error(code, err, fragment)


@pytest.mark.parametrize("overrides, fragment", [
    (["scoring.combine=weighted", "scoring.weights=[1, 2]"],
     "scoring.weights has 2 value(s) but 'rd' with this teacher combines 3 scale maps: give 3"),
    (["scoring.combine=weighted", "scoring.weights=[1, 1, 1, 1]"], "has 4 value(s)"),
    (["scoring.combine=weighted", "scoring.weights=[0, 0, 0]"], "weighs every scale 0"),
    (["model_options.loss_weights=uncertainty", "scoring.combine=weighted", "scoring.weights=[1, 1, 1]"],
     "would be ignored: 'afkd' learns its scale weights"),
])
def test_scale_weights_that_do_not_fit_the_model_are_refused_before_training(capsys, monkeypatch, synth_root,
                                                                             tmp_path, overrides, fragment):
    options = [arg for value in overrides for arg in ("--set", value)]
    config = CONFIGS / ("afkd_lite0.yaml" if "learns" in fragment else "rd_lite0.yaml")
    code, _, err = run_main(capsys, monkeypatch, "train", "--config", config, *options,
                            "--data", synth_root, "--category", "wood", "--out", tmp_path / "run")
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_scale_weights_of_the_right_count_build(lite0_teacher):
    from edgekd.checkpoint import build_model
    from edgekd.config import load_config
    config = load_config(CONFIGS / "rd_lite0.yaml", ["scoring.combine=weighted", "scoring.weights=[1, 0.5, 2]",
                                                     "input_size=64"])
    assert build_model(config, pretrained_teacher=False).scorer.config.weights == (1.0, 0.5, 2.0)


@pytest.mark.parametrize("override, fragment", [
    ("train.epochs=[1, 2", "--set 'train.epochs=[1, 2': the value is not valid YAML"),
    ("=5", "has no key before '='"),
    ("train..epochs=5", "has no key before '='"),
    ("model_options={a: &x 1, b: *x}", "anchors and aliases"),
])
def test_bad_overrides_are_one_line(capsys, monkeypatch, tmp_path, override, fragment):
    code, _, err = run_main(capsys, monkeypatch, "train", "--config", CONFIGS / "rd_lite0.yaml", "--set", override,
                            "--data", tmp_path, "--category", "x", "--out", tmp_path / "run")
    assert_one_line_error(code, err, fragment)


# -- outputs ------------------------------------------------------------------------------------------------------------
def test_inputs_with_the_same_stem_keep_their_own_mask_and_overlay(wood_checkpoint, synth_root, tmp_path):
    """Reported: x.jpg (a defect) and x.png (good) side by side: one mask overwrote the other (0 defect pixels)."""
    anomalous = cv2.imread(str(sorted((synth_root / "wood" / "test" / "hole").glob("*.png"))[0]))
    good = cv2.imread(str(sorted((synth_root / "wood" / "test" / "good").glob("*.png"))[0]))
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "x.png"), anomalous)
    cv2.imwrite(str(folder / "x.jpg"), good, [cv2.IMWRITE_JPEG_QUALITY, 100])
    result = edgekd("predict", wood_checkpoint, folder / "x.png", folder / "x.jpg", "--out", tmp_path / "preds")
    assert result.returncode == 0, result.stderr
    listing = json.loads((tmp_path / "preds" / "predictions.json").read_text())["predictions"]
    records = {Path(r["image"]).name: r for r in listing}
    masks = {name: cv2.imread(r["mask"], cv2.IMREAD_GRAYSCALE) for name, r in records.items()}
    assert records["x.png"]["mask"] != records["x.jpg"]["mask"]
    assert int((masks["x.png"] > 0).sum()) == records["x.png"]["defect_pixels"] > 0


def test_output_places_that_cannot_be_written_are_one_line(onnx_exports, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for command in (("bundle", onnx_exports["fp32"], "--out", blocker / "b.tar.gz"),
                    ("export-deepstream", onnx_exports["fp32"], "--out", blocker / "ds"),
                    ("export-triton", onnx_exports["fp32"], "--repo", blocker / "repo")):
        result = edgekd(*command)
        assert_one_line_error(result.returncode, result.stderr)
    result = edgekd("export-deepstream", onnx_exports["fp32"], "--out", tmp_path / "ds", "--batch", "0")
    assert_one_line_error(result.returncode, result.stderr, "--batch 0 must be between 1")


@pytest.mark.parametrize("args, fragment", [
    (("--fps", "0"), "--fps 0 is not a capture setting"),
    (("--width", "0"), "--width 0 is not a capture setting"),
    (("--height", "-5"), "--height -5 is not a capture setting"),
    (("--min-area", "10000000"), "--min-area 10000000 is larger than the whole frame"),
])
def test_run_settings_that_would_hide_every_defect_are_refused(onnx_exports, synth_root, tmp_path, args, fragment,
                                                             capsys, monkeypatch):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, path in enumerate(sorted((synth_root / "wood" / "test" / "hole").glob("*.png"))[:2]):
        shutil.copyfile(path, folder / f"{i}.png")
    code, _, err = run_main(capsys, monkeypatch, "run", "--model", onnx_exports["fp32"], "--source", folder,
                            "--stats-every", "0", *args)
    assert code == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("error: ") and fragment in err


def test_folders_links_and_huge_headers_among_frames_are_counted_and_named(onnx_exports, synth_root, tmp_path):
    import struct
    import zlib
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, path in enumerate(sorted((synth_root / "wood" / "test" / "good").glob("*.png"))[:3]):
        shutil.copyfile(path, folder / f"{i}.png")
    (folder / "dir.png").mkdir()
    (folder / "loop.png").symlink_to("loop.png")

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    (folder / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0,
                                                                                     0, 0)) + chunk(b"IEND", b""))
    result = edgekd("run", "--model", onnx_exports["fp32"], "--source", folder, "--stats-every", "0")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["processed"] == 3 and summary["corrupt"] == 3
    assert summary["corrupt_frames"] == ["dir.png", "huge.png", "loop.png"] and "dir.png, huge.png, loop.png" in result.stderr

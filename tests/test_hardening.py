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

from cli_runner import assert_ends_in_error, assert_one_line_error, edgekd, run_main

from edgekd.config import load_config
from edgekd.errors import EdgekdError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"




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
    from edgekd.sidecar import SIDECAR_FORMAT
    from edgekd.runtime import open_runtime
    engine = tmp_path / "wood.fp16.engine"
    engine.write_bytes(b"not the plan that was built")
    engine.with_suffix(".json").write_text(json.dumps({
        "format": SIDECAR_FORMAT, "format_version": 1, "model": "rd", "input_size": [128, 128],
        "input": {"shape": ["batch", 3, 128, 128], "normalization": {}}, "engine_sha256": "0" * 64,
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

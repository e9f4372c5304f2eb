"""The command line as a user runs it: real subprocesses, real files, one-line errors."""

import json
import re

import pytest
from cli_runner import edgekd

from edgekd.checkpoint import read_checkpoint
from edgekd.config import DEFAULT_DETECTOR, load_config, training_config


def test_help_lists_every_command():
    result = edgekd("--help")
    assert result.returncode == 0
    for command in ("data", "train", "eval", "predict", "models"):
        assert command in result.stdout


@pytest.mark.slow
def test_synth_train_eval_predict_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKD_PROGRESS_EVERY", "0")  # every update a line: the output is not a terminal
    data, run = tmp_path / "synth", tmp_path / "run"
    result = edgekd("data", "synth", data, "--categories", "tile", "--size", "128", "--train", "24",
                    "--test-good", "6", "--per-defect", "2")
    assert result.returncode == 0, result.stderr
    result = edgekd("train", "--data", data, "--category", "tile", "--out", run, "--epochs", "2",
                    "--set", "input_size=128", "--set", "train.batch_size=8")
    assert result.returncode == 0, result.stderr
    assert "checkpoint:" in result.stdout and (run / "model.ckpt").is_file()
    progress = [line for line in result.stderr.splitlines() if line.startswith("train ")]
    assert progress and all(re.match(r"train \d+/\d+ \(\d+%\) epoch \d+/2 loss [\d.]+, \d\d:\d\d:\d\d elapsed", line)
                            for line in progress), result.stderr
    assert "(100%)" in progress[-1]
    trained = read_checkpoint(run / "model.ckpt")["config"]  # no --config: the default detector, not RD alone
    assert trained == load_config(DEFAULT_DETECTOR, ["train.epochs=2", "input_size=128", "train.batch_size=8"])
    assert trained["train"]["augment"] == "camera" and trained["model_options"]["memory_size"] > 0
    result = edgekd("eval", run / "model.ckpt", "--data", data)
    assert result.returncode == 0, result.stderr
    assert "| tile |" in result.stdout
    results = json.loads((run / "eval" / "results.json").read_text())
    assert 0.0 <= results["rows"][0]["image_auroc"] <= 1.0 and (run / "eval" / "montage_tile.png").is_file()
    masks = results["rows"][0]["masks"]  # at the checkpoint's own pixel threshold, in the table too
    assert 0.0 <= masks["dice_median"] <= 1.0 and masks["n_defect_images"] > 0 and "crack" in masks["dice_median_by_type"]
    assert "| Dice median |" in result.stdout
    images = [data / "tile/test/good/000.png", data / "tile/test/crack/000.png"]
    result = edgekd("predict", run / "model.ckpt", *images, "--out", tmp_path / "preds")
    assert result.returncode == 0, result.stderr
    predictions = json.loads((tmp_path / "preds" / "predictions.json").read_text())["predictions"]
    assert len(predictions) == 2 and (tmp_path / "preds" / "crack_000_overlay.png").is_file()
    import cv2
    top = cv2.imread(str(tmp_path / "preds" / "crack_000_overlay.png"))[:8]  # the verdict banner: black, with text
    assert top.max() > 100 and (top.reshape(-1, 3).max(axis=1) < 30).mean() > 0.5
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n not really")
    result = edgekd("predict", run / "model.ckpt", images[0], broken, "--out", tmp_path / "preds2")
    # One unreadable file fails alone: the others are predicted, the run says so in one line and exits non-zero.
    assert result.returncode == 2 and f"image {broken} cannot be decoded" in result.stderr
    assert "1 of 2 images could not be read" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    written = json.loads((tmp_path / "preds2" / "predictions.json").read_text())
    assert len(written["predictions"]) == 1 and written["failed"][0]["image"] == str(broken)
    result = edgekd("export", run / "model.ckpt", "--precision", "fp16", "--out", tmp_path / "export")
    assert result.returncode == 0, result.stderr
    assert "verified: parity" in result.stdout and "next: edgekd eval" in result.stdout
    onnx_path = tmp_path / "export" / "run.fp16.onnx"
    result = edgekd("eval", onnx_path, "--data", data, "--category", "tile", "--out", tmp_path / "onnx_eval")
    assert result.returncode == 0 and "| tile |" in result.stdout, result.stderr
    result = edgekd("predict", onnx_path, images[1], "--out", tmp_path / "onnx_preds")
    assert result.returncode == 0 and "(onnxruntime)" in result.stdout, result.stderr
    pytest.importorskip("tensorrt_rtx")
    result = edgekd("build-engine", onnx_path, "--batch", "1,2,4", "--out", tmp_path / "engines")
    assert result.returncode == 0, result.stderr
    assert "verified: inputs images" in result.stdout and (tmp_path / "engines" / "run.fp16.engine").is_file()
    result = edgekd("eval", run / "model.ckpt", "--data", data, "--save-threshold")
    assert result.returncode == 0 and "stored F1-optimal thresholds" in result.stdout


def test_without_a_config_a_family_named_by_set_trains_its_own_file():
    assert training_config(None, ["model=afkd"]) == load_config(DEFAULT_DETECTOR.parent / "afkd_lite0.yaml")
    assert training_config(None, [])["model_options"] == load_config(DEFAULT_DETECTOR)["model_options"]


@pytest.mark.parametrize("args,message", [
    (["train", "--data", "{tmp}/nowhere"], "dataset folder {tmp}/nowhere does not exist"),
    (["train", "--data", "{tmp}", "--config", "{tmp}/missing.yaml"], "config file {tmp}/missing.yaml does not exist"),
    (["train", "--data", "{tmp}", "--set", "model=rdx"], "unknown model 'rdx'"),
    (["eval", "{tmp}/none.ckpt", "--data", "{tmp}"], "checkpoint {tmp}/none.ckpt does not exist"),
    (["predict", "{tmp}/bad.ckpt", "x.png"], "checkpoint {tmp}/bad.ckpt is truncated or corrupt"),
    (["data", "synth", "{tmp}/d", "--categories", "carpet"], "unknown synthetic category 'carpet'"),
    (["train", "--data", "{tmp}", "--weights", "{tmp}/w.pth"], "weights file {tmp}/w.pth for teacher"),
])
def test_bad_input_is_one_clear_line(tmp_path, args, message):
    (tmp_path / "bad.ckpt").write_bytes(b"PK\x03\x04 truncated")
    (tmp_path / "normal").mkdir()
    (tmp_path / "normal" / "a.png").write_bytes(b"")
    result = edgekd(*[a.format(tmp=tmp_path) for a in args])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr
    assert message.format(tmp=tmp_path) in lines[0]

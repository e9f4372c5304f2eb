"""Hardening, round 2 (inputs): every config or YAML problem and every output place that cannot be written is one
line through the real command line; run settings that would hide every defect are refused; frames that are not
frames (folders, links, huge headers) are counted and named. Round 1 is tests/test_hardening.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import pytest

from cli_runner import assert_one_line_error, edgekd, run_main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


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

"""`edgekd calibrate`: thresholds from good frames of a compressed clip, written atomically with their history."""

import json
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from edgekd.calibrate import calibrate
from edgekd.checkpoint import read_checkpoint
from edgekd.data.layouts import load_dataset
from edgekd.errors import EdgekdError


def _jpeg_folder(samples, folder, quality):
    """Good parts as a camera with a harsh codec would deliver them: a folder source of JPEG frames."""
    folder.mkdir(parents=True)
    for i, sample in enumerate(samples):
        image = cv2.imread(str(sample.path))
        cv2.imwrite(str(folder / f"{i:03d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return folder


@pytest.fixture
def clips(synth_root, tmp_path):
    """Two disjoint clips of good parts: one to calibrate on, one to check the threshold with."""
    dataset = load_dataset(synth_root, "wood")
    good = dataset.train  # frames the camera sees on an ordinary day
    return (_jpeg_folder(good[:20], tmp_path / "calibration_clip", 20),
            _jpeg_folder(good[20:40], tmp_path / "check_clip", 20))


@pytest.mark.slow
def test_calibration_on_a_compressed_clip_holds_on_another_clip_and_keeps_history(wood_checkpoint, clips, tmp_path):
    from edgekd.calibrate import collect_normal_scores
    from edgekd.runtime.torch_backend import TorchRuntime
    from edgekd.stream.sources import CaptureSettings
    checkpoint = tmp_path / "model.ckpt"
    shutil.copy(wood_checkpoint, checkpoint)
    before = read_checkpoint(checkpoint)["thresholds"]
    result = calibrate(checkpoint, str(clips[0]), frames=100)
    assert len(result.scores) == 20 and result.frames_read == 20
    thresholds = read_checkpoint(checkpoint)["thresholds"]
    assert thresholds["image"] == pytest.approx(result.thresholds["image"])
    assert thresholds["image"] > result.scores.max() and thresholds["pixel"] > result.peaks.max()
    # The map's normal level on this camera, which masks are cut against: the clip's median frame level.
    assert before["background"] < before["pixel"] and thresholds["background"] < thresholds["pixel"]
    assert 0 < thresholds["background"] < result.peaks.min() and thresholds["background"] != before["background"]
    history = read_checkpoint(checkpoint)["thresholds_history"]
    assert history[-1]["thresholds"]["image"] == pytest.approx(before["image"])
    assert result.plot.is_file() and cv2.imread(str(result.plot)) is not None
    # Good frames of another clip from the same camera: at most one is flagged with the calibrated threshold.
    with TorchRuntime.from_checkpoint(checkpoint, device="cpu") as runtime:
        other = np.array(collect_normal_scores(runtime, str(clips[1]), 100, CaptureSettings(None, None, None))[0].scores)
    assert int((other > thresholds["image"]).sum()) <= 1, (other, thresholds)
    calibrate(checkpoint, str(clips[1]), frames=100)  # a second calibration adds to the history
    assert len(read_checkpoint(checkpoint)["thresholds_history"]) == len(history) + 1


@pytest.mark.slow
def test_onnx_calibration_updates_graph_metadata_mask_and_sidecar_together(onnx_exports, clips, tmp_path, monkeypatch):
    import onnx

    source = onnx_exports["fp32"]
    artifact = tmp_path / source.name
    shutil.copy(source, artifact)
    shutil.copy(source.with_suffix(".json"), artifact.with_suffix(".json"))
    original = (artifact.read_bytes(), artifact.with_suffix(".json").read_bytes())

    # A failure while the new pair is prepared (disk full) leaves the old pair untouched and no temp files.
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr("onnx.save", disk_full)
    with pytest.raises(OSError):
        calibrate(artifact, str(clips[0]), frames=100)
    assert (artifact.read_bytes(), artifact.with_suffix(".json").read_bytes()) == original
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    monkeypatch.undo()

    result = calibrate(artifact, str(clips[0]), frames=100)
    sidecar = json.loads(artifact.with_suffix(".json").read_text())
    assert sidecar["thresholds"]["image"] == pytest.approx(result.thresholds["image"])
    assert sidecar["thresholds_history"][-1]["thresholds"]["image"] != sidecar["thresholds"]["image"]
    meta = {p.key: p.value for p in onnx.load(str(artifact)).metadata_props}
    assert json.loads(meta["thresholds"])["pixel"] == pytest.approx(result.thresholds["pixel"])
    # The graph's own mask output now uses the new pixel threshold.
    import onnxruntime as ort
    assert _mask_threshold(onnx.load(str(artifact))) == pytest.approx(result.thresholds["pixel"], rel=1e-6)
    session = ort.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])
    frame = cv2.cvtColor(cv2.imread(str(sorted(clips[0].iterdir())[0])), cv2.COLOR_BGR2RGB)
    size = session.get_inputs()[0].shape[2:]
    frame = cv2.resize(frame, (size[1], size[0])).transpose(2, 0, 1)[None].astype(np.float32) / 255
    amap, _, mask = session.run(None, {"images": frame})
    assert np.array_equal(mask.astype(bool), amap > result.thresholds["pixel"])


def _mask_threshold(model) -> float:
    """The constant the graph's mask output compares the map with: the fused node's attribute, or the Greater's."""
    import onnx
    for node in model.graph.node:
        if node.op_type == "MultiScaleFeatureDiff":
            found = [a.f for a in node.attribute if a.name == "threshold"]
            if found:
                return found[0]
    greater = next(n for n in model.graph.node if n.op_type == "Greater" and n.input[0] == "anomaly_map")
    constants = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    constants.update({n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node
                      if n.op_type == "Constant"})
    return float(constants[greater.input[1]])


def test_too_few_frames_and_bad_arguments_fail_in_one_line(wood_checkpoint, synth_root, tmp_path):
    folder = tmp_path / "three"
    folder.mkdir()
    for sample in load_dataset(synth_root, "wood").train[:3]:
        shutil.copy(sample.path, folder / sample.path.name)
    checkpoint = tmp_path / "model.ckpt"
    shutil.copy(wood_checkpoint, checkpoint)
    before = checkpoint.read_bytes()
    with pytest.raises(EdgekdError, match="only 3 frames came from .* at least 10 good frames"):
        calibrate(checkpoint, str(folder), frames=100)
    assert checkpoint.read_bytes() == before

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "edgekd.cli", "calibrate", *map(str, args)], capture_output=True,
                              text=True)
    both = cli(checkpoint, "--camera", "0", "--source", folder)
    assert both.returncode == 2 and "exactly one of --camera N or --source" in both.stderr
    missing = cli(tmp_path / "nope.ckpt", "--source", folder)
    assert missing.returncode == 2 and "nope.ckpt does not exist" in missing.stderr
    unplugged = cli(checkpoint, "--camera", "7")
    assert unplugged.returncode == 2 and "camera" in unplugged.stderr.lower() and "Traceback" not in unplugged.stderr
    assert checkpoint.read_bytes() == before


def test_dry_run_reports_without_writing(wood_checkpoint, clips, tmp_path):
    checkpoint = tmp_path / "model.ckpt"
    shutil.copy(wood_checkpoint, checkpoint)
    shipped = tmp_path / "model.calibration.png"  # the plot of the calibration in force, which bundle ships
    shipped.write_bytes(b"the real calibration's plot")
    before = checkpoint.read_bytes()
    result = calibrate(checkpoint, str(clips[0]), frames=12, dry_run=True)
    assert len(result.scores) == 12 and result.written == [] and result.plot == tmp_path / "model.calibration.dry-run.png"
    assert result.plot.is_file() and shipped.read_bytes() == b"the real calibration's plot"
    assert checkpoint.read_bytes() == before


def test_a_resume_checkpoint_is_named_as_such(wood_checkpoint):
    last = wood_checkpoint.with_name("last.ckpt")
    with pytest.raises(EdgekdError, match="is a resume checkpoint .* use .*model.ckpt"):
        read_checkpoint(last)
    assert read_checkpoint(last, resume=True)["epoch"] == 4


@pytest.mark.slow
def test_mpeg4_video_shifts_normal_scores_and_calibrating_on_that_video_holds(wood_checkpoint, synth_root, tmp_path):
    """The same good parts score differently once a video codec has been through them; thresholds set on one clip of
    that video hold on another clip of the same line."""
    from edgekd.calibrate import collect_normal_scores
    from edgekd.data.loading import load_images
    from edgekd.data.video import write_line_video
    from edgekd.runtime.torch_backend import TorchRuntime
    from edgekd.stream.sources import CaptureSettings
    dataset = load_dataset(synth_root, "wood")
    clips = [write_line_video(dataset, tmp_path / f"{part}.mp4", 40, [], normal_part=part)
             for part in ("first", "second")]
    checkpoint = tmp_path / "model.ckpt"
    shutil.copy(wood_checkpoint, checkpoint)
    by_path = {str(s.path): s for s in dataset.test}
    with TorchRuntime.from_checkpoint(checkpoint, device="cpu") as runtime:
        video = np.array(collect_normal_scores(runtime, clips[0]["video"], 40, CaptureSettings(None, None, None))[0].scores)
        frames = [by_path[entry["image"]] for entry in clips[0]["listing"]]
        png = runtime.infer(load_images(frames, runtime.input_size)).scores
    # Frame by frame, the codec moves every score; the PNG files' own spread is the yardstick.
    spread = float(np.percentile(png, 75) - np.percentile(png, 25)) or float(png.std())
    assert len(video) == len(png) == 40 and float(np.abs(video - png).mean()) > 0.05 * spread
    result = calibrate(checkpoint, clips[0]["video"], frames=100)
    assert result.thresholds["image"] > video.max()
    with TorchRuntime.from_checkpoint(checkpoint, device="cpu") as runtime:
        other = np.array(collect_normal_scores(runtime, clips[1]["video"], 40, CaptureSettings(None, None, None))[0].scores)
    assert int((other > result.thresholds["image"]).sum()) <= 1, (other, result.thresholds)


# -- a poisoned clip, a dead camera, a kill mid-update (hardening) -----------------------------------------------------
def _onnx_copy(onnx_exports, folder):
    folder.mkdir(parents=True, exist_ok=True)
    artifact = folder / onnx_exports["fp32"].name
    shutil.copyfile(onnx_exports["fp32"], artifact)
    shutil.copyfile(onnx_exports["fp32"].with_suffix(".json"), artifact.with_suffix(".json"))
    return artifact


def _clip(synth_root, path, frames, defects):
    from edgekd.data.video import write_line_video
    return write_line_video(load_dataset(synth_root, "wood"), path, frames, defects, seed=1)


def _image_threshold(artifact):
    return json.loads(artifact.with_suffix(".json").read_text())["thresholds"]["image"]


@pytest.mark.slow
def test_defective_frames_in_the_clip_are_left_out_listed_and_many_are_refused(onnx_exports, synth_root, tmp_path):
    """Reported: ONE defective part among 100 good frames lifted the threshold over most defects."""
    from cli_runner import edgekd
    clean, poisoned = _onnx_copy(onnx_exports, tmp_path / "clean"), _onnx_copy(onnx_exports, tmp_path / "poisoned")
    _clip(synth_root, tmp_path / "good.mp4", 100, [])
    _clip(synth_root, tmp_path / "one_bad.mp4", 101, [50])
    assert edgekd("calibrate", clean, "--source", tmp_path / "good.mp4").returncode == 0
    result = edgekd("calibrate", poisoned, "--source", tmp_path / "one_bad.mp4")
    assert result.returncode == 0, result.stderr
    assert "1 of 101 frames score above the thresholds the rest of the clip sets" in result.stderr
    assert "frame 50 (score" in result.stderr
    thresholds = json.loads(poisoned.with_suffix(".json").read_text())["thresholds"]
    excluded = thresholds["excluded_frames"]
    assert [e["frame"] for e in excluded] == [50] and thresholds["image"] < excluded[0]["score"]
    assert cv2.imread(excluded[0]["picture"]) is not None  # the operator can look at it
    assert abs(thresholds["image"] - _image_threshold(clean)) <= 0.1 * _image_threshold(clean)
    # ten bad parts in 110 frames is not a clip of good parts: refused, artifact unchanged, unless accepted
    _clip(synth_root, tmp_path / "ten_bad.mp4", 110, list(range(5, 110, 11)))
    before = poisoned.with_suffix(".json").read_bytes()
    refused = edgekd("calibrate", poisoned, "--source", tmp_path / "ten_bad.mp4")
    import re
    flagged = re.search(r"error: (\d+) of 110 frames", refused.stderr)
    assert refused.returncode == 2 and flagged and int(flagged.group(1)) >= 8 and "--accept-outliers" in refused.stderr
    assert poisoned.with_suffix(".json").read_bytes() == before
    accepted = edgekd("calibrate", poisoned, "--source", tmp_path / "ten_bad.mp4", "--accept-outliers")
    assert accepted.returncode == 0, accepted.stderr
    assert len(json.loads(poisoned.with_suffix(".json").read_text())["thresholds"]["excluded_frames"]) == int(flagged.group(1))
    assert abs(_image_threshold(poisoned) - _image_threshold(clean)) <= 0.1 * _image_threshold(clean)
    # a clip of defects after a camera calibration: most frames above the threshold in force
    _clip(synth_root, tmp_path / "all_bad.mp4", 30, list(range(30)))
    refused = edgekd("calibrate", clean, "--source", tmp_path / "all_bad.mp4")
    assert refused.returncode == 2 and "score above the current image threshold" in refused.stderr, refused.stderr


def test_a_dead_camera_or_a_clip_that_changes_size_is_refused(onnx_exports, synth_root, tmp_path):
    from cli_runner import edgekd
    artifact = _onnx_copy(onnx_exports, tmp_path / "model")
    image = cv2.imread(str(load_dataset(synth_root, "wood").train[0].path))
    frozen, resized = tmp_path / "frozen", tmp_path / "resized"
    frozen.mkdir()
    resized.mkdir()
    for i in range(20):
        cv2.imwrite(str(frozen / f"{i:03d}.png"), image)
        cv2.imwrite(str(resized / f"{i:03d}.png"), image if i < 10 else cv2.resize(image, (96, 96)))
    before = artifact.with_suffix(".json").read_bytes()
    result = edgekd("calibrate", artifact, "--source", frozen)
    assert result.returncode == 2 and "every frame of" in result.stderr and "covered lens" in result.stderr
    result = edgekd("calibrate", artifact, "--source", resized)
    assert result.returncode == 2 and "change size (128x128 (from frame 0), 96x96 (from frame 10))" in result.stderr
    assert artifact.with_suffix(".json").read_bytes() == before


def test_a_kill_between_the_two_renames_is_finished_on_the_next_load(onnx_exports, clips, tmp_path):
    """The graph and its sidecar are replaced as one update: killed after the first rename, the next reader
    finishes the second, so the pair never disagrees (it used to: new graph, old sidecar, artifact unloadable)."""
    artifact = _onnx_copy(onnx_exports, tmp_path / "model")
    script = ("import os, signal, sys\n"
              "import edgekd.artifacts as artifacts\n"
              "real = os.replace\n"
              "def replace_then_die(src, dst):\n"
              "    real(src, dst)\n"
              "    if str(dst).endswith('.onnx'):\n"
              "        os.kill(os.getpid(), signal.SIGKILL)\n"
              "artifacts.os.replace = replace_then_die\n"
              "from edgekd.calibrate import calibrate\n"
              f"calibrate({str(artifact)!r}, {str(clips[0])!r}, 20)\n")
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    assert list(artifact.parent.glob(".*.update.json"))  # the journal of the cut update
    from edgekd.runtime import open_runtime
    with open_runtime(artifact) as runtime:  # would raise "disagree on thresholds" with a half-done update
        assert runtime.info.thresholds["source"] == str(clips[0])
    assert not list(artifact.parent.glob(".*"))  # journal and temps gone

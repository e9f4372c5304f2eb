"""`edgekd run`: a real MP4 with defects at known frames through the onnxruntime backend, a live MJPEG stream that
drops out and comes back, clean shutdown on signals, corrupt frames, a full disk, and clear errors for cameras
that are not there."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgekd.data.images import read_mask
from edgekd.data.layouts import load_dataset
from edgekd.data.video import write_line_video
from edgekd.errors import EdgekdError, RunIncomplete
from edgekd.stream.cli_run import run_stream
from edgekd.stream.request import RunRequest
from edgekd.calibration import Thresholds
from edgekd.stream.detect import Hysteresis, defect_regions, parse_hysteresis
from edgekd.stream.runner import DONE, _NewestQueue
from edgekd.stream.sources import CORRUPT, END, OK, CaptureSettings, open_source

sys.path.insert(0, str(Path(__file__).parent))
from mjpeg_server import MjpegServer  # noqa: E402

DEFECT_FRAMES = [6, 17, 29, 30, 41]


def _run(model, source, tmp_path, **options):
    echo = options.pop("echo", lambda text: None)
    request = RunRequest(**{"device": "cpu", "batch": 4, "stats_every": 0.0, **options})
    return run_stream(request.replace(model=str(model), source=str(source)), echo=echo)


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def line_video(synth_root, tmp_path_factory):
    dataset = load_dataset(synth_root, "wood")
    path = tmp_path_factory.mktemp("video") / "line.mp4"
    return write_line_video(dataset, path, 48, DEFECT_FRAMES, fps=25.0), dataset


@pytest.mark.slow
def test_video_defects_found_at_the_known_frames(onnx_exports, line_video, tmp_path):
    description, dataset = line_video
    model = onnx_exports["fp32"]
    first = tmp_path / "first.jsonl"
    summary = _run(model, description["video"], tmp_path, jsonl=first)
    events = _events(first)
    assert summary["processed"] == 48 == len(events) and [e["frame"] for e in events] == list(range(48))
    scores = np.array([e["score"] for e in events])
    defect = np.isin(np.arange(48), DEFECT_FRAMES)
    # MP4 compression lifts normal scores above the still-image threshold, yet every defective part outscores
    # every normal one; the line's threshold goes in between, as a user would set it for this camera
    assert scores[defect].min() > scores[~defect].max()
    threshold = float((scores[defect].min() + scores[~defect].max()) / 2)
    # The pixel threshold the same way, from the maps' peaks on the decoded frames (the default detector's image
    # score also has its colour branch, so it sits above the map's peak)
    from edgekd.data.images import resize_rgb, to_model_input
    from edgekd.runtime import open_runtime
    capture, frames = cv2.VideoCapture(str(description["video"])), []
    while (read := capture.read())[0]:
        frames.append(resize_rgb(cv2.cvtColor(read[1], cv2.COLOR_BGR2RGB), (128, 128)))
    with open_runtime(model, None, "cpu") as runtime:
        peaks = np.concatenate([runtime.run(to_model_input(np.stack(frames[i:i + 8])))[0].reshape(
            len(frames[i:i + 8]), -1).max(1) for i in range(0, len(frames), 8)])
    assert len(peaks) == 48 and peaks[defect].min() > peaks[~defect].max()
    pixel_threshold = float((peaks[defect].min() + peaks[~defect].max()) / 2)
    events_path, masks = tmp_path / "events.jsonl", tmp_path / "masks"
    _run(model, description["video"], tmp_path, jsonl=events_path, save_masks=masks, threshold=threshold,
         pixel_threshold=pixel_threshold, save_video=tmp_path / "annotated.mp4")
    events = _events(events_path)
    assert [e["frame"] for e in events if e["verdict"] == "defect"] == DEFECT_FRAMES
    assert all(e["regions"] and all(r["area"] > 0 for r in e["regions"]) for e in events if e["verdict"] == "defect")
    assert sorted(p.name for p in masks.iterdir()) == [f"frame_{i:08d}.png" for i in DEFECT_FRAMES]
    samples = {str(s.path): s for s in dataset.test}
    # Each saved mask covers the defect that was really in that frame and lies around it (within one cell of the
    # patch memory's stride-8 grid: 8 px at 128 px input).
    near = np.ones((17, 17), np.uint8)
    for index in DEFECT_FRAMES:
        mask = cv2.imread(str(masks / f"frame_{index:08d}.png"), cv2.IMREAD_GRAYSCALE) > 0
        sample = samples[description["listing"][index]["image"]]
        truth = read_mask(sample.masks, mask.shape, sample.path)
        around = cv2.dilate(truth.astype(np.uint8), near).astype(bool)
        assert mask.any() and (mask & truth).sum() >= 0.5 * truth.sum() and (mask & around).sum() > 0.5 * mask.sum()
    video = cv2.VideoCapture(str(tmp_path / "annotated.mp4"))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 48 and not (tmp_path / "annotated.partial.mp4").exists()


def test_regions_min_area_and_hysteresis():
    amap = np.zeros((32, 32), np.float32)
    amap[2:4, 2:4] = 1.0  # 4 model pixels -> 64 frame pixels at 4x
    amap[10:20, 10:20] = 1.0  # 100 -> 1600
    regions, kept = defect_regions(amap, Thresholds(0.5, 0.5), (128, 128), min_area=100)
    assert [(r.x, r.y, r.w, r.h, r.area) for r in regions] == [(40, 40, 40, 40, 1600)]
    assert kept.sum() == 100 and kept[2:4, 2:4].sum() == 0
    flicker = Hysteresis(2, 3)
    assert [flicker.update(v) for v in [1, 0, 1, 1, 0, 1, 0, 0, 0, 1]] == [0, 0, 0, 1, 1, 1, 1, 1, 0, 0]
    assert parse_hysteresis("2") == (2, 2)
    with pytest.raises(EdgekdError, match="hysteresis"):
        parse_hysteresis("0,1")
    with pytest.raises(EdgekdError, match="no thresholds"):
        Thresholds.resolve({}, None)


def test_live_queue_keeps_the_newest_frames():
    drops = []
    box = _NewestQueue(2, lambda: drops.append(1))
    for item in range(5):
        box.put(item)
    box.put(DONE)
    assert [box.get_nowait(), box.get_nowait()] == [4, DONE] and len(drops) == 4


def _frames(synth_root, count=6):
    paths = sorted((synth_root / "wood" / "test" / "good").glob("*.png"))[:count]
    return [cv2.imread(str(p)) for p in paths]


@pytest.mark.slow
def test_stream_that_drops_out_is_reconnected(onnx_exports, synth_root, tmp_path):
    with MjpegServer(_frames(synth_root), frames_per_connection=12, offline_after_drop=0.8) as camera:
        events_path = tmp_path / "events.jsonl"
        started = time.monotonic()
        summary = _run(onnx_exports["fp32"], camera.url, tmp_path, jsonl=events_path, max_frames=30, threshold=99.0)
        assert summary["reconnects"] >= 2 and camera.connections >= 3
        assert summary["processed"] == len(_events(events_path)) >= 25  # live: a few frames may be dropped
        assert time.monotonic() - started >= 1.5  # it really waited out the camera being offline twice


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_closes_outputs_cleanly(onnx_exports, synth_root, tmp_path, sig):
    with MjpegServer(_frames(synth_root), fps=30.0) as camera:
        events_path, video = tmp_path / "events.jsonl", tmp_path / "out.mp4"
        process = subprocess.Popen([sys.executable, "-m", "edgekd", "run", "--source", camera.url, "--model",
                                    str(onnx_exports["fp32"]), "--jsonl", str(events_path), "--save-video", str(video),
                                    "--device", "cpu", "--stats-every", "0.5"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not events_path.exists() or len(events_path.read_text().splitlines()) < 25):
            time.sleep(0.2)
        process.send_signal(sig)
        out, err = process.communicate(timeout=30)
    # Outputs closed whole, and the exit says the run was cut short (130 for Ctrl-C, 143 for SIGTERM).
    assert process.returncode == 128 + sig, err
    assert "finishing the frames in flight" in err and " fps |" in err  # the periodic stats line ran too
    assert f"error: stopped by {signal.Signals(sig).name}" in err.strip().splitlines()[-1]
    events = _events(events_path)  # every line is whole JSON
    summary = json.loads(out.strip().splitlines()[-1])
    assert len(events) >= 25 and summary["processed"] == len(events)
    assert summary["stopped_by"] == signal.Signals(sig).name and summary["complete"] is False
    capture = cv2.VideoCapture(str(video))
    assert capture.isOpened() and int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == len(events)
    assert not (tmp_path / "out.partial.mp4").exists()


@pytest.mark.slow
def test_corrupt_frames_are_skipped_and_counted(onnx_exports, synth_root, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, image in enumerate(_frames(synth_root, 4)):
        cv2.imwrite(str(folder / f"{i:03d}.png"), image)
    (folder / "002b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    printed = []
    with pytest.raises(RunIncomplete, match="1 of the 5 frames of folder .* were never scored .1 unreadable: 002b.png"):
        _run(onnx_exports["fp32"], folder, tmp_path, jsonl=tmp_path / "e.jsonl", echo=printed.append)
    summary = json.loads(printed[-1])  # counted, named, and the run is not complete
    assert summary["corrupt"] == 1 and summary["processed"] == 4 and summary["corrupt_frames"] == ["002b.png"]
    assert summary["complete"] is False
    source = open_source(folder)
    assert [source.read().status for _ in range(6)] == [OK, OK, OK, CORRUPT, OK, END]


@pytest.mark.slow
def test_full_disk_stops_that_sink_and_detection_goes_on(onnx_exports, line_video, tmp_path, capsys):
    description, _ = line_video
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    masks, printed = tmp_path / "masks", []
    with pytest.raises(RunIncomplete, match="--jsonl /dev/full failed .No space left on device., so the run's outputs"):
        _run(onnx_exports["fp32"], description["video"], tmp_path, jsonl=Path("/dev/full"), save_masks=masks,
             threshold=0.0, echo=printed.append)
    summary = json.loads(printed[-1])  # the summary is printed before the non-zero exit
    assert summary["processed"] == 48 and len(list(masks.iterdir())) == 48
    assert summary["lost_outputs"][0]["output"] == "--jsonl /dev/full" and summary["complete"] is False
    err = capsys.readouterr().err
    assert "--jsonl /dev/full stopped (No space left on device); detection and the other outputs go on" in err


def _cli(*args):
    result = subprocess.run([sys.executable, "-m", "edgekd", "run", *args], capture_output=True, text=True,
                            env={**os.environ, "DISPLAY": ""})
    return result.returncode, result.stderr.strip().splitlines()


@pytest.mark.slow
def test_missing_cameras_and_bad_sources_fail_in_one_line(onnx_exports, tmp_path):
    model = str(onnx_exports["fp32"])
    code, lines = _cli("--camera", "7", "--model", model)
    assert code == 2 and len(lines) == 1 and "camera 7 not found (tried V4L2 index 7" in lines[0]
    code, lines = _cli("--source", "csi://0", "--model", model)
    assert code == 2 and len(lines) == 1 and "GStreamer" in lines[0] and "JetPack" in lines[0]
    code, lines = _cli("--source", str(tmp_path / "missing.mp4"), "--model", model)
    assert code == 2 and "neither a camera index" in lines[-1]
    code, lines = _cli("--model", model)
    assert code == 2 and "exactly one of --camera N or --source" in lines[-1]
    code, lines = _cli("--source", str(tmp_path), "--model", model, "--show")
    assert code == 2 and "--show needs a display" in lines[-1]


@pytest.mark.slow
def test_checkpoint_runs_through_the_torch_backend(wood_checkpoint, line_video, tmp_path):
    description, _ = line_video
    events_path = tmp_path / "events.jsonl"
    summary = _run(wood_checkpoint, description["video"], tmp_path, jsonl=events_path, max_frames=12)
    assert summary["processed"] == 12 and len(_events(events_path)) == 12


def test_stream_that_is_not_there_fails_in_one_line(tmp_path):
    with pytest.raises(EdgekdError, match=r"stream rtsp://127\.0\.0\.1:9/cam could not be opened"):
        open_source("rtsp://127.0.0.1:9/cam")  # the discard port: connection refused


@pytest.mark.slow
def test_run_option_mistakes_fail_in_one_line(onnx_exports, synth_root, tmp_path):
    model = str(onnx_exports["fp32"])
    folder = synth_root / "wood" / "test" / "good"
    code, lines = _cli("--source", str(folder), "--model", model, "--bundle", str(tmp_path / "line.tar.gz"))
    assert code == 2 and "exactly one of --model ARTIFACT or --bundle" in lines[-1]
    code, lines = _cli("--source", str(folder), "--bundle", str(tmp_path / "line.tar.gz"), "--server",
                       "grpc://127.0.0.1:8001")
    assert code == 2 and "--bundle runs its model here" in lines[-1]
    code, lines = _cli("--source", str(folder), "--model", model, "--pixel-threshold", "nan")
    assert code == 2 and len(lines) == 1 and "--pixel-threshold nan is not finite" in lines[0]
    code, lines = _cli("--source", str(folder), "--model", model, "--realtime")
    assert code == 2 and "has no frame rate of its own: give --realtime a rate with --fps" in lines[-1]
    with pytest.raises(EdgekdError, match="already delivers in real time"):
        open_source(7, realtime=True)  # refused before the camera is even looked for


def test_realtime_paces_a_folder_at_fps(synth_root):
    source = open_source(synth_root / "wood" / "test" / "good", CaptureSettings(fps=20.0), realtime=True)
    started = time.monotonic()
    reads = [source.read() for _ in range(6)]
    source.close()
    assert [r.status for r in reads] == [OK] * 6 and source.fps == 20.0
    assert time.monotonic() - started >= 5 / 20 - 0.01  # the first frame at once, then one every 50 ms


def test_a_line_file_runs_like_the_options_and_the_command_line_overrides_it(onnx_exports, synth_root, tmp_path):
    folder = synth_root / "wood" / "test" / "good"
    line = tmp_path / "line.yaml"
    line.write_text(f"model: {onnx_exports['fp32']}\nsource: {folder}\njsonl: {tmp_path / 'from_file.jsonl'}\n"
                    "stats-every: 0\nhysteresis: '2,1'\n")
    result = subprocess.run([sys.executable, "-m", "edgekd", "run", "--config", str(line), "--jsonl",
                             str(tmp_path / "from_cli.jsonl")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "from_file.jsonl").exists()  # the flag given on the command line wins
    assert len(_events(tmp_path / "from_cli.jsonl")) == len(list(folder.glob("*.png")))
    for content, said in (("model: m.onnx\ncamra: 0\n", "'camra' is not an option of 'edgekd run'"),
                          ("model: m.onnx\nbatch: 0\n", f"line file {line}: batch=0 is out of range"),
                          ("- model\n", "must be a YAML mapping")):
        line.write_text(content)
        code, lines = _cli("--config", str(line))
        assert code == 2 and len(lines) == 1 and said in lines[0], lines


def test_loop_plays_a_folder_again_until_stopped(onnx_exports, synth_root, tmp_path):
    folder = synth_root / "wood" / "test" / "good"
    count = len(list(folder.glob("*.png")))
    summary = _run(onnx_exports["fp32"], folder, tmp_path, jsonl=tmp_path / "e.jsonl", loop=True,
                   max_frames=2 * count + 3)
    names = [event["file"] for event in _events(tmp_path / "e.jsonl")]
    assert summary["processed"] == 2 * count + 3 and names[:count] == names[count:2 * count]
    with pytest.raises(EdgekdError, match="--loop plays a file or folder again"):
        open_source(7, loop=True)
    code, lines = _cli("--source", str(folder), "--model", str(onnx_exports["fp32"]), "--loop", "--truth",
                       str(tmp_path / "t.json"))
    assert code == 2 and "--truth counts the frames of one pass" in lines[-1]

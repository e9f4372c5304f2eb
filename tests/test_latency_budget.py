"""A camera does not wait for the model: `--realtime` drops frames (counted) when the model is slower than the clip,
and `--max-latency-ms` drops the frames whose verdict could not be out in time, before they are scored. The model is
the real exported detector, slowed down to stand for a machine that cannot keep up."""

import time

import numpy as np
import pytest

from edgekd.calibration import Thresholds
from edgekd.data.layouts import load_dataset
from edgekd.data.video import write_line_video
from edgekd.errors import EdgekdError
from edgekd.runtime import open_runtime
from edgekd.stream.runner import RunOptions, Runner
from edgekd.stream.sources import CaptureSettings, open_source
from edgekd.stream.request import RunRequest
from edgekd.stream.cli_run import run_stream


class Slowed:
    """The real runtime, taking `per_frame_s` longer for each frame of a batch."""

    def __init__(self, runtime, per_frame_s: float):
        self.runtime, self.per_frame_s = runtime, per_frame_s

    def __getattr__(self, name):
        return getattr(self.runtime, name)

    def run(self, batch: np.ndarray):
        time.sleep(self.per_frame_s * len(batch))
        return self.runtime.run(batch)


@pytest.fixture(scope="module")
def clip(synth_root, tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    return write_line_video(load_dataset(synth_root, "wood"), path, 60, [10, 30], fps=25.0)["video"]


def _run(model, clip, per_frame_s: float, max_latency_ms: float | None, max_batch: int = 8) -> dict:
    runtime = open_runtime(model, None, "cpu")
    source = open_source(str(clip), CaptureSettings(), realtime=True)
    options = RunOptions(Thresholds.resolve(runtime.thresholds, None, None), max_batch=max_batch, stats_every=0.0,
                         max_latency_ms=max_latency_ms)
    try:
        return Runner(source, Slowed(runtime, per_frame_s), [], options, log=lambda text: None).run()
    finally:
        runtime.close()


@pytest.mark.slow
def test_realtime_drops_frames_like_a_camera_when_the_model_is_slower(onnx_exports, clip):
    # 25 FPS in, at most about 12 FPS out (80 ms a frame): a camera would lose the frames it could not hand over
    summary = _run(onnx_exports["fp32"], clip, 0.08, None, max_batch=1)
    assert summary["captured"] == 60 and summary["dropped"] > 10
    assert summary["processed"] + summary["dropped"] == summary["captured"]
    assert summary["over_budget"] == 0 and summary["late"] == 0


@pytest.mark.slow
def test_a_latency_budget_drops_what_cannot_make_it_and_no_verdict_is_late(onnx_exports, clip):
    # 50 ms a frame against a 40 ms clip, batches of up to 8: without a budget the backlog answers about 1 s late
    # (this VM: p50 709 ms, p95 1075 ms; with the budget 153 and 192 ms, 16 of 60 frames over budget)
    free = _run(onnx_exports["fp32"], clip, 0.05, None)
    budget = 250.0
    held = _run(onnx_exports["fp32"], clip, 0.05, budget)
    assert free["latency_ms_p95"] > budget  # the point of the budget
    assert held["over_budget"] > 0 and held["late"] == 0 and held["latency_ms_p95"] <= budget
    assert held["processed"] + held["dropped"] == held["captured"] == 60


def test_a_budget_that_is_not_positive_is_one_line(tmp_path):
    request = RunRequest(model=str(tmp_path / "m.onnx"), source=str(tmp_path / "v.mp4"), max_latency_ms=0.0)
    with pytest.raises(EdgekdError, match="--max-latency-ms 0 must be positive"):
        run_stream(request, echo=lambda text: None)

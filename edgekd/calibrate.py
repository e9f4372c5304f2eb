"""`edgekd calibrate`: thresholds from good frames of the user's own camera or clip, scored through the same
runner and runtime `edgekd run` uses, set by THE rule (edgekd/calibration.py) and written back into the artifact.

A video codec, a lens and a light move normal scores; thresholds from a few PNG files do not survive that. Here
the normal sample is the camera's own output, so the defect threshold sits just above what good parts really score.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgekd.artifacts import read_sidecar, sidecar_path
from edgekd.atomic import write_bytes_atomic
from edgekd.calibration import ADVISED_NORMAL, MIN_NORMAL, ThresholdRule, score_statistics, thresholds_from_normal
from edgekd.errors import EdgekdError
from edgekd.outputs import check_output_file, remove_stale_temps
from edgekd.stream.detect import Thresholds
from edgekd.stream.runner import RunOptions, Runner
from edgekd.stream.sinks import Sink
from edgekd.stream.sources import CaptureSettings, open_source


class _NormalScores(Sink):
    """Collects each frame's image score and hottest pixel."""
    name = "calibration"

    def __init__(self):
        self.scores: list[float] = []
        self.peaks: list[float] = []

    def write(self, result, overlay_bgr):
        self.scores.append(float(result.score))
        self.peaks.append(float(np.max(result.amap)))


@dataclass
class Calibration:
    thresholds: dict
    previous: dict | None
    scores: np.ndarray
    peaks: np.ndarray
    frames_read: int
    written: list[Path]
    plot: Path
    warnings: list[str]

    def headroom(self) -> float:
        """How far the image threshold sits above the largest normal score, in robust spreads of the scores."""
        spread = ThresholdRule().spread(self.scores)
        return (self.thresholds["image"] - float(self.scores.max())) / spread


def collect_normal_scores(runtime, source, frames: int, settings: CaptureSettings, batch: int = 8,
                          log=lambda text: None) -> tuple[np.ndarray, np.ndarray, int]:
    """(image scores, per-frame hottest pixels, frames read) of up to `frames` frames, through the runner."""
    stream = open_source(source, settings)
    sink = _NormalScores()
    never = Thresholds(math.inf, math.inf)  # nothing is flagged while calibrating
    options = RunOptions(never, 0, (1, 1), batch, frames, 0.0, 0.0)
    summary = Runner(stream, runtime, [sink], options, log=log).run()
    return np.array(sink.scores), np.array(sink.peaks), int(summary.get("captured", len(sink.scores)))


def histogram_png(path: Path, scores: np.ndarray, threshold: float, previous: float | None, title: str) -> Path:
    """A PNG histogram of the normal scores with the new (red) and the previous (grey) image threshold."""
    width, height, left, bottom = 720, 360, 50, 40
    image = np.full((height, width, 3), 255, np.uint8)
    marks = [threshold] + ([previous] if previous is not None and math.isfinite(previous) else [])
    lo, hi = float(min(scores.min(), *marks)), float(max(scores.max(), *marks))
    pad = 0.05 * (hi - lo or 1.0)
    lo, hi = lo - pad, hi + pad
    x = lambda v: int(left + (v - lo) / (hi - lo) * (width - left - 20))
    counts, edges = np.histogram(scores, bins=40, range=(lo, hi))
    top = max(1, counts.max())
    for count, a, b in zip(counts, edges[:-1], edges[1:]):
        if count:
            cv2.rectangle(image, (x(a), height - bottom - int(count / top * (height - bottom - 40))),
                          (max(x(a) + 1, x(b) - 1), height - bottom), (180, 120, 40), -1)
    cv2.line(image, (left, height - bottom), (width - 20, height - bottom), (0, 0, 0), 1)
    for value, colour, label in ((previous, (150, 150, 150), "previous"), (threshold, (0, 0, 220), "threshold")):
        if value is not None and math.isfinite(value):
            cv2.line(image, (x(value), 30), (x(value), height - bottom), colour, 2)
            cv2.putText(image, f"{label} {value:.4g}", (min(x(value) + 4, width - 150), 45 if label == "threshold" else 62),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)
    for value in np.linspace(lo, hi, 6):
        cv2.putText(image, f"{value:.3g}", (x(value) - 12, height - bottom + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(image, title, (left, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise EdgekdError(f"could not encode the histogram {path}")
    write_bytes_atomic(path, encoded.tobytes())
    return path


def _history_entry(previous: dict | None, source: str) -> dict:
    return {"thresholds": previous, "replaced": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "by": f"edgekd calibrate ({source})"}


def write_thresholds(artifact: Path, backend: str, thresholds: dict, source: str) -> tuple[dict | None, list[Path]]:
    """Store thresholds in the artifact, keeping the previous ones in its history; returns (previous, files written).
    Checkpoint: one atomic rewrite. ONNX: the graph (mask constant and metadata) and its sidecar are both prepared
    before either replaces its original, so a failure leaves the old pair. Engine: its sidecar (the runtime reads
    thresholds from there; the plan's own mask output keeps its build-time threshold)."""
    if backend == "torch":
        from edgekd.checkpoint import read_checkpoint, update_checkpoint
        payload = read_checkpoint(artifact)
        previous = payload.get("thresholds")
        history = list(payload.get("thresholds_history", [])) + [_history_entry(previous, source)]
        update_checkpoint(artifact, thresholds=thresholds, thresholds_history=history)
        return previous, [artifact]
    info = read_sidecar(artifact)
    remove_stale_temps(artifact.parent, [artifact.name, sidecar_path(artifact).name])  # a killed run's temps
    previous = info.get("thresholds")
    info = {**info, "thresholds": thresholds,
            "thresholds_history": list(info.get("thresholds_history", [])) + [_history_entry(previous, source)]}
    staged: list[tuple[Path, Path]] = []
    try:
        if backend == "onnxruntime":
            import onnx

            from edgekd.export import onnx_export
            graph_tmp = artifact.with_name(f".{artifact.name}.calibrate.tmp")
            staged.append((graph_tmp, artifact))
            model = onnx.load(str(artifact))
            for entry in model.metadata_props:
                if entry.key == "thresholds":
                    entry.value = json.dumps(thresholds)
            onnx_export.write_mask_threshold(model, thresholds["pixel"])
            onnx.save(model, str(graph_tmp))
        side = sidecar_path(artifact)
        side_tmp = side.with_name(f".{side.name}.calibrate.tmp")
        staged.append((side_tmp, side))
        side_tmp.write_text(json.dumps(info, indent=2, default=float))
        for tmp, final in staged:
            tmp.replace(final)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    return previous, [final for _, final in staged]


def calibrate(artifact: Path, source, frames: int, backend: str | None = None, device: str = "auto",
              settings: CaptureSettings | None = None, rule: ThresholdRule | None = None, plot: Path | None = None,
              dry_run: bool = False, log=lambda text: None) -> Calibration:
    from edgekd.runtime import open_runtime
    artifact = Path(artifact)
    plot = check_output_file(plot or artifact.with_name(f"{artifact.stem}.calibration.png"), "--plot", (".png",))
    if not dry_run:
        check_output_file(sidecar_path(artifact) if artifact.suffix != ".ckpt" else artifact, "the artifact")
    with open_runtime(artifact, backend, device) as runtime:
        # The stored values, unchecked: calibrating is how a NaN threshold gets replaced.
        kind, current = runtime.backend, dict(runtime.info.get("thresholds") or {})
        scores, peaks, read = collect_normal_scores(runtime, source, frames, settings or CaptureSettings(None, None, None),
                                                    log=log)
    if len(scores) < MIN_NORMAL:
        raise EdgekdError(f"only {len(scores)} frames came from {source}: calibration needs at least {MIN_NORMAL} good "
                          f"frames (advised {ADVISED_NORMAL}+); record a longer clip or raise --frames")
    rule = rule or ThresholdRule()
    thresholds = {**thresholds_from_normal(scores, peaks[:, None], rule), "source": str(source),
                  "score_stats": score_statistics(scores)}
    warnings = []
    if len(scores) < ADVISED_NORMAL:
        warnings.append(f"{len(scores)} frames is a small sample: the threshold holds, but {ADVISED_NORMAL}+ good "
                        "frames from different parts would be safer")
    previous, written = (current or None, []) if dry_run else write_thresholds(artifact, kind, thresholds, str(source))
    histogram_png(plot, scores, thresholds["image"], (previous or {}).get("image"),
                  f"{artifact.name}: {len(scores)} good frames, image threshold {thresholds['image']:.4g}")
    return Calibration(thresholds, previous, scores, peaks, read, written, plot, warnings)

"""`edgekd calibrate`: thresholds from good frames of the user's own camera or clip, scored through the same
runner and runtime `edgekd run` uses, set by THE rule (edgekd/calibration.py) and written back into the artifact.

A video codec, a lens and a light move normal scores; thresholds from a few PNG files do not survive that. Here
the normal sample is the camera's own output, so the defect threshold sits just above what good parts really score.
"""

from __future__ import annotations

import heapq
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edgekd.artifact_kinds import ArtifactKind, kind_of
from edgekd.artifacts import read_sidecar, replace_together, sidecar_path, update_pending
from edgekd.atomic import write_bytes_atomic
from edgekd.calibration import (ADVISED_NORMAL, MAX_OUTLIER_SHARE, MIN_NORMAL, ThresholdRule, Thresholds, above,
                                all_identical, score_statistics, screen_clip)
from edgekd.errors import EdgekdError
from edgekd.outputs import check_output_file, remove_stale_temps
from edgekd.stream.runner import RunOptions, Runner
from edgekd.sinks import Sink
from edgekd.stream.sources import CaptureSettings, open_source


THUMBNAILS_KEPT = 24  # per ranking (image score, hottest pixel): outliers are among the highest of either
THUMBNAIL_WIDTH = 240
MAX_LISTED = 50  # outlying frames named in the thresholds' record (all are counted in the warning)


class _NormalScores(Sink):
    """Collects each frame's image score, hottest pixel, index and size, and small pictures of the highest-scoring
    frames (the outliers an operator will be asked to look at are among them)."""
    name = "calibration"

    def __init__(self):
        self.scores: list[float] = []
        self.peaks: list[float] = []
        self.levels: list[float] = []  # each frame's median map value: the map's normal level (masks are cut to it)
        self.indices: list[int] = []
        self.sizes: dict[tuple[int, int], int] = {}  # (width, height) -> first frame index of that size
        self._top: dict[str, list[tuple[float, int]]] = {"score": [], "peak": []}
        self.thumbnails: dict[int, bytes] = {}

    def write(self, result, overlay_bgr):
        score, peak = float(result.score), float(np.max(result.amap))
        self.scores.append(score)
        self.peaks.append(peak)
        self.levels.append(float(np.median(result.amap)))
        self.indices.append(result.index)
        h, w = result.image.shape[:2]
        self.sizes.setdefault((w, h), result.index)
        wanted = False
        for key, value in (("score", score), ("peak", peak)):
            ranking = self._top[key]
            if len(ranking) < THUMBNAILS_KEPT or value > ranking[0][0]:
                heapq.heappush(ranking, (value, result.index))
                if len(ranking) > THUMBNAILS_KEPT:
                    heapq.heappop(ranking)
                wanted = True
        if wanted:
            scale = THUMBNAIL_WIDTH / max(1, w)
            small = cv2.resize(result.image, (THUMBNAIL_WIDTH, max(1, int(h * scale))), interpolation=cv2.INTER_AREA)
            ok, encoded = cv2.imencode(".jpg", small)
            if ok:
                self.thumbnails[result.index] = encoded.tobytes()
            kept = {i for ranking in self._top.values() for _, i in ranking}
            for index in [i for i in self.thumbnails if i not in kept]:
                del self.thumbnails[index]


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
    outliers: list[dict] = field(default_factory=list)  # frames above the thresholds: frame, score, peak, picture
    in_rule: np.ndarray | None = None  # bool per frame of `scores`: the frames the thresholds come from

    def headroom(self) -> float:
        """How far the image threshold sits above the largest score it came from, in robust spreads of those."""
        used = self.scores if self.in_rule is None else self.scores[self.in_rule]
        return (self.thresholds["image"] - float(used.max())) / ThresholdRule().spread(used)


def collect_normal_scores(runtime, source, frames: int, settings: CaptureSettings, batch: int = 8,
                          log=lambda text: None) -> tuple[_NormalScores, int]:
    """What the clip's frames scored (up to `frames` of them, through the runner), and how many were read."""
    stream = open_source(source, settings)
    sink = _NormalScores()
    never = Thresholds(math.inf, math.inf)  # nothing is flagged while calibrating
    options = RunOptions(never, 0, (1, 1), batch, frames, 0.0, 0.0)
    summary = Runner(stream, runtime, [sink], options, log=log).run()
    return sink, int(summary.get("captured", len(sink.scores)))


def save_outlier_pictures(sink: _NormalScores, outliers: list[dict], folder: Path) -> Path | None:
    """The outlying frames' pictures (those kept) as <folder>/frame_NNNNNN.jpg, for the operator to review."""
    pictures = [(o, sink.thumbnails[o["frame"]]) for o in outliers if o["frame"] in sink.thumbnails]
    if not pictures:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("frame_*.jpg"):
        stale.unlink()
    for outlier, data in pictures:
        write_bytes_atomic(folder / f"frame_{outlier['frame']:06d}.jpg", data)
        outlier["picture"] = str(folder / f"frame_{outlier['frame']:06d}.jpg")
    return folder


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
    cv2.putText(image, "image score of each good frame", (width // 2 - 110, height - 4), cv2.FONT_HERSHEY_SIMPLEX,
                0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(image, "frames", (4, 40), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(image, str(int(top)), (4, 58), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise EdgekdError(f"could not encode the histogram {path}")
    write_bytes_atomic(path, encoded.tobytes())
    return path


def _history_entry(previous: dict | None, source: str) -> dict:
    return {"thresholds": previous, "replaced": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "by": f"edgekd calibrate ({source})"}


def write_thresholds(artifact: Path, kind: ArtifactKind, thresholds: dict, source: str) -> tuple[dict | None, list[Path]]:
    """Store thresholds where the artifact's kind keeps them, keeping the previous ones in its history; returns
    (previous, files written)."""
    return THRESHOLD_WRITERS[kind.thresholds_in](artifact, thresholds, source)


def _into_checkpoint(artifact: Path, thresholds: dict, source: str) -> tuple[dict | None, list[Path]]:
    """One atomic rewrite of the checkpoint."""
    from edgekd.checkpoint import read_checkpoint, update_checkpoint
    payload = read_checkpoint(artifact)
    previous = payload.get("thresholds")
    history = list(payload.get("thresholds_history", [])) + [_history_entry(previous, source)]
    update_checkpoint(artifact, thresholds=thresholds, thresholds_history=history)
    return previous, [artifact]


def _into_sidecar(artifact: Path, thresholds: dict, source: str, graph_too: bool = False) -> tuple[dict | None, list[Path]]:
    """The sidecar (an engine: the runtime reads thresholds there; the plan's own mask output keeps its build-time
    threshold), and with graph_too the ONNX graph's mask constant and metadata: both prepared before either
    replaces its original, so a failure leaves the old pair."""
    info = read_sidecar(artifact)
    remove_stale_temps(artifact.parent, [artifact.name, sidecar_path(artifact).name])  # a killed run's temps
    previous = info.thresholds
    info = info.replace(thresholds=thresholds,
                        thresholds_history=list(info.thresholds_history) + [_history_entry(previous, source)])
    staged: list[tuple[Path, Path]] = []
    try:
        if graph_too:
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
        side_tmp.write_text(json.dumps(info.to_dict(), indent=2, default=float))
        replace_together(artifact, staged)
    finally:
        for tmp, _ in staged if not update_pending(artifact) else []:
            tmp.unlink(missing_ok=True)
    return previous, [final for _, final in staged]


THRESHOLD_WRITERS = {"checkpoint": _into_checkpoint, "sidecar": _into_sidecar,
                     "graph+sidecar": lambda artifact, thresholds, source: _into_sidecar(artifact, thresholds, source,
                                                                                         graph_too=True)}


def calibrate(artifact: Path, source, frames: int, backend: str | None = None, device: str = "auto",
              settings: CaptureSettings | None = None, rule: ThresholdRule | None = None, plot: Path | None = None,
              dry_run: bool = False, log=lambda text: None, accept_outliers: bool = False) -> Calibration:
    from edgekd.runtime import open_runtime
    artifact = Path(artifact)
    kind = kind_of(artifact, backend)
    # A dry run plots beside the real one: the plot `bundle` ships stays the calibration's in force.
    default_plot = artifact.with_name(f"{artifact.stem}.calibration{'.dry-run' if dry_run else ''}.png")
    plot = check_output_file(plot or default_plot, "--plot", (".png",))
    if not dry_run:
        check_output_file(sidecar_path(artifact) if kind.has_sidecar else artifact, "the artifact")
    with open_runtime(artifact, kind.backend, device) as runtime:
        # The stored values, unchecked: calibrating is how a NaN threshold gets replaced.
        current = dict(runtime.info.thresholds or {})
        sink, read = collect_normal_scores(runtime, source, frames, settings or CaptureSettings(None, None, None), log=log)
    scores, peaks = np.array(sink.scores), np.array(sink.peaks)
    if len(scores) < MIN_NORMAL:
        raise EdgekdError(f"only {len(scores)} frames came from {source}: calibration needs at least {MIN_NORMAL} good "
                          f"frames (advised {ADVISED_NORMAL}+); record a longer clip or raise --frames")
    check_clip(sink, scores, peaks, source)
    rule = rule or ThresholdRule()
    screen = screen_clip(scores, peaks, rule, levels=np.array(sink.levels))
    outliers = [{"frame": sink.indices[i], "score": float(scores[i]), "peak": float(peaks[i]),
                 "spreads_above_median": round(float(screen.excess[i]), 1)} for i in screen.outliers]
    review = save_outlier_pictures(sink, outliers, plot.with_name(f"{plot.stem}.outliers"))
    warnings = []
    if outliers:
        listed = ", ".join(f"frame {o['frame']} (score {o['score']:.4g})" for o in outliers[:5])
        where = f"; pictures in {review}" if review else ""
        if screen.share > MAX_OUTLIER_SHARE and not accept_outliers:
            raise EdgekdError(f"{len(outliers)} of {len(scores)} frames of {source} score far above the rest "
                              f"({listed}{where}): is this clip really of good parts? Record one, or pass "
                              "--accept-outliers to leave them out of the thresholds")
        warnings.append(f"{len(outliers)} of {len(scores)} frames score above the thresholds the rest of the clip "
                        f"sets (as defects would) and were left out of them: {listed}{where}; review them (a defective "
                        "part in the clip?)")
    camera_threshold = current.get("image") if current.get("source") else None  # an earlier calibration's
    if camera_threshold is not None and math.isfinite(camera_threshold) and not accept_outliers:
        above_current = int(np.sum(above(scores, camera_threshold)))
        if above_current > len(scores) / 2:
            raise EdgekdError(f"{above_current} of {len(scores)} frames of {source} score above the current image threshold "
                              f"({camera_threshold:.4g}, from an earlier calibration): this clip looks like defects, not "
                              "good parts, or the camera or light changed; check it, and pass --accept-outliers if "
                              "these are good parts")
    kept_scores = scores[screen.core]
    thresholds = {**screen.thresholds, "source": str(source),
                  "score_stats": score_statistics(kept_scores), "frames_in_rule": int(screen.core.sum()),
                  **({"excluded_frames": outliers[:MAX_LISTED]} if outliers else {})}
    if len(kept_scores) < ADVISED_NORMAL:
        warnings.append(f"{len(kept_scores)} frames is a small sample: the threshold holds, but {ADVISED_NORMAL}+ good "
                        "frames from different parts would be safer")
    previous, written = (current or None, []) if dry_run else write_thresholds(artifact, kind, thresholds, str(source))
    histogram_png(plot, scores, thresholds["image"], (previous or {}).get("image"),
                  f"{artifact.name}: {len(scores)} frames"
                  + (f" ({len(outliers)} outlying)" if outliers else "") + f", image threshold {thresholds['image']:.4g}")
    return Calibration(thresholds, previous, scores, peaks, read, written, plot, warnings, outliers, screen.core)


def check_clip(sink: _NormalScores, scores: np.ndarray, peaks: np.ndarray, source) -> None:
    """Clips no threshold should come from, refused before anything is written."""
    if len(sink.sizes) > 1:
        sizes = ", ".join(f"{w}x{h} (from frame {i})" for (w, h), i in list(sink.sizes.items())[:3])
        raise EdgekdError(f"the frames of {source} change size ({sizes}): the camera's settings changed during the clip; "
                          "record it again at the resolution the line will run at")
    if all_identical(scores) or all_identical(peaks):
        raise EdgekdError(f"every frame of {source} scores the same ({float(scores[0]):.6g}): a covered lens, a frozen "
                          "or dead camera, or one image repeated; record real good parts moving past the camera")

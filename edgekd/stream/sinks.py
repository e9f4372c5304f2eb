"""Where results go: JSONL events, defect masks, an annotated video, a live window. A sink that fails to write
(disk full, folder gone) is stopped on its own; detection and the other sinks go on."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edgekd.data.images import write_image_atomic
from edgekd.errors import EdgekdError
from edgekd.stream.detect import Region
from edgekd.viz import overlay


@dataclass
class Result:
    """One processed frame, as the sinks see it."""
    index: int
    timestamp: float  # wall-clock seconds (Unix time) the frame was captured
    position: float | None  # seconds into a video file
    image: np.ndarray  # BGR frame
    amap: np.ndarray  # anomaly map at the model's input size
    mask: np.ndarray  # uint8 mask at the model's input size, regions below --min-area removed
    score: float
    defective: bool  # this frame alone
    verdict: bool  # after hysteresis
    regions: list[Region] = field(default_factory=list)
    latency_ms: float = 0.0
    fps: float = 0.0
    name: str | None = None  # source file, for folder sources

    def event(self) -> dict:
        return {"frame": self.index, **({"file": self.name} if self.name else {}), "time": round(self.timestamp, 6),
                **({"position_s": round(self.position, 4)} if self.position is not None else {}),
                "score": round(float(self.score), 6), "defective": self.defective,
                "verdict": "defect" if self.verdict else "ok", "regions": [r.to_dict() for r in self.regions],
                "latency_ms": round(self.latency_ms, 2)}


class Sink:
    name = "sink"
    wants_overlay = False

    def write(self, result: Result, overlay_bgr: np.ndarray | None) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def abandon(self) -> Path | None:
        """After a failed write: stop, leave nothing that looks whole but is not; returns what was kept, if any."""
        self.close()
        return None


class JsonlSink(Sink):
    """One JSON object per frame, written straight to the file descriptor: a line that cannot be written whole
    (disk full) is cut back off, so the file only ever holds whole lines and can be tailed while the line runs."""

    def __init__(self, path: Path):
        self.path, self.name = Path(path), f"--jsonl {path}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        self.whole = 0  # bytes of whole lines in the file

    def write(self, result, overlay_bgr):
        line = (json.dumps(result.event()) + "\n").encode()
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(self.fd, view):]
        except OSError:
            try:
                os.ftruncate(self.fd, self.whole)
            except OSError:
                pass  # a device such as /dev/full cannot be truncated; it holds nothing either
            raise
        self.whole += len(line)

    def close(self):
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)


class MaskSink(Sink):
    """A PNG mask (frame size, 255 = defect) for every frame whose verdict is DEFECT: frame_<index>.png."""

    def __init__(self, folder: Path):
        self.folder, self.name = Path(folder), f"--save-masks {folder}"
        self.folder.mkdir(parents=True, exist_ok=True)

    def write(self, result, overlay_bgr):
        if not result.verdict:
            return
        h, w = result.image.shape[:2]
        mask = cv2.resize(result.mask * 255, (w, h), interpolation=cv2.INTER_NEAREST)
        write_image_atomic(self.folder / f"frame_{result.index:08d}.png", mask)


VIDEO_OUT_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi")


class VideoSink(Sink):
    """The annotated stream as a video. It is written under a .partial name and renamed when closed, so a
    crash never leaves a file that looks finished but does not play."""
    wants_overlay = True

    def __init__(self, path: Path, fps: float):
        self.path, self.fps, self.name = Path(path), fps, f"--save-video {path}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.partial = self.path.with_name(self.path.stem + ".partial" + self.path.suffix)
        self.writer = None

    def write(self, result, overlay_bgr):
        if self.writer is None:
            h, w = overlay_bgr.shape[:2]
            fourcc = cv2.VideoWriter_fourcc(*("MJPG" if self.path.suffix.lower() == ".avi" else "mp4v"))
            self.writer = cv2.VideoWriter(str(self.partial), fourcc, self.fps, (w, h))
            if not self.writer.isOpened():
                raise OSError(f"cannot open a video writer for {self.path} (use .mp4 or .avi)")
        self.writer.write(overlay_bgr)
        if os.statvfs(self.partial.parent).f_bavail == 0:  # OpenCV's writer drops frames silently when the disk fills
            raise OSError("no space left on device")

    def close(self):
        if self.writer is not None:
            self.writer.release()
            self.writer = None
            os.replace(self.partial, self.path)

    def abandon(self) -> Path | None:
        """The video stays under its .partial name: it ends where the disk filled and may not play to the end."""
        if self.writer is not None:
            self.writer.release()
            self.writer = None
        return self.partial if self.partial.exists() else None


class WindowSink(Sink):
    """A live window; q or Esc stops the run."""
    wants_overlay = True
    title = "edgekd"

    def __init__(self, request_stop):
        self.check_display()
        self.request_stop, self.name = request_stop, "--show"

    @staticmethod
    def check_display() -> None:
        if os.name == "posix" and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise EdgekdError("--show needs a display and none is set (DISPLAY): run it on the machine's screen, "
                              "or use --save-video")

    def write(self, result, overlay_bgr):
        cv2.imshow(self.title, overlay_bgr)
        if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
            self.request_stop()

    def close(self):
        cv2.destroyAllWindows()


def annotate(result: Result, vmin: float, vmax: float) -> np.ndarray:
    """Heatmap, defect contours, score, verdict and FPS on the frame (BGR in, BGR out)."""
    rgb = cv2.cvtColor(result.image, cv2.COLOR_BGR2RGB)
    out = cv2.cvtColor(overlay(rgb, result.amap, result.mask, vmin, vmax), cv2.COLOR_RGB2BGR)
    for region in result.regions:
        cv2.rectangle(out, (region.x, region.y), (region.x + region.w, region.y + region.h), (0, 0, 255), 2)
    scale = max(out.shape[0] / 480, 0.5)
    colour = (0, 0, 255) if result.verdict else (0, 200, 0)
    text = f"{'DEFECT' if result.verdict else 'OK'}  score {result.score:.3f}  {result.fps:.1f} fps"
    cv2.rectangle(out, (0, 0), (out.shape[1], int(30 * scale)), (0, 0, 0), -1)
    cv2.putText(out, text, (6, int(22 * scale)), cv2.FONT_HERSHEY_SIMPLEX, 0.7 * scale, colour, max(1, int(2 * scale)),
                cv2.LINE_AA)
    return out

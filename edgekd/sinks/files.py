"""Sinks that write files: JSONL events, defect masks, an annotated video. Each write is whole or absent: a sink
that fails (disk full, folder gone) keeps nothing that looks complete."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2

from edgekd.data.images import write_image_atomic
from edgekd.sinks.base import Sink


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

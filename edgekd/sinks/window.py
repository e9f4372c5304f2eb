"""The live window of `edgekd run --show` (q or Esc stops the run)."""

from __future__ import annotations

import os

import cv2

from edgekd.errors import EdgekdError
from edgekd.sinks.base import Sink


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

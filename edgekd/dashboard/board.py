"""What the dashboard shows, kept current by the runner as one more sink: the newest frame, the score history, the
verdict and the recent defect frames.

The sinks thread must never wait for a browser, so `write()` only swaps references under a lock. Annotating and
JPEG encoding happen in the board's own thread: the live picture only while someone watches it, at most
`stream_fps` times a second; a defect frame once when its defect starts and then at most once a second while it
lasts (a defect seen for 10 s is 10 pictures, not 300).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass

import cv2
import numpy as np

from edgekd.sinks.base import Result, Sink, annotate

HISTORY_S = 300.0  # the score chart's memory
GALLERY_SIZE = 24
SHOT_EVERY_S = 1.0  # one gallery picture per second of a lasting defect
STREAM_FPS = 10.0  # the live picture's rate; the detector runs at its own
MAX_WIDTH = 960  # pictures are scaled down to this width before encoding
THUMB_WIDTH = 240
JPEG_QUALITY = 80


@dataclass
class DefectShot:
    id: int
    frame: int
    time: float
    score: float
    regions: list
    name: str | None
    image: bytes  # annotated JPEG
    thumb: bytes

    def describe(self) -> dict:
        return {"id": self.id, "frame": self.frame, "time": round(self.time, 3), "score": round(self.score, 6),
                "regions": self.regions, **({"file": self.name} if self.name else {}),
                "image": f"/api/defects/{self.id}.jpg", "thumb": f"/api/defects/{self.id}.thumb.jpg"}


def encode_jpeg(picture: np.ndarray, width: int) -> bytes:
    if picture.shape[1] > width:
        height = max(1, round(picture.shape[0] * width / picture.shape[1]))
        picture = cv2.resize(picture, (width, height), interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return data.tobytes()


class LiveBoard(Sink):
    name = "--serve"

    def __init__(self, stream_fps: float = STREAM_FPS, history_s: float = HISTORY_S, gallery_size: int = GALLERY_SIZE):
        self.stream_period = 1.0 / stream_fps
        self.history_s = history_s
        self.changed = threading.Condition()
        self.latest: Result | None = None
        self.latest_picture: np.ndarray | None = None  # the annotated frame, when another sink already drew it
        self.history: deque[tuple[int, float, float, bool]] = deque()  # frame, time, score, verdict
        self.gallery: deque[DefectShot] = deque(maxlen=gallery_size)
        self.pending_shots: deque[tuple[Result, np.ndarray | None]] = deque(maxlen=4)  # newest win when behind
        self.last_shot_at: float | None = None
        self.frame_jpeg: tuple[int, bytes] | None = None  # (frame index, JPEG) of the live picture
        self.plain_jpeg: tuple[int, bytes] | None = None  # the same frame as the camera gave it (no heatmap)
        self.viewers = 0
        self.plain_viewers = 0  # of which watch the plain camera picture
        self.started = time.monotonic()
        self.last_frame_at: float | None = None  # monotonic time of the newest result
        self.finished = False
        self.picture_errors = 0  # pictures that could not be drawn (the board goes on; the status says so)
        self.last_picture_error: str | None = None
        self.thresholds = None  # Thresholds of the run, set by attach()
        self.colour = (0.0, 1.0)  # the runner's heatmap scale, so the dashboard's pictures match its video
        self._stats = lambda: None  # the runner's current stats snapshot
        self.context: dict = {}  # model, source, backend: what the page names
        self._encoder = threading.Thread(target=self._encode_loop, name="edgekd-dashboard", daemon=True)
        self._encoder.start()

    def attach(self, thresholds, colour: tuple[float, float], stats, context: dict) -> None:
        """What the board learns from the run before its first frame: the thresholds, the heatmap's colour scale,
        a callable giving the stats snapshot, and what to call the model and source on the page."""
        self.thresholds, self.colour, self._stats, self.context = thresholds, colour, stats, context

    # -- the sink side (runner's sinks thread) -------------------------------------------------------------------
    def write(self, result: Result, overlay_bgr: np.ndarray | None) -> None:
        with self.changed:
            self.latest, self.latest_picture = result, overlay_bgr
            self.last_frame_at = time.monotonic()
            self.history.append((result.index, result.timestamp, result.score, result.verdict))
            while self.history and self.history[0][1] < result.timestamp - self.history_s:
                self.history.popleft()
            if result.verdict:
                starts = len(self.history) < 2 or not self.history[-2][3]
                if starts or self.last_shot_at is None or result.timestamp - self.last_shot_at >= SHOT_EVERY_S:
                    self.pending_shots.append((result, overlay_bgr))
                    self.last_shot_at = result.timestamp
            self.changed.notify_all()

    def close(self) -> None:
        """Ends the streams and waits for the encoder: it must not be inside OpenCV when the interpreter exits
        (a thread still drawing there at exit can abort the process)."""
        with self.changed:
            self.finished = True
            self.changed.notify_all()
        if threading.current_thread() is not self._encoder:
            self._encoder.join(timeout=5.0)

    # -- the encoder thread ---------------------------------------------------------------------------------------
    def _picture(self, result: Result, drawn: np.ndarray | None) -> np.ndarray:
        if drawn is not None:
            return drawn
        return annotate(result, *self.colour)

    def _encode_loop(self) -> None:
        next_frame_at, shot_id = 0.0, 0
        while True:
            with self.changed:
                while True:
                    if self.pending_shots:
                        job = ("shot", *self.pending_shots.popleft())
                        break
                    stale = lambda held: held is None or held[0] != self.latest.index  # noqa: E731
                    overlay = self.viewers > self.plain_viewers and self.latest is not None and stale(self.frame_jpeg)
                    plain = self.plain_viewers > 0 and self.latest is not None and stale(self.plain_jpeg)
                    wanted = overlay or plain
                    wait = next_frame_at - time.monotonic()
                    if wanted and wait <= 0:
                        job = ("frame" if overlay else "plain", self.latest, self.latest_picture)
                        if overlay and plain:
                            job = ("both", self.latest, self.latest_picture)
                        next_frame_at = time.monotonic() + self.stream_period  # also after a picture that fails
                        break
                    if self.finished:  # and no defect picture is pending (taken first, above)
                        return
                    self.changed.wait(timeout=wait if wanted else 0.5)
            kind, result, drawn = job
            try:
                if kind in ("plain", "both"):
                    data = encode_jpeg(result.image, MAX_WIDTH)
                    with self.changed:
                        self.plain_jpeg = (result.index, data)
                        self.changed.notify_all()
                    if kind == "plain":
                        continue
                picture = self._picture(result, drawn)
                if kind == "shot":
                    shot_id += 1
                    shot = DefectShot(shot_id, result.index, result.timestamp, result.score,
                                      [r.to_dict() for r in result.regions], result.name,
                                      encode_jpeg(picture, MAX_WIDTH), encode_jpeg(picture, THUMB_WIDTH))
                    with self.changed:
                        self.gallery.append(shot)
                else:
                    data = encode_jpeg(picture, MAX_WIDTH)
                    with self.changed:
                        self.frame_jpeg = (result.index, data)
                        self.changed.notify_all()
            except Exception as exc:  # noqa: BLE001 - one picture that cannot be drawn is skipped; the page lives on
                with self.changed:
                    self.picture_errors += 1
                    self.last_picture_error = f"{type(exc).__name__}: {exc}"[:200]

    # -- the server side (request threads) -------------------------------------------------------------------------
    @contextmanager
    def watch(self, plain: bool = False):
        """For a stream client: while any is open, the live picture (annotated, or the plain camera image) is
        encoded."""
        with self.changed:
            self.viewers += 1
            self.plain_viewers += int(plain)
            self.changed.notify_all()
        try:
            yield self
        finally:
            with self.changed:
                self.viewers -= 1
                self.plain_viewers -= int(plain)

    def next_frame(self, after: int, timeout: float, plain: bool = False) -> tuple[int, bytes] | None:
        """The next live JPEG newer than frame `after`; None when none came in `timeout` s or the run is over."""
        deadline = time.monotonic() + timeout
        held = (lambda: self.plain_jpeg) if plain else (lambda: self.frame_jpeg)
        with self.changed:
            while held() is None or held()[0] <= after:
                left = deadline - time.monotonic()
                if self.finished or left <= 0:
                    return None
                self.changed.wait(timeout=left)
            return held()

    def current_jpeg(self, timeout: float = 5.0) -> bytes | None:
        """The newest frame as a JPEG. Drawn by the encoder thread like the stream's (request threads never call
        OpenCV): this request watches for one frame."""
        with self.changed:
            if self.latest is None:
                return None
            newest = self.latest.index
        with self.watch():
            frame = self.next_frame(newest - 1, timeout)
        if frame is None:
            with self.changed:
                return self.frame_jpeg[1] if self.frame_jpeg else None
        return frame[1]

    def stats(self) -> dict | None:
        return self._stats()

    def status(self) -> dict:
        with self.changed:
            result, age = self.latest, self.frame_age()
            viewers, finished = self.viewers, self.finished
        thresholds = self.thresholds
        return {**self.context, "running": not finished,
                "thresholds": {"image": thresholds.image, "pixel": thresholds.pixel} if thresholds else None,
                "frame": result.index if result else None, "time": round(result.timestamp, 3) if result else None,
                "score": round(result.score, 6) if result else None,
                "verdict": ("defect" if result.verdict else "ok") if result else None,
                "regions": [r.to_dict() for r in result.regions] if result else [],
                "last_frame_age_s": None if age is None else round(age, 3), "viewers": viewers,
                "picture_errors": self.picture_errors, "last_picture_error": self.last_picture_error,
                "stats": self.stats()}

    def scores(self, since: int = -1) -> dict:
        with self.changed:
            points = [[f, round(t, 3), round(s, 6), int(v)] for f, t, s, v in self.history if f > since]
        thresholds = self.thresholds
        return {"threshold": thresholds.image if thresholds else None, "window_s": self.history_s, "points": points}

    def defects(self) -> list[dict]:
        with self.changed:
            return [shot.describe() for shot in reversed(self.gallery)]

    def defect_picture(self, shot_id: int, thumb: bool) -> bytes | None:
        with self.changed:
            for shot in self.gallery:
                if shot.id == shot_id:
                    return shot.thumb if thumb else shot.image
        return None

    def frame_age(self) -> float | None:
        return None if self.last_frame_at is None else time.monotonic() - self.last_frame_at

    def health(self, stall_s: float) -> tuple[bool, dict]:
        """Healthy while frames flow, or while the run is younger than `stall_s` (the first frame takes a moment)."""
        with self.changed:
            age, finished = self.frame_age(), self.finished
        if finished:
            state = "finished"
        elif age is None:
            state = "starting" if time.monotonic() - self.started < stall_s else "stalled"
        else:
            state = "ok" if age < stall_s else "stalled"
        return state in ("ok", "starting"), {"status": state,
                                             "last_frame_age_s": None if age is None else round(age, 3)}

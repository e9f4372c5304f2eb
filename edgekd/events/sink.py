"""`edgekd run --events DB`: each defect frame into the event store (its line message, the annotated picture as JPEG
and the mask as PNG), and each minute's counts; retention applied as the run goes (--events-keep-days,
--events-max-mb)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgekd.atomic import write_bytes_atomic
from edgekd.errors import EdgekdError
from edgekd.events.store import EventStore
from edgekd.sinks.ages import Ages
from edgekd.sinks.base import Result, Sink, annotate
from edgekd.sinks.line_message import line_message

JPEG_QUALITY = 85


@dataclass
class _Minute:
    minute: int
    frames: int = 0
    defects: int = 0
    max_score: float = float("-inf")
    sum_score: float = 0.0


class EventSink(Sink):
    def __init__(self, store: EventStore, names: dict, colour_range: tuple[float, float]):
        self.store, self.names, self.colour_range = store, names, colour_range
        self.name = "events"
        self.camera = str(names.get("source"))
        self.minute: _Minute | None = None
        self.written = 0
        self.ages = Ages()  # each event's age when committed
        self.parts = 0

    def write(self, result: Result, overlay_bgr: np.ndarray | None) -> None:
        minute = int(result.timestamp // 60)
        if self.minute is not None and self.minute.minute != minute:
            self._flush_minute()
            self.store.apply_retention()
        if self.minute is None:
            self.minute = _Minute(minute)
        self.minute.frames += 1
        self.minute.defects += int(result.verdict)
        self.minute.max_score = max(self.minute.max_score, float(result.score))
        self.minute.sum_score += float(result.score)
        if result.verdict:
            self._event(result, overlay_bgr)

    def _event(self, result: Result, overlay_bgr: np.ndarray | None) -> None:
        stem = f"{int(result.timestamp * 1000)}_{result.index:08d}"
        picture = overlay_bgr if overlay_bgr is not None else annotate(result, *self.colour_range)
        h, w = result.image.shape[:2]
        mask = cv2.resize(result.mask * 255, (w, h), interpolation=cv2.INTER_NEAREST)
        paths = (self.store.files / f"{stem}.jpg", self.store.files / f"{stem}_mask.png")
        for path, image, args in ((paths[0], picture, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]), (paths[1], mask, [])):
            ok, encoded = cv2.imencode(path.suffix, image, args)
            if not ok:
                raise OSError(f"cannot encode {path.name}")
            write_bytes_atomic(path, encoded.tobytes())  # the files first: a committed row always has its files
        self.store.add(line_message(result, self.names), *paths)
        self.written += 1
        self.ages.add(result.timestamp)

    def _flush_minute(self) -> None:
        m = self.minute
        if m is not None and m.frames:
            self.store.add_minute(m.minute, self.camera, m.frames, m.defects, m.max_score, m.sum_score)
        self.minute = None

    def write_part(self, part, message: dict) -> None:
        self.store.add_part(message)
        self.parts += 1

    def counters(self) -> dict:
        return {"events": self.written, "parts": self.parts, "removed_by_retention": self.store.removed,
                **self.ages.summary()}

    def close(self) -> None:
        try:
            self._flush_minute()
            self.store.apply_retention()
        finally:
            self.store.close()


def prepare(request) -> EventStore:
    for option, value in (("--events-keep-days", request.events_keep_days), ("--events-max-mb", request.events_max_mb)):
        if value is not None and not value > 0:
            raise EdgekdError(f"{option} {value:g} must be positive (or left out: no limit)")
    store = EventStore(Path(request.events), request.events_keep_days, request.events_max_mb)
    store.apply_retention()
    return store


def build(store: EventStore, context) -> EventSink:
    return EventSink(store, context.names, context.colour_range)

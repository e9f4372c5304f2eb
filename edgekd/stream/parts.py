"""Parts: how a line rejects. Frames are grouped into parts, by count (`--part-frames N`) or by a trigger the PLC
sends when a part enters the view (an MQTT topic, an OPC UA node: `--part-trigger`); each part gets one verdict,
defective when at least `--part-defects K` of its frames are, with its worst frame (the highest score).

A trigger carries a time: frames captured from that moment on belong to the new part, whatever the runner was
still busy with, so a slow model never moves a frame into the wrong part."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from edgekd.errors import EdgekdError

TRIGGERS = ("mqtt", "opcua")


@dataclass
class Part:
    id: str
    first_frame: int
    last_frame: int = -1
    frames: int = 0
    defect_frames: int = 0
    worst_frame: int = -1
    worst_score: float = float("-inf")
    rejected: bool | None = None  # --reject-if held for one of its frames; None without a rule
    started: float = 0.0  # capture time of its first frame (Unix seconds)
    verdict: bool = False

    def add(self, index: int, timestamp: float, score: float, defective: bool, rejected: bool | None) -> None:
        if not self.frames:
            self.first_frame, self.started = index, timestamp
        self.frames += 1
        self.last_frame = index
        self.defect_frames += int(defective)
        if score > self.worst_score:
            self.worst_frame, self.worst_score = index, float(score)
        if rejected is not None:
            self.rejected = bool(self.rejected) or rejected

    def message(self, names: dict) -> dict:
        return {"part": self.id, "first_frame": self.first_frame, "last_frame": self.last_frame, "frames": self.frames,
                "defect_frames": self.defect_frames, "verdict": "defect" if self.verdict else "ok",
                "worst_frame": self.worst_frame, "worst_score": round(self.worst_score, 6),
                "time": round(self.started, 6), **({"reject": self.rejected} if self.rejected is not None else {}),
                "model": names.get("model"), "camera": names.get("source")}


@dataclass
class PartRule:
    frames: int | None = None  # a part every N frames; None: the trigger decides
    defects: int = 1  # defective when at least this many of its frames are
    trigger: str | None = None  # "mqtt" or "opcua"

    def check(self) -> "PartRule":
        if self.frames is not None and self.trigger is not None:
            raise EdgekdError("--part-frames and --part-trigger both cut parts: give one")
        if self.trigger is not None and self.trigger not in TRIGGERS:
            raise EdgekdError(f"--part-trigger {self.trigger!r} must be one of {', '.join(TRIGGERS)}")
        if self.frames is not None and self.frames < 1:
            raise EdgekdError(f"--part-frames {self.frames} must be at least 1")
        if self.defects < 1 or (self.frames is not None and self.defects > self.frames):
            raise EdgekdError(f"--part-defects {self.defects} must be from 1 to the part's frames"
                              + (f" ({self.frames})" if self.frames else ""))
        return self


@dataclass
class PartGrouper:
    """Fed every processed frame in order (the runner's sink stage); returns the parts that ended."""
    rule: PartRule
    counter: int = 0
    current: Part | None = None
    _triggers: list = field(default_factory=list)  # (capture time, part id) the PLC sent, oldest first
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def trigger(self, part_id: str | None = None, at: float | None = None) -> None:
        """A new part starts now (from any thread: the MQTT or OPC UA client); `part_id` as the PLC names it."""
        with self._lock:
            self._triggers.append((time.time() if at is None else at, part_id))

    def _start(self, part_id: str | None) -> Part:
        self.counter += 1
        return Part(part_id or str(self.counter), -1)

    def _finish(self) -> Part | None:
        part, self.current = self.current, None
        if part is None or not part.frames:
            return None
        part.verdict = part.defect_frames >= self.rule.defects
        return part

    def add(self, index: int, timestamp: float, score: float, defective: bool,
            rejected: bool | None) -> tuple[str | None, list[Part]]:
        """The frame's part id (None before the first trigger) and the parts that ended before it."""
        ended: list[Part] = []
        with self._lock:
            while self._triggers and self._triggers[0][0] <= timestamp:
                _, part_id = self._triggers.pop(0)
                if (done := self._finish()) is not None:
                    ended.append(done)
                self.current = self._start(part_id)
        if self.rule.frames is not None:
            if self.current is None:
                self.current = self._start(None)
        elif self.current is None:
            return None, ended  # waiting for the PLC's first trigger: frames belong to no part
        self.current.add(index, timestamp, score, defective, rejected)
        part_id = self.current.id
        if self.rule.frames is not None and self.current.frames >= self.rule.frames:
            ended.append(self._finish())
        return part_id, ended

    def close(self) -> list[Part]:
        """At the end of the run: the part in progress, if it has frames (a part cut short is still reported)."""
        done = self._finish()
        return [done] if done is not None else []

"""What a sink receives and what it is: one processed frame (`Result`, with its defect `Region`s), the `Sink`
interface, and the annotated picture several sinks draw. Below the stream runner and the dashboard alike."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edgekd.region_sizes import region_sizes
from edgekd.viz import banner, overlay


@dataclass(frozen=True)
class Region:
    x: int
    y: int
    w: int
    h: int
    area: int  # defect pixels, in frame pixels
    length: float = 0.0  # the longer side of its minimum-area rectangle, frame pixels
    width: float = 0.0  # the shorter side
    mm_per_px: float | None = None  # the run's scale (--mm-per-px), when it has one
    rejects: bool | None = None  # whether the run's --reject-if rule holds for it; None without a rule

    def sizes(self) -> dict[str, float]:
        return region_sizes(self.area, self.length, self.width, self.mm_per_px)

    def to_dict(self) -> dict:
        record = {"x": self.x, "y": self.y, "w": self.w, "h": self.h, "area": self.area,
                  "length_px": round(self.length, 2), "width_px": round(self.width, 2)}
        if self.mm_per_px:
            sizes = self.sizes()
            record.update({key: round(sizes[key], 5) for key in ("area_mm2", "length_mm", "width_mm")})
        if self.rejects is not None:
            record["rejects"] = self.rejects
        return record


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
    rejected: bool | None = None  # this frame's part rejected by --reject-if; None without a rule
    part: str | None = None  # the part it belongs to (--part-frames, --part-trigger); None without parts

    def event(self) -> dict:
        return {"frame": self.index, **({"file": self.name} if self.name else {}), "time": round(self.timestamp, 6),
                **({"position_s": round(self.position, 4)} if self.position is not None else {}),
                "score": round(float(self.score), 6), "defective": self.defective,
                "verdict": "defect" if self.verdict else "ok", "regions": [r.to_dict() for r in self.regions],
                **({"reject": self.rejected} if self.rejected is not None else {}),
                **({"part": self.part} if self.part is not None else {}),
                "latency_ms": round(self.latency_ms, 2)}


class Sink:
    name = "sink"
    wants_overlay = False

    def write(self, result: Result, overlay_bgr: np.ndarray | None) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def write_part(self, part, message: dict) -> None:
        """A part ended (edgekd/stream/parts.py): its verdict, as `message` (Part.message). Most outputs ignore it."""

    def counters(self) -> dict | None:
        """What this output has done (messages sent, spooled, dropped, ...), for the summary and /metrics."""
        return None

    def abandon(self) -> Path | None:
        """After a failed write: stop, leave nothing that looks whole but is not; returns what was kept, if any."""
        self.close()
        return None


def annotate(result: Result, vmin: float, vmax: float) -> np.ndarray:
    """Heatmap, defect contours, score, verdict and FPS on the frame (BGR in, BGR out)."""
    rgb = cv2.cvtColor(result.image, cv2.COLOR_BGR2RGB)
    out = cv2.cvtColor(overlay(rgb, result.amap, result.mask, vmin, vmax), cv2.COLOR_RGB2BGR)
    for region in result.regions:
        cv2.rectangle(out, (region.x, region.y), (region.x + region.w, region.y + region.h), (0, 0, 255), 2)
    colour = (0, 0, 255) if result.verdict else (0, 200, 0)  # BGR
    return banner(out, f"{'DEFECT' if result.verdict else 'OK'}  score {result.score:.3f}  {result.fps:.1f} fps", colour)

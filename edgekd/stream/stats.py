"""Running numbers of a stream: per-stage time, end-to-end latency, FPS, drops, corrupt frames, reconnects.
Windows are fixed-size, so a day-long run holds no more than a minute's worth."""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

STAGES = ("capture", "preprocess", "infer", "postprocess", "sinks")
WINDOW = 512


class RunStats:
    def __init__(self):
        self.lock = threading.Lock()
        self.started = time.perf_counter()
        self.counts = {"captured": 0, "processed": 0, "dropped": 0, "corrupt": 0, "reconnects": 0, "defect_frames": 0,
                       "batches": 0, "lost": 0, "rejected": 0, "over_budget": 0, "late": 0, "parts": 0,
                       "defective_parts": 0}
        # lost: frames a remote runtime could not score (server away); rejected: defective frames --reject-if rejects;
        # over_budget: frames dropped unscored because their verdict could not be out within --max-latency-ms (also
        # counted in dropped); late: verdicts that still left the sinks later than the budget
        self.stage_seconds = {name: deque(maxlen=WINDOW) for name in STAGES}
        self.latency = deque(maxlen=WINDOW)
        self.finished = deque(maxlen=WINDOW)  # completion times, for the current FPS
        self.batch_sizes = deque(maxlen=WINDOW)

    def count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] += n

    def stage(self, name: str, seconds: float) -> None:
        with self.lock:
            self.stage_seconds[name].append(seconds)

    def batch(self, size: int, seconds: float) -> None:
        with self.lock:
            self.counts["batches"] += 1
            self.batch_sizes.append(size)
            self.stage_seconds["infer"].append(seconds / size)  # per frame, comparable with the other stages

    def done(self, latency: float, defective: bool) -> None:
        now = time.perf_counter()
        with self.lock:
            self.counts["processed"] += 1
            self.counts["defect_frames"] += int(defective)
            self.latency.append(latency)
            self.finished.append(now)

    def fps(self) -> float:
        with self.lock:
            if len(self.finished) < 2:
                return 0.0
            span = self.finished[-1] - self.finished[0]
            return (len(self.finished) - 1) / span if span > 0 else 0.0

    def snapshot(self) -> dict:
        fps = self.fps()
        with self.lock:
            stages = {k: round(1e3 * float(np.mean(v)), 3) if v else None for k, v in self.stage_seconds.items()}
            latency = np.array(self.latency) * 1e3 if self.latency else np.zeros(1)
            elapsed = time.perf_counter() - self.started
            return {**self.counts, "fps": round(fps, 2), "mean_fps": round(self.counts["processed"] / elapsed, 2)
                    if elapsed > 0 else 0.0, "stage_ms": stages, "latency_ms_p50": round(float(np.percentile(latency, 50)), 2),
                    "latency_ms_p95": round(float(np.percentile(latency, 95)), 2),
                    "mean_batch": round(float(np.mean(self.batch_sizes)), 2) if self.batch_sizes else None,
                    "seconds": round(elapsed, 2)}

    def line(self) -> str:
        s = self.snapshot()
        stages = " ".join(f"{k[:5]} {v:.1f}" for k, v in s["stage_ms"].items() if v is not None)
        return (f"{s['fps']:.1f} fps | ms/frame {stages} | batch {s['mean_batch'] or 0:.1f} | latency p50 "
                f"{s['latency_ms_p50']:.0f} p95 {s['latency_ms_p95']:.0f} ms | frames {s['processed']} defects "
                f"{s['defect_frames']} dropped {s['dropped']} corrupt {s['corrupt']} reconnects {s['reconnects']}"
                + (f" lost {s['lost']}" if s["lost"] else "") + (f" rejected {s['rejected']}" if s["rejected"] else ""))

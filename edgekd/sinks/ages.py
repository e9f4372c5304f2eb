"""How old a verdict is when it leaves an output (acknowledged by the broker or the receiver, written to the OPC UA
nodes, committed to the event store): the capture time to then, kept for the recent frames."""

from __future__ import annotations

import collections
import threading
import time

import numpy as np

KEPT = 2048  # recent ages kept for p50/p99


class Ages:
    def __init__(self):
        self._ages: collections.deque[float] = collections.deque(maxlen=KEPT)
        self._lock = threading.Lock()

    def add(self, captured: float | None) -> None:
        """`captured`: the frame's capture time, Unix seconds (Result.timestamp)."""
        if captured is not None:
            with self._lock:
                self._ages.append((time.time() - captured) * 1000.0)

    def summary(self) -> dict:
        with self._lock:
            ages = np.array(self._ages)
        if not len(ages):
            return {}
        return {"age_ms_p50": round(float(np.percentile(ages, 50)), 2),
                "age_ms_p99": round(float(np.percentile(ages, 99)), 2)}

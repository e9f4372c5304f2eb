"""How edgekd times models against each other in one process: one definition, used by `edgekd benchmark`
(edgekd/bench/measure.py) and by the scripts under benchmarks/.

- Interleaved turns in rotating order: round r starts with the (r mod n)-th model, so every model takes every
  position equally often and a machine that slows down mid-run slows every model alike.
- Every turn starts with one untimed call. onnxruntime's idle intra-op threads keep spinning for a while after a run
  (its default, which edgekd's runtime keeps) and take the cores from whatever runs next; the untimed call absorbs
  that. Without it, two exports timed in alternating turns came out 1.32x / 1.46x; with it, 1.06x / 1.15x, where a
  copy of the first graph, the control, ran 0.99x / 1.02x (benchmarks/results/beside-anomalib-speed/speed_tried.md, item 6).
- Spinning stays on: turning it off also removed the bias, but every operator then waits for its threads to wake,
  which makes graphs of many small operators (the scoring) look dearer than they are in use: the STFPM FP32
  scoring's share of its graph came out 11.3% / 10.4% (batch 1 / 8) with spinning off and 9.8% / 9.2% with it on,
  in two runs of scoring_lowering.py the same hour.
- A run's own noise is the spread of a model's per-round medians relative to their median: a change smaller than
  that is not a change.

The shared anomalib harness (../shared/peers/anomalib/speed_bench.py) has its own options: benchmarks/vs_anomalib.py
runs it with `--order rotate`.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np


def session_options(threads: int = 2):
    """onnxruntime SessionOptions for interleaved timing: `threads` intra-op threads (0: onnxruntime's default), one
    inter-op thread, warnings only."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    return options


def rotated(keys: list, round_index: int) -> list:
    """The order of one round: `keys` starting at position round_index mod len(keys)."""
    shift = round_index % len(keys)
    return keys[shift:] + keys[:shift]


def timed_turn(call: Callable[[], object], *, seconds: float | None = None, calls: int | None = None) -> list[float]:
    """One model's turn: an untimed call, then timed calls, `calls` of them or as many as start within `seconds`
    (at least one). Returns the seconds of each timed call."""
    if (seconds is None) == (calls is None):
        raise ValueError("a turn is timed by seconds or by calls, one of them")
    call()  # untimed: the previous turn's spinning threads
    durations: list[float] = []
    ends = time.perf_counter() + (seconds or 0.0)
    while True:
        started = time.perf_counter()
        call()
        now = time.perf_counter()
        durations.append(now - started)
        if (calls is not None and len(durations) >= calls) or (seconds is not None and now >= ends):
            return durations


def noise(round_medians: list[float]) -> float | None:
    """How far a model's per-round medians spread, relative to their median; None with fewer than two rounds."""
    medians = np.asarray(round_medians, dtype=np.float64)
    return float((medians.max() - medians.min()) / np.median(medians)) if medians.size > 1 else None

"""How this project's speed scripts time onnxruntime sessions against each other in one process: one definition.

- Every turn starts with one untimed run. onnxruntime's idle intra-op threads keep spinning for a while after a run
  (its default, which edgekd's runtime keeps) and take the cores from whatever runs next; the untimed run absorbs
  that. Without it, two exports timed in alternating turns came out 1.32x / 1.46x; with it, 1.06x / 1.15x, where a
  copy of the first graph, the control, ran 0.99x / 1.02x (benchmarks/results/speed_tried.md, item 6).
- Spinning stays on: turning it off also removed the bias, but every operator then waits for its threads to wake,
  which makes graphs of many small operators (the scoring) look dearer than they are in use: the STFPM FP32
  scoring's share of its graph came out 11.3% / 10.4% (batch 1 / 8) with spinning off and 9.8% / 9.2% with it on,
  in two runs of scoring_lowering.py the same hour.
- Rotating order: round r starts with the (r mod n)-th session, so every session takes every position equally often.

The shared anomalib harness (../shared/peers/anomalib/speed_bench.py) has its own options: benchmarks/vs_anomalib.py
runs it with `--order rotate`.
"""

from __future__ import annotations


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

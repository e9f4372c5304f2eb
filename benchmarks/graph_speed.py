#!/usr/bin/env python
"""Throughput of several ONNX graphs in one onnxruntime process, in interleaved turns (A B C, B C A, ...; each
turn starts with an untimed run: edgekd/bench/timing.py).

For comparing forms of one model made by different code (e.g. a family before and after a change): export each
graph with the code in question, then time them here side by side, so only ratios from one run are compared.

    python benchmarks/graph_speed.py before=/tmp/afkd_before.onnx after=/tmp/afkd_after.onnx --name afkd_speed
Writes benchmarks/results/<--name>.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import json
import time
from pathlib import Path

import numpy as np

from edgekd.atomic import write_bytes_atomic
from edgekd.machine import machine_info
from edgekd.bench.timing import rotated, session_options, timed_turn
sys.path.insert(0, str(Path(__file__).resolve().parent))  # studies.py, however this is loaded
from studies import folder_of  # noqa: E402

RESULTS = folder_of("paper fidelity")  # this study's folder (benchmarks/studies.py)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("graphs", nargs="+", help="LABEL=PATH.onnx")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="per graph per round")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    parser.add_argument("--name", required=True)
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    import onnxruntime as ort
    options = session_options(args.threads)
    sessions = {}
    for item in args.graphs:
        label, _, path = item.partition("=")
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        shape = [args.batch if not isinstance(d, int) else d for d in session.get_inputs()[0].shape]
        sessions[label] = (session, np.random.default_rng(0).random(shape, np.float32), path)
    rates: dict[str, list[float]] = {label: [] for label in sessions}
    for round_ in range(args.rounds):
        for label in rotated(list(sessions), round_):
            session, frames, _ = sessions[label]
            turn = timed_turn(lambda: session.run(None, {"images": frames}), seconds=args.seconds)
            rates[label].append(len(turn) * len(frames) / sum(turn))
        print(f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items()), flush=True)
    first = next(iter(rates))
    rows = [{"graph": label, "path": sessions[label][2], "images_per_s": float(np.median(v)),
             "x_first": float(np.median(np.array(v) / np.array(rates[first])))} for label, v in rates.items()]
    report = {"name": args.name, "machine": machine_info(), "batch": args.batch, "rounds": args.rounds,
              "date": time.strftime("%Y-%m-%d %H:%M"), "note": args.note, "rows": rows, "rates": rates}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(RESULTS / f"{args.name}.json", json.dumps(report, indent=2).encode())
    lines = [f"# {args.name}: onnxruntime FP32 throughput, interleaved turns", "",
             f"{report['date']}, {report['machine']['cpu']} x{report['machine']['cores']}, batch {args.batch}, medians of "
             f"{args.rounds} rounds of {args.seconds:g} s per graph. {args.note}", "",
             f"| graph | images/s | x {first} (median of per-round ratios) |", "|---|---|---|"]
    lines += [f"| {r['graph']} | {r['images_per_s']:.1f} | {r['x_first']:.2f} |" for r in rows]
    write_bytes_atomic(RESULTS / f"{args.name}.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

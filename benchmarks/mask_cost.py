#!/usr/bin/env python
"""What region cores cost `edgekd run`: end-to-end FPS and post-processing time, plain masks against cores.

The same exported model (onnxruntime FP32, the fastest CPU path's shape of work) runs a line video through the
runner with its thresholds as they are (masks cut to region cores, `background` known) and with the normal level
dropped (the map above the pixel threshold, as every artifact before), in alternating rounds (edgekd/bench/timing.py
rotated); the defect_regions step alone is timed on the category's test maps the same way. Target: the runner at
>= 0.95x of its FPS without cores.

    python benchmarks/mask_cost.py --checkpoint runs/real/real32_floor_a/package/model.ckpt --category package
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgekd.atomic import write_bytes_atomic
from edgekd.bench.timing import rotated, timed_turn
from edgekd.calibration import Thresholds
from edgekd.data.layouts import load_dataset
from edgekd.data.loading import load_images
from edgekd.data.video import write_line_video
from edgekd.export.exporter import export_checkpoint
from edgekd.machine import machine_info
from edgekd.runtime import open_runtime
from edgekd.sinks import JsonlSink
from edgekd.stream.detect import defect_regions
from edgekd.stream.runner import RunOptions, Runner
from edgekd.stream.sources import open_source
sys.path.insert(0, str(Path(__file__).resolve().parent))
from studies import folder_of  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def run_fps(runtime, video: Path, thresholds: Thresholds, out: Path) -> float:
    summary = Runner(open_source(str(video)), runtime, [JsonlSink(out)], RunOptions(thresholds, max_batch=8,
                                                                                     stats_every=0.0),
                     log=lambda text: None).run()
    return float(summary["mean_fps"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--category", required=True)
    parser.add_argument("--data", type=Path, default=REPO / "data" / "real")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--results", type=Path, default=folder_of("mask fidelity"))
    parser.add_argument("--name", default="mask_cost")
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M")
    dataset = load_dataset(args.data, args.category)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        onnx_path = export_checkpoint(args.checkpoint, "fp32", out_dir=work / "export").artifact
        video = work / "line.mp4"
        write_line_video(dataset, video, args.frames, list(range(9, args.frames, 10)), fps=25.0)
        with open_runtime(onnx_path, "onnxruntime", "cpu") as runtime:
            stored = runtime.thresholds
            if stored.get("background") is None:
                sys.exit(f"{args.checkpoint} has no normal level in its thresholds: calibrate it with this edgekd first")
            forms = {"plain": Thresholds(stored["image"], stored["pixel"]),
                     "cores": Thresholds(stored["image"], stored["pixel"], stored["background"])}
            maps = runtime.infer(load_images(dataset.test, runtime.input_size), 8).maps
            fps = {name: [] for name in forms}
            post = {name: [] for name in forms}
            for round_index in range(args.rounds):
                for name in rotated(list(forms), round_index):
                    fps[name].append(run_fps(runtime, video, forms[name], work / f"{name}.jsonl"))
                    turn = timed_turn(lambda: [defect_regions(m, forms[name], m.shape, 0) for m in maps], calls=3)
                    post[name].append(float(np.median(turn)) / len(maps) * 1e3)
                print(round_index, {k: round(v[-1], 2) for k, v in fps.items()}, flush=True)
    rows = {name: {"fps_median": float(np.median(fps[name])), "fps_rounds": fps[name],
                   "postprocess_ms_per_frame": float(np.median(post[name]))} for name in forms}
    ratio = rows["cores"]["fps_median"] / rows["plain"]["fps_median"]
    machine = machine_info()
    payload = {"benchmark": args.name, "date": started, "machine": machine, "checkpoint": str(args.checkpoint),
               "category": args.category, "backend": "onnxruntime fp32", "rows": rows, "fps_ratio": ratio,
               "target": 0.95}
    args.results.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(args.results / f"{args.name}.json", json.dumps(payload, indent=2).encode())
    text = (f"# What region cores cost `edgekd run` ({args.category})\n\nMeasured {started} on {machine.get('cpu')} "
            f"({machine.get('cores')} cores): `{args.checkpoint}` exported to onnxruntime FP32, a {args.frames}-frame "
            f"line video through the runner, {args.rounds} alternating rounds.\n\n"
            "| masks | runner FPS (median) | defect_regions ms per frame |\n|---|---|---|\n"
            + "".join(f"| {name} | {rows[name]['fps_median']:.2f} | {rows[name]['postprocess_ms_per_frame']:.3f} |\n"
                      for name in forms)
            + f"\nCores against plain: {ratio:.3f}x FPS (target >= 0.95x).\n")
    write_bytes_atomic(args.results / f"{args.name}.md", text.encode())
    print(text)


if __name__ == "__main__":
    main()

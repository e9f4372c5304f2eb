#!/usr/bin/env python
"""The patch memory's matrix product in INT8 or float, in the onnxruntime INT8 export of the default detector:
accuracy per category on the real-texture benchmark and model-only speed, both forms from the same checkpoint.

Accuracy: each export's own check (points lost against the checkpoint's FP32 export on the category's test split).
Speed: the two exports of one category in one onnxruntime process, 2 intra-op threads, the category's test images,
interleaved rounds (the order alternates), medians of the per-round ratios. This is what decided
edgekd/export/quantize.py memory_product_nodes.

    python benchmarks/memory_int8.py --runs runs/real/real_textures_colour_both
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import edgekd.export.quantize as quantize
from edgekd.artifacts import read_sidecar
from edgekd.atomic import write_bytes_atomic
from edgekd.data.images import to_model_input
from edgekd.data.layouts import load_dataset
from edgekd.data.loading import load_images
from edgekd.data.real_textures import parse_categories
from edgekd.export.exporter import GATED_METRICS, export_checkpoint
from edgekd.machine import machine_info

REPO = Path(__file__).resolve().parents[1]
FORMS = ("memory float", "memory int8")


def export_form(checkpoint: Path, data: Path, category: str, form: str, out: Path):
    """The onnxruntime INT8 export with the memory's product quantized (today's rule) or kept float (the earlier
    one: no product node is handed to the quantizer)."""
    chosen = quantize.memory_product_nodes
    if form == "memory float":
        quantize.memory_product_nodes = lambda graph: []
    try:
        return export_checkpoint(checkpoint, "int8", out_dir=out, name=category, data=data, category=category,
                                 int8_for="onnxruntime", int8_stems="int8", force=True)
    finally:
        quantize.memory_product_nodes = chosen


def speed(artifacts: dict[str, Path], images: np.ndarray, rounds: int) -> dict:
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 2, 1
    sessions = {form: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                for form, path in artifacts.items()}
    name = next(iter(sessions.values())).get_inputs()[0].name
    result = {}
    for batch in (1, 8):
        feed = {name: images[:batch]}
        repeats = max(1, 8 // batch)
        for session in sessions.values():
            session.run(None, feed)
        seconds = {form: [] for form in sessions}
        for turn in range(rounds):
            for form in (FORMS if turn % 2 == 0 else FORMS[::-1]):
                started = time.perf_counter()
                for _ in range(repeats):
                    sessions[form].run(None, feed)
                seconds[form].append((time.perf_counter() - started) / (repeats * batch))
        ratios = [a / b for a, b in zip(seconds["memory float"], seconds["memory int8"])]
        result[f"batch {batch}"] = {"img_s": {form: round(1 / statistics.median(s), 1) for form, s in seconds.items()},
                                    "int8_over_float": round(statistics.median(ratios), 3)}
        print(batch, result[f"batch {batch}"], flush=True)
    return result


def report(payload: dict) -> str:
    lines = [f"# The patch memory's product in the onnxruntime INT8 export: INT8 or float ({payload['date']})", "",
             f"Checkpoints `{payload['runs']}` (the default detector), data `{payload['data']}`, stems INT8 in both "
             f"forms. Machine: {payload['machine'].get('cpu', '?')}, {payload['machine'].get('cores', '?')} cores. "
             "Made by `benchmarks/memory_int8.py`.", "",
             "## Accuracy: points lost against the FP32 export (positive = worse)", "",
             "| category | memory float: img / pix / AUPRO | memory INT8: img / pix / AUPRO |", "|---|---|---|"]
    for row in payload["rows"]:
        cells = [" / ".join(f"{row[form][m]:+.2f}" for m in GATED_METRICS) for form in FORMS]
        lines.append(f"| {row['category']} | {cells[0]} | {cells[1]} |")
    worst = {form: max(row[form][m] for row in payload["rows"] for m in GATED_METRICS) for form in FORMS}
    lines += ["", f"Worst drop: memory float {worst['memory float']:+.2f}, memory INT8 {worst['memory int8']:+.2f}.", "",
              f"## Speed, model only (`{payload['speed_category']}`, {payload['rounds']} interleaved rounds)", "",
              "| batch | memory float img/s | memory INT8 img/s | INT8 / float (median of rounds) |", "|---|---|---|---|"]
    for batch, values in payload["speed"].items():
        lines.append(f"| {batch.split()[1]} | {values['img_s']['memory float']} | {values['img_s']['memory int8']} | "
                     f"{values['int8_over_float']:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "data" / "real")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "real" / "real_textures_colour_both")
    parser.add_argument("--categories", default="all")
    parser.add_argument("--speed-category", default="cork")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--name", default="memory_int8")
    args = parser.parse_args()
    rows, artifacts, started = [], {}, time.strftime("%Y-%m-%d %H:%M")
    work = Path(tempfile.mkdtemp(prefix="edgekd-memory-int8-"))
    for category in parse_categories(args.categories):
        row = {"category": category}
        for form in FORMS:
            result = export_form(args.runs / category / "model.ckpt", args.data, category, form,
                                 work / form.replace(" ", "_"))
            row[form] = {m: float(result.deltas[m]) for m in GATED_METRICS}
            artifacts[(category, form)] = result.artifact
        print(category, {form: row[form] for form in FORMS}, flush=True)
        rows.append(row)
    timed = {form: artifacts[(args.speed_category, form)] for form in FORMS}
    size = tuple(read_sidecar(timed["memory int8"])["input_size"])
    images = to_model_input(load_images(load_dataset(args.data, args.speed_category).test[:8], size))
    timing = speed(timed, images, args.rounds)
    payload = {"benchmark": args.name, "date": started, "machine": machine_info(), "runs": str(args.runs),
               "data": str(args.data), "rows": rows, "speed_category": args.speed_category, "rounds": args.rounds,
               "speed": timing}
    args.results.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(args.results / f"{args.name}.json", json.dumps(payload, indent=2).encode())
    text = report(payload)
    write_bytes_atomic(args.results / f"{args.name}.md", text.encode())
    print(text)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Forms of the onnxruntime INT8 export of the default detector, side by side: accuracy per category on the
real-texture benchmark and model-only speed, every form from the same checkpoint.

Forms: "today" (what `edgekd export --precision int8 --int8-for onnxruntime` writes), and today's with one earlier
choice put back:
- "memory float": the patch memory's product left float (edgekd/export/quantize.py memory_product_nodes);
- "product without bias": the memory's squared norms added after the integer product instead of as its bias
  (edgekd/export/quantize.py _product_with_bias);
- "stems float": the stem-to-stride-4 segments in float (`--int8-stems float`, which keeps the memory's product
  float too).

Accuracy: each export's own check (points lost against the checkpoint's FP32 export on the category's test split).
Speed: the exports of one category in one onnxruntime process, 2 intra-op threads, the category's test images,
interleaved rounds as edgekd/bench/timing.py says (an untimed run to start each turn, rotating order), medians
of the per-round ratios to the first form. The first run of this script (then memory_int8.py, no untimed run per
turn) gave the INT8 memory product 1.23x / 1.47x; this way, 1.23x / 1.37x.

    python benchmarks/int8_forms.py --forms "product without bias,today"

Made results/int8-forms/int8_forms.md, and results/int8-forms/memory_int8.md while it was benchmarks/memory_int8.py (forms "memory float"
and "memory int8", the latter that day's form).
"""

from __future__ import annotations

import argparse
import sys
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import edgekd.export.quantize as quantize
from edgekd.artifacts import read_sidecar
from edgekd.data.images import to_model_input
from edgekd.data.layouts import load_dataset
from edgekd.data.loading import load_images
from edgekd.data.real_textures import parse_categories
from edgekd.export.exporter import GATED_METRICS, export_checkpoint
from edgekd.machine import machine_info
from edgekd.bench.timing import rotated, session_options, timed_turn
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the modules beside this script, however it is loaded
from results_files import write_results  # noqa: E402
from studies import folder_of  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# form -> (module, attribute, stand-in) that puts the earlier choice back for one export, or the export's option
EARLIER_CHOICES = {
    "today": None,
    "memory float": (quantize, "memory_product_nodes", lambda graph: []),
    "product without bias": (quantize, "_product_with_bias", lambda model, names: 0),
    "stems float": {"int8_stems": "float"},
}


def export_form(checkpoint: Path, data: Path, category: str, form: str, out: Path):
    """The onnxruntime INT8 export in `form`."""
    choice, options = EARLIER_CHOICES[form], {"int8_stems": "int8"}
    if isinstance(choice, dict):
        choice, options = None, {**options, **choice}
    if choice is not None:
        module, attribute, stand_in = choice
        chosen = getattr(module, attribute)
        setattr(module, attribute, stand_in)
    try:
        return export_checkpoint(checkpoint, "int8", out_dir=out, name=category, data=data, category=category,
                                 int8_for="onnxruntime", force=True, **options)
    finally:
        if choice is not None:
            setattr(module, attribute, chosen)


def speed(artifacts: dict[str, Path], images: np.ndarray, rounds: int) -> dict:
    """img/s per form and the median per-round ratio of each form's speed to the first form's."""
    import onnxruntime as ort
    options = session_options(2)
    sessions = {form: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                for form, path in artifacts.items()}
    name = next(iter(sessions.values())).get_inputs()[0].name
    result = {}
    for batch in (1, 8):
        feed = {name: images[:batch]}
        repeats = max(1, 8 // batch)
        forms = list(sessions)
        seconds = {form: [] for form in forms}
        for turn in range(rounds):
            for form in rotated(forms, turn):
                turn = timed_turn(lambda: sessions[form].run(None, feed), calls=repeats)
                seconds[form].append(sum(turn) / (repeats * batch))
        result[f"batch {batch}"] = {
            "img_s": {form: round(1 / statistics.median(s), 1) for form, s in seconds.items()},
            "x_first": {form: round(statistics.median(a / b for a, b in zip(seconds[forms[0]], s)), 3)
                        for form, s in seconds.items()}}
        print(batch, result[f"batch {batch}"], flush=True)
    return result


def report(payload: dict) -> str:
    forms = payload["forms"]
    lines = [f"# Forms of the onnxruntime INT8 export: {', '.join(forms)} ({payload['date']})", "",
             f"Checkpoints `{payload['runs']}`, data `{payload['data']}`, stems INT8 in every form but \"stems "
             f"float\". Machine: {payload['machine'].get('cpu', '?')}, {payload['machine'].get('cores', '?')} cores. "
             f"Made by `benchmarks/int8_forms.py --forms \"{','.join(forms)}\"` (the forms: its docstring).", "",
             "## Accuracy: points lost against the FP32 export (positive = worse)", "",
             "| category | " + " | ".join(f"{form}: img / pix / AUPRO" for form in forms) + " |",
             "|---|" + "---|" * len(forms)]
    for row in payload["rows"]:
        cells = [" / ".join(f"{row[form][m]:+.2f}" for m in GATED_METRICS) for form in forms]
        lines.append(f"| {row['category']} | " + " | ".join(cells) + " |")
    worst = {form: max(row[form][m] for row in payload["rows"] for m in GATED_METRICS) for form in forms}
    lines += ["", "Worst drop: " + ", ".join(f"{form} {value:+.2f}" for form, value in worst.items()) + ".", "",
              f"## Speed, model only (`{payload['speed_category']}`, {payload['rounds']} interleaved rounds)", "",
              "| batch | " + " | ".join(f"{form} img/s" for form in forms) + " | "
              + " | ".join(f"{form} / {forms[0]}" for form in forms[1:]) + " |",
              "|---|" + "---|" * (2 * len(forms) - 1)]
    for batch, values in payload["speed"].items():
        lines.append(f"| {batch.split()[1]} | " + " | ".join(str(values["img_s"][form]) for form in forms) + " | "
                     + " | ".join(f"{values['x_first'][form]:.2f}x" for form in forms[1:]) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--forms", default="product without bias,today",
                        help=f"comma-separated, the first is the reference for speed: {', '.join(EARLIER_CHOICES)}")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "real")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "real" / "real_textures_layout")
    parser.add_argument("--categories", default="all")
    parser.add_argument("--speed-category", default="cork")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--results", type=Path, default=folder_of("INT8 forms"))
    parser.add_argument("--name", default="int8_forms")
    args = parser.parse_args()
    forms = [form.strip() for form in args.forms.split(",") if form.strip()]
    unknown = [form for form in forms if form not in EARLIER_CHOICES]
    if len(forms) < 2 or unknown:
        parser.error(f"--forms needs two or more of {', '.join(EARLIER_CHOICES)}"
                     + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    rows, artifacts, started = [], {}, time.strftime("%Y-%m-%d %H:%M")
    work = Path(tempfile.mkdtemp(prefix="edgekd-int8-forms-"))
    for category in parse_categories(args.categories):
        row = {"category": category}
        for form in forms:
            result = export_form(args.runs / category / "model.ckpt", args.data, category, form,
                                 work / form.replace(" ", "_"))
            row[form] = {m: float(result.deltas[m]) for m in GATED_METRICS}
            artifacts[(category, form)] = result.artifact
        print(category, {form: row[form] for form in forms}, flush=True)
        rows.append(row)
    timed = {form: artifacts[(args.speed_category, form)] for form in forms}
    size = tuple(read_sidecar(timed[forms[0]]).input_size)
    images = to_model_input(load_images(load_dataset(args.data, args.speed_category).test[:8], size))
    timing = speed(timed, images, args.rounds)
    payload = {"benchmark": args.name, "date": started, "machine": machine_info(), "runs": str(args.runs),
               "data": str(args.data), "forms": forms, "rows": rows, "speed_category": args.speed_category,
               "rounds": args.rounds, "speed": timing}
    write_results(args.results, args.name, payload, report)


if __name__ == "__main__":
    main()

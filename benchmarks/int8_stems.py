#!/usr/bin/env python
"""INT8 with the stems quantized or in float: accuracy per category on the real-texture benchmark.

For each checkpoint, the INT8 export (`--int8-for onnxruntime` and/or `tensorrt`) is made twice, once with the
stem-to-stride-4 segments in INT8 and once with them in float, and each is scored by the export's own accuracy
check (points lost against the checkpoint's FP32 export on the category's test split). This is what decides
`--int8-stems auto`'s first try (edgekd/export/quantize.py STEM_MODES).

    python benchmarks/int8_stems.py --runs runs/real/real_textures_rd_lite0 --name int8_stems_rd
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgekd.data.real_textures import parse_categories
from edgekd.export.exporter import GATED_METRICS, export_checkpoint
from edgekd.machine import machine_info
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the modules beside this script, however it is loaded
from results_files import write_results  # noqa: E402
from studies import folder_of  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def report(payload: dict) -> str:
    lines = [f"# INT8 stems: quantized or float ({payload['date']})", "",
             f"Checkpoints `{payload['runs']}` on `{payload['data']}`; drops are points lost against the FP32 export "
             "on each category's test split (positive = worse), from the export's own accuracy check. "
             f"Machine: {payload['machine'].get('cpu', '?')}. Made by `benchmarks/int8_stems.py`.", ""]
    for target in payload["targets"]:
        lines += [f"## `--int8-for {target}`", "",
                  "| category | stems INT8: img / pix / AUPRO drop | stems float: img / pix / AUPRO drop |",
                  "|---|---|---|"]
        for row in payload["rows"]:
            cells = [" / ".join(f"{row[target][stems][m]:+.2f}" for m in GATED_METRICS) for stems in ("int8", "float")]
            lines.append(f"| {row['category']} | {cells[0]} | {cells[1]} |")
        worst = {stems: max(row[target][stems][m] for row in payload["rows"] for m in GATED_METRICS)
                 for stems in ("int8", "float")}
        lines += ["", f"Worst drop: stems INT8 {worst['int8']:+.2f}, stems float {worst['float']:+.2f} points.", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "data" / "real")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "real" / "real_textures_rd_lite0")
    parser.add_argument("--categories", default="all")
    parser.add_argument("--targets", default="onnxruntime")
    parser.add_argument("--results", type=Path, default=folder_of("INT8 stems"))
    parser.add_argument("--name", default="int8_stems")
    args = parser.parse_args()
    targets = args.targets.split(",")
    rows, started = [], time.strftime("%Y-%m-%d %H:%M")
    for category in parse_categories(args.categories):
        checkpoint = args.runs / category / "model.ckpt"
        if not checkpoint.is_file():
            print(f"skip {category}: no {checkpoint}", flush=True)
            continue
        row = {"category": category}
        for target in targets:
            row[target] = {}
            for stems in ("int8", "float"):
                with tempfile.TemporaryDirectory() as folder:
                    result = export_checkpoint(checkpoint, "int8", out_dir=folder, data=args.data, category=category,
                                               int8_for=target, int8_stems=stems, max_drop=100.0, force=True)
                row[target][stems] = {m: float(result.deltas[m]) for m in GATED_METRICS}
                print(category, target, f"stems {stems}",
                      " ".join(f"{m} {row[target][stems][m]:+.2f}" for m in GATED_METRICS), flush=True)
        rows.append(row)
    payload = {"benchmark": args.name, "date": started, "machine": machine_info(), "runs": str(args.runs),
               "data": str(args.data), "targets": targets, "rows": rows,
               "worst": {t: {s: float(np.max([r[t][s][m] for r in rows for m in GATED_METRICS]))
                             for s in ("int8", "float")} for t in targets}}
    write_results(args.results, args.name, payload, report)


if __name__ == "__main__":
    main()

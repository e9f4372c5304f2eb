"""What precision costs: export each category's RD checkpoint to FP32, FP16 and INT8 ONNX, evaluate each in
onnxruntime on the test split and record the metric deltas versus FP32 PyTorch, file sizes and CPU latency.

Uses the checkpoints of benchmarks/quality_rd.py (runs/benchmark/<category>/model.ckpt).
Targets (issue #3): INT8 within 1.0 point and FP16 within 0.1 point on image AUROC, pixel AUROC and AUPRO.

    python benchmarks/precision_deltas.py [--categories wood,chip] [--calibration percentile]
"""

from __future__ import annotations

import argparse
import sys
import json
import time
from pathlib import Path

import numpy as np

from edgekd.data.synth import parse_categories
from edgekd.atomic import write_bytes_atomic
from edgekd.bench.timing import timed_turn
from edgekd.artifacts import read_sidecar
from edgekd.errors import EdgekdError
from edgekd.export.exporter import export_checkpoint
from edgekd.machine import machine_info
from edgekd.runtime import open_runtime
sys.path.insert(0, str(Path(__file__).resolve().parent))  # studies.py, however this is loaded
from studies import folder_of  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"fp16": 0.1, "int8": 1.0}
METRICS = ("image_auroc", "pixel_auroc", "aupro")


def latency_ms(artifact: Path, size: tuple[int, int], batch: int = 8, repeats: int = 5) -> float:
    images = np.random.default_rng(0).integers(0, 255, (batch, *size, 3), dtype=np.uint8)
    with open_runtime(artifact, device="cpu") as runtime:
        runtime.infer(images, batch)  # warm-up: the first call sizes onnxruntime's buffers
        seconds = timed_turn(lambda: runtime.infer(images, batch), calls=repeats)
    return 1000 * float(np.median(seconds)) / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "benchmark")
    parser.add_argument("--categories", default="wood,fabric,metal,tile,granite,washer,chip")
    parser.add_argument("--calibration", default="minmax")
    parser.add_argument("--calib-images", type=int, default=64)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "precision")
    parser.add_argument("--results", type=Path, default=folder_of("precision deltas"))
    args = parser.parse_args()

    rows = []
    for category in parse_categories(args.categories):
        checkpoint = args.runs / category / "model.ckpt"
        for precision in ("fp32", "fp16", "int8"):
            started = time.time()
            try:
                result = export_checkpoint(checkpoint, precision, out_dir=args.out, name=category, force=True,
                                           calib_images=args.calib_images, calibration_method=args.calibration)
            except EdgekdError as exc:  # e.g. failed parity: a finding to record, not a reason to stop
                rows.append({"category": category, "precision": precision, "failed": str(exc)})
                print(rows[-1], flush=True)
                continue
            size = read_sidecar(result.artifact).input_size
            row = {"category": category, "precision": precision, "export_seconds": round(time.time() - started, 1),
                   "mb": round(result.artifact.stat().st_size / 2**20, 2),
                   "ms_per_image_ort_cpu": round(latency_ms(result.artifact, size), 2),
                   "parity_max_map_diff": result.parity.max_abs_map_diff,
                   "score_rank_agreement": result.parity.score_rank_agreement,
                   **{f"drop_{k}": result.deltas.get(k, 0.0) for k in METRICS}}
            rows.append(row)
            print(row, flush=True)

    summary = {}
    for precision in ("fp16", "int8"):
        picked = [r for r in rows if r["precision"] == precision and "failed" not in r]
        failed = [r["category"] for r in rows if r["precision"] == precision and "failed" in r]
        worst = {k: max(r[f"drop_{k}"] for r in picked) for k in METRICS}
        summary[precision] = {"worst_drop_points": worst, "target_points": TARGETS[precision], "failed": failed,
                              "target_met": not failed and all(v <= TARGETS[precision] for v in worst.values())}
    report = {"benchmark": "precision_deltas", "date": time.strftime("%Y-%m-%d"), "machine": machine_info(),
              "calibration": args.calibration, "calib_images": args.calib_images, "summary": summary, "rows": rows}
    args.results.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(args.results / "precision_deltas.json", json.dumps(report, indent=2, default=float).encode())
    m = report["machine"]
    lines = ["# precision_deltas", "",
             f"RD + EfficientNet-Lite0 (256x256) exported to ONNX and run in onnxruntime (CPU). Drops are points of "
             f"metric lost versus FP32 PyTorch on each category's test split (negative = better). INT8: explicit "
             f"Q/DQ, {args.calibration} calibration on {args.calib_images} normal training images.",
             f"Measured {report['date']} on {m['cpu']} ({m['cores']} cores).", "",
             "| category | precision | image AUROC drop | pixel AUROC drop | AUPRO drop | score rank agr. | MB | ms/img (ORT CPU, batch 8) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['category']} | {r['precision']} | failed: {r['failed'][:120]} | | | | | |")
            continue
        lines.append(f"| {r['category']} | {r['precision']} | {r['drop_image_auroc']:.2f} | {r['drop_pixel_auroc']:.2f} | "
                     f"{r['drop_aupro']:.2f} | {r['score_rank_agreement']:.3f} | {r['mb']} | {r['ms_per_image_ort_cpu']} |")
    lines.append("")
    for precision, s in summary.items():
        worst = ", ".join(f"{k} {v:.2f}" for k, v in s["worst_drop_points"].items())
        lines.append(f"- {precision}: worst drops {worst} -> target <= {s['target_points']} "
                     f"{'met' if s['target_met'] else 'NOT met'}")
    write_bytes_atomic(args.results / "precision_deltas.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()

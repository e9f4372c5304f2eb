#!/usr/bin/env python
"""Where the scales are combined and blurred: accuracy of each scoring grid on the real-texture benchmark.

The same trained checkpoints (benchmarks/real_texture_accuracy.py) are scored with `scoring.map_stride` 1 (the
scales upsampled to the output size, combined and blurred there: the form before the grid existed) and with
coarser grids (4 = the finest teacher scale at stride 4, then one upsample). Only the scoring changes; a detector
with a patch memory has its branch divisors refitted for each form, as training would have set them (the
distillation map's maxima move a little with the grid). The acceptance rule of the speed issue: every
category's image AUROC, pixel AUROC and AUPRO within 0.2 points of the output-size form.

    python benchmarks/scoring_grid.py --runs runs/real/real_textures_rd_lite0 --strides 1,4
    python benchmarks/scoring_grid.py --convert-to 4 --converted runs/real/rd_lite0_grid4   # checkpoints as if
        trained with that grid (training's only scoring-dependent steps: branch divisors and thresholds)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_texture_accuracy import METRICS, held_out_maxima, refit_scales  # noqa: E402
from results_files import write_results  # noqa: E402

from edgekd.checkpoint import save_checkpoint  # noqa: E402
from edgekd.data.layouts import load_dataset  # noqa: E402
from edgekd.export.exporter import recalibrate  # noqa: E402
from edgekd.checkpoint import read_checkpoint  # noqa: E402
from edgekd.data.real_textures import parse_categories  # noqa: E402
from edgekd.evaluate import evaluate  # noqa: E402
from edgekd.machine import machine_info  # noqa: E402
from edgekd.runtime.torch_backend import TorchRuntime  # noqa: E402
from edgekd.scoring import FeatureDiff  # noqa: E402
from studies import folder_of

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 0.2  # points, per category and metric


def use_stride(model, stride: int, config: dict, data: Path, category: str) -> None:
    """Score with another grid; refit the memory's branch divisors on the held-out normals for it."""
    model.scorer = FeatureDiff(dataclasses.replace(model.scorer.config, map_stride=stride), model.input_size)
    if getattr(model, "patch_memory", None) is not None:
        refit_scales(model, config, held_out_maxima(model, config, data, category))


def convert(checkpoint: Path, stride: int, out: Path, data: Path, category: str) -> None:
    """The checkpoint as training would have written it with this grid: the networks and memory are untouched
    (the loss never sees the map), the branch divisors and the thresholds are set again on the same held-out
    normal images."""
    payload = read_checkpoint(checkpoint)
    config = payload["config"]
    runtime = TorchRuntime.from_checkpoint(checkpoint, device="cpu")
    use_stride(runtime.model, stride, config, data, category)
    thresholds, stats = recalibrate(runtime, load_dataset(data, category, seed=config["train"]["seed"]), payload)
    config = {**config, "scoring": {**config["scoring"], "map_stride": stride}}
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / "model.ckpt", runtime.model, config, score_stats=stats,
                    thresholds=thresholds, training=payload.get("training", {}),
                    converted={"from": str(checkpoint), "map_stride": stride})
    print(f"{category}: wrote {out / 'model.ckpt'} (map_stride {stride}, thresholds {thresholds})", flush=True)


def report(payload: dict) -> str:
    strides, base = payload["strides"], payload["strides"][0]
    lines = [f"# Scoring grid on the real-texture benchmark ({payload['date']})", "",
             f"Checkpoints: `{payload['runs']}` (config `{payload['config_name']}`), evaluated with "
             f"`scoring.map_stride` {', '.join(map(str, strides))}; branch divisors refitted per form. "
             f"Machine: {payload['machine'].get('cpu', '?')}. Made by `benchmarks/scoring_grid.py`.", "",
             f"Rule: each metric of each category within {TOLERANCE} points of map_stride {base}.", ""]
    header = "| category | " + " | ".join(f"stride {s} img / pix / AUPRO" for s in strides) + " | worst delta |"
    lines += [header, "|" + "---|" * (len(strides) + 2)]
    for row in payload["rows"]:
        cells = [" / ".join(f"{100 * row['by_stride'][str(s)][m]:.1f}" for m in METRICS) for s in strides]
        lines.append(f"| {row['category']} | " + " | ".join(cells) + f" | {row['worst_delta']:+.2f} |")
    means = [" / ".join(f"{100 * payload['mean'][str(s)][m]:.2f}" for m in METRICS) for s in strides]
    lines.append("| **mean** | " + " | ".join(means) + " | |")
    lines += ["", "Worst delta: the most negative change (points) of any metric against stride "
              f"{base}, over the other strides. Verdict per stride:", ""]
    for stride, verdict in payload["verdicts"].items():
        lines.append(f"- stride {stride}: {verdict}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "data" / "real")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "real" / "real_textures_rd_lite0")
    parser.add_argument("--categories", default="all")
    parser.add_argument("--strides", default="1,4")
    parser.add_argument("--results", type=Path, default=folder_of("scoring grid"))
    parser.add_argument("--name", default="scoring_grid")
    parser.add_argument("--convert-to", type=int, default=None, help="Write the checkpoints with this map_stride.")
    parser.add_argument("--converted", type=Path, default=None, help="Folder of the converted runs (one per category).")
    args = parser.parse_args()
    if args.convert_to is not None:
        for category in parse_categories(args.categories):
            convert(args.runs / category / "model.ckpt", args.convert_to, args.converted / category, args.data, category)
        return
    strides = [int(s) for s in args.strides.split(",")]
    started, rows, config = time.strftime("%Y-%m-%d %H:%M"), [], None
    for category in parse_categories(args.categories):
        checkpoint = args.runs / category / "model.ckpt"
        config = read_checkpoint(checkpoint)["config"]
        runtime = TorchRuntime.from_checkpoint(checkpoint, device="cpu")
        by_stride = {}
        for stride in strides:
            use_stride(runtime.model, stride, config, args.data, category)
            row = evaluate(runtime, args.data, category, args.runs / category / "eval_grid", category).row
            by_stride[str(stride)] = {k: float(row[k]) for k in METRICS}
            print(category, f"stride {stride}", " ".join(f"{k} {100 * row[k]:.2f}" for k in METRICS), flush=True)
        base = by_stride[str(strides[0])]
        deltas = {str(s): min(100 * (by_stride[str(s)][k] - base[k]) for k in METRICS) for s in strides[1:]}
        rows.append({"category": category, "by_stride": by_stride, "deltas": deltas,
                     "worst_delta": min(deltas.values()) if deltas else 0.0})
    mean = {str(s): {k: float(np.mean([r["by_stride"][str(s)][k] for r in rows])) for k in METRICS} for s in strides}
    verdicts = {}
    for stride in strides[1:]:
        failing = [r["category"] for r in rows if r["deltas"][str(stride)] < -TOLERANCE]
        verdicts[str(stride)] = ("within the rule on every category" if not failing else
                                 f"outside the rule on {', '.join(failing)}")
    payload = {"benchmark": args.name, "date": started, "machine": machine_info(), "runs": str(args.runs),
               "config_name": (config or {}).get("model", "?") + " / " + (config or {}).get("teacher", "?"),
               "strides": strides, "tolerance_points": TOLERANCE, "rows": rows, "mean": mean, "verdicts": verdicts}
    write_results(args.results, args.name, payload, report)


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    main()

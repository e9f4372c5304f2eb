#!/usr/bin/env python
"""Verdicts on video: a line video made from a category's test split (defects every 10th frame), thresholds from
`edgekd calibrate` on a separate clip of good frames (the other half of the normal test images), then `edgekd run`
with the frame list: good frames flagged and defect frames found, per category.

Targets (trust issue): at most 1% of good frames flagged and at least 95% of defect frames flagged, on the
categories whose image AUROC is >= 0.98 (from the accuracy benchmark's JSON).

    python benchmarks/video_targets.py --runs runs/real/real_textures_rd_lite0 --accuracy benchmarks/results/real_textures_rd_lite0.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from edgekd.atomic import write_bytes_atomic
from edgekd.calibrate import calibrate
from edgekd.data.layouts import load_dataset
from edgekd.data.video import write_line_video
from edgekd.machine import machine_info
from edgekd.stream.cli_run import run_stream

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"false_alarm_rate": 0.01, "recall": 0.95, "image_auroc_in_scope": 0.98}


def line_setup(checkpoint: Path, data: Path, category: str, work: Path, frames: int,
               calibrate_on: str = "first") -> tuple[Path, Path, Path, list[int]]:
    """A copy of the model to calibrate, a clip of good frames (one half of the normal test images, the first by
    default) and a line video of the other half with a defect every 10th frame; and those frames."""
    dataset = load_dataset(data, category)
    clip, line = work / f"{category}_good.mp4", work / f"{category}_line.mp4"
    defect_frames = list(range(9, frames, 10))
    line_part = {"first": "second", "second": "first"}[calibrate_on]
    write_line_video(dataset, clip, frames // 2, [], normal_part=calibrate_on, seed=1)
    write_line_video(dataset, line, frames, defect_frames, normal_part=line_part)
    model = work / f"{category}.ckpt"
    shutil.copy(checkpoint, model)
    return model, clip, line, defect_frames


def one_category(checkpoint: Path, data: Path, category: str, work: Path, frames: int) -> dict:
    model, clip, line, _ = line_setup(checkpoint, data, category, work, frames)
    calibration = calibrate(model, str(clip), frames=frames // 2, plot=work / f"{category}_calibration.png")
    summary = run_stream(model=model, camera=None, source=str(line), backend=None, device="cpu", show=False,
                         save_video=None, save_masks=None, jsonl=None, threshold=None, min_area=0, hysteresis="1,1",
                         batch=8, width=None, height=None, fps=None, max_frames=None, stats_every=0.0,
                         reconnect_timeout=0.0, echo=lambda text: None, truth=line.with_suffix(".json"))
    truth = summary["truth"]
    return {"category": category, "calibration_frames": int(len(calibration.scores)),
            "image_threshold": calibration.thresholds["image"],
            "threshold_over_normal_max": calibration.thresholds["image"] - float(calibration.scores.max()),
            "good_frames": truth["good_frames"], "false_alarms": len(truth["false_alarms"]),
            "false_alarm_rate": truth["false_alarm_rate"], "defect_frames": truth["true_defect_frames"],
            "detected": truth["detected"], "recall": truth["recall"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True, help="Folder of <category>/model.ckpt")
    parser.add_argument("--accuracy", type=Path, required=True, help="real_texture_accuracy.py JSON of those runs")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "real")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--name", default="video_targets_rd_lite0")
    args = parser.parse_args()
    accuracy = {r["category"]: r["variants"]["default"]["image_auroc"]
                for r in json.loads(args.accuracy.read_text())["rows"]}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for category, auroc in accuracy.items():
            row = one_category(args.runs / category / "model.ckpt", args.data, category, Path(tmp), args.frames)
            row["image_auroc"] = auroc
            row["in_scope"] = auroc >= TARGETS["image_auroc_in_scope"]
            row["met"] = row["false_alarm_rate"] <= TARGETS["false_alarm_rate"] and row["recall"] >= TARGETS["recall"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    machine = machine_info()
    write_bytes_atomic(args.results / f"{args.name}.json", json.dumps(
        {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine, "targets": TARGETS, "rows": rows},
        indent=2, default=float).encode())
    lines = [f"# Verdicts on video: {args.name}\n",
             f"Measured {time.strftime('%Y-%m-%d')} on {machine['cpu']}. Per category: thresholds from `edgekd calibrate` "
             f"on a {args.frames // 2}-frame clip of the first half of the normal test images; a {args.frames}-frame "
             "line video (MPEG-4) of the second half with a defective part every 10th frame, run through "
             "`edgekd run --truth` (checkpoint, torch runtime). Targets on categories with image AUROC >= 98%: "
             "<= 1% good frames flagged, >= 95% defect frames flagged.\n",
             "| category | image AUROC | good frames flagged | defect frames flagged | in scope | target met |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['category']} | {100 * r['image_auroc']:.1f} | {r['false_alarms']}/{r['good_frames']} "
                     f"({100 * r['false_alarm_rate']:.1f}%) | {r['detected']}/{r['defect_frames']} "
                     f"({100 * r['recall']:.1f}%) | {'yes' if r['in_scope'] else 'no'} | "
                     f"{('yes' if r['met'] else 'NO') if r['in_scope'] else '-'} |")
    write_bytes_atomic(args.results / f"{args.name}.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()

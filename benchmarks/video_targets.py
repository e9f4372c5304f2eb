#!/usr/bin/env python
"""Verdicts on video: a line video made from a category's test split (defects every 10th frame), thresholds from
`edgekd calibrate` on a separate clip of good frames (the other half of the normal test images), then `edgekd run`
with the frame list: good frames flagged and defect frames found, per category.

Targets (trust issue): at most 1% of good frames flagged and at least 95% of defect frames flagged, on the
categories whose image AUROC is >= 0.98 (from the accuracy benchmark's JSON).

    python benchmarks/video_targets.py --runs runs/real/real_textures_rd_lite0 --accuracy benchmarks/results/real-texture-accuracy/archive/real_textures_rd_lite0.json

--artifact int8-ort exports each checkpoint as `edgekd export --precision int8 --int8-for onnxruntime` does (the
artifact `make demo` deploys; --int8-stems as there) and calibrates and runs that instead of the checkpoint.
--calibrate-on second swaps the halves of the normal images between the clip and the line.
"""

from __future__ import annotations

import argparse
import sys
import json
import shutil
import tempfile
import time
from pathlib import Path

from edgekd.atomic import write_bytes_atomic
from edgekd.calibrate import calibrate
from edgekd.data.layouts import load_dataset
from edgekd.data.video import write_line_video
from edgekd.export.exporter import export_checkpoint
from edgekd.export.quantize import STEM_MODES
from edgekd.machine import machine_info
from edgekd.stream.cli_run import run_stream
from edgekd.stream.request import RunRequest
sys.path.insert(0, str(Path(__file__).resolve().parent))  # studies.py, however this is loaded
from studies import folder_of  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"false_alarm_rate": 0.01, "recall": 0.95, "image_auroc_in_scope": 0.98}
OTHER_HALF = {"first": "second", "second": "first"}  # the clip takes one half of the normal images, the line the other


def line_setup(checkpoint: Path, data: Path, category: str, work: Path, frames: int,
               calibrate_on: str = "first") -> tuple[Path, Path, Path, list[int]]:
    """A copy of the model to calibrate, a clip of good frames (one half of the normal test images, the first by
    default) and a line video of the other half with a defect every 10th frame; and those frames."""
    dataset = load_dataset(data, category)
    clip, line = work / f"{category}_good.mp4", work / f"{category}_line.mp4"
    defect_frames = list(range(9, frames, 10))
    line_part = OTHER_HALF[calibrate_on]
    write_line_video(dataset, clip, frames // 2, [], normal_part=calibrate_on, seed=1)
    write_line_video(dataset, line, frames, defect_frames, normal_part=line_part)
    model = work / f"{category}.ckpt"
    shutil.copy(checkpoint, model)
    return model, clip, line, defect_frames


def deployed(model: Path, artifact: str, int8_stems: str) -> tuple[Path, dict]:
    """What `edgekd calibrate` and `edgekd run` take: the checkpoint itself, or its onnxruntime INT8 export (and
    where that export's stems ran)."""
    if artifact == "checkpoint":
        return model, {}
    result = export_checkpoint(model, "int8", out_dir=model.parent / f"{model.stem}_export", int8_for="onnxruntime",
                               int8_stems=int8_stems)
    return result.artifact, {"int8_stems": result.int8_stems.get("used")}


def one_category(checkpoint: Path, data: Path, category: str, work: Path, frames: int, calibrate_on: str = "first",
                 artifact: str = "checkpoint", int8_stems: str = "auto") -> dict:
    model, clip, line, _ = line_setup(checkpoint, data, category, work, frames, calibrate_on)
    model, export_info = deployed(model, artifact, int8_stems)
    calibration = calibrate(model, str(clip), frames=frames // 2, plot=work / f"{category}_calibration.png")
    summary = run_stream(RunRequest(model=str(model), source=str(line), device="cpu", stats_every=0.0,
                                    truth=line.with_suffix(".json")), echo=lambda text: None)
    truth = summary["truth"]
    return {"category": category, "calibration_frames": int(len(calibration.scores)),
            "image_threshold": calibration.thresholds["image"],
            "threshold_over_normal_max": calibration.thresholds["image"] - float(calibration.scores.max()),
            "good_frames": truth["good_frames"], "false_alarms": len(truth["false_alarms"]),
            "false_alarm_rate": truth["false_alarm_rate"], "defect_frames": truth["true_defect_frames"],
            "detected": truth["detected"], "recall": truth["recall"], **export_info}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True, help="Folder of <category>/model.ckpt")
    parser.add_argument("--accuracy", type=Path, required=True, help="real_texture_accuracy.py JSON of those runs")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "real")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--results", type=Path, default=folder_of("verdicts on video"))
    parser.add_argument("--name", default="video_targets_rd_lite0")
    parser.add_argument("--artifact", choices=("checkpoint", "int8-ort"), default="checkpoint",
                        help="Calibrate and run the checkpoint (torch) or its onnxruntime INT8 export.")
    parser.add_argument("--int8-stems", choices=STEM_MODES, default="auto")
    parser.add_argument("--calibrate-on", choices=tuple(OTHER_HALF), default="first",
                        help="The half of the normal test images the clip is made of; the line gets the other.")
    args = parser.parse_args()
    accuracy = {r["category"]: r["variants"]["default"]["image_auroc"]
                for r in json.loads(args.accuracy.read_text())["rows"]}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for category, auroc in accuracy.items():
            row = one_category(args.runs / category / "model.ckpt", args.data, category, Path(tmp), args.frames,
                               args.calibrate_on, args.artifact, args.int8_stems)
            row["image_auroc"] = auroc
            row["in_scope"] = auroc >= TARGETS["image_auroc_in_scope"]
            row["met"] = row["false_alarm_rate"] <= TARGETS["false_alarm_rate"] and row["recall"] >= TARGETS["recall"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    machine = machine_info()
    write_bytes_atomic(args.results / f"{args.name}.json", json.dumps(
        {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine, "targets": TARGETS, "artifact": args.artifact,
         "int8_stems": args.int8_stems if args.artifact != "checkpoint" else None,
         "calibrate_on": args.calibrate_on, "rows": rows},
        indent=2, default=float).encode())
    line_half = OTHER_HALF[args.calibrate_on]
    deployed_as = "checkpoint, torch runtime" if args.artifact == "checkpoint" else \
        f"onnxruntime INT8 export, --int8-stems {args.int8_stems}"
    lines = [f"# Verdicts on video: {args.name}\n",
             f"Measured {time.strftime('%Y-%m-%d')} on {machine['cpu']}. Per category: thresholds from `edgekd calibrate` "
             f"on a {args.frames // 2}-frame clip of the {args.calibrate_on} half of the normal test images; a "
             f"{args.frames}-frame line video (MPEG-4) of the {line_half} half with a defective part every 10th frame, "
             f"run through `edgekd run --truth` ({deployed_as}). Targets on categories with image AUROC >= 98%: "
             "<= 1% good frames flagged, >= 95% defect frames flagged.\n",
             "| category | image AUROC | good frames flagged | defect frames flagged | in scope | target met |"
             + (" INT8 stems |" if args.artifact != "checkpoint" else ""),
             "|---|---|---|---|---|---|" + ("---|" if args.artifact != "checkpoint" else "")]
    for r in rows:
        stems = f" {r['int8_stems']} |" if args.artifact != "checkpoint" else ""
        lines.append(f"| {r['category']} | {100 * r['image_auroc']:.1f} | {r['false_alarms']}/{r['good_frames']} "
                     f"({100 * r['false_alarm_rate']:.1f}%) | {r['detected']}/{r['defect_frames']} "
                     f"({100 * r['recall']:.1f}%) | {'yes' if r['in_scope'] else 'no'} | "
                     f"{('yes' if r['met'] else 'NO') if r['in_scope'] else '-'} |{stems}")
    write_bytes_atomic(args.results / f"{args.name}.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()

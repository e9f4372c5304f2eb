#!/usr/bin/env python
"""How wide should the calibration margin be? The video targets' setup (a clip of good frames for `edgekd
calibrate`, a line video of other good images with a defect every 10th frame), scored once per category; then the
threshold rule (edgekd.calibration.ThresholdRule, quantile 0.99) is applied with several margins to the same clip
scores, and each threshold is counted against the line's frames: good frames flagged and defect frames found.

A frame's verdict is `score > image threshold` (`edgekd run` with --min-area 0), so applying a threshold to the
stored scores gives exactly what `edgekd run` would print with that threshold.

    python benchmarks/threshold_margin.py --runs runs/real/rd_lite0_grid2 [--swap-halves]
Writes benchmarks/results/calibration-margin/threshold_margin.{json,md}; with --swap-halves (calibrate on the second half of the normal
test images, the line video from the first: a check of the margin on images it was not chosen on)
threshold_margin_swapped.{json,md}.
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
from edgekd.calibrate import calibrate
from edgekd.calibration import ThresholdRule
from edgekd.machine import machine_info
from edgekd.stream.cli_run import run_stream
from edgekd.stream.request import RunRequest
sys.path.insert(0, str(Path(__file__).resolve().parent))  # studies.py, however this is loaded
from studies import folder_of  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from video_targets import line_setup  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MARGINS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
CATEGORIES = ("grass", "gravel", "brick", "cork", "canvas", "fibre_paper", "pastel_paper", "felt", "pcb")


def scores_of(checkpoint: Path, data: Path, category: str, work: Path, frames: int, calibrate_on: str) -> dict:
    """The same clip and line video as benchmarks/video_targets.py (or with the halves swapped)."""
    model, clip, line, defect_frames = line_setup(checkpoint, data, category, work, frames, calibrate_on)
    calibration = calibrate(model, str(clip), frames=frames // 2, plot=work / f"{category}.png", dry_run=True)
    events = work / f"{category}.jsonl"
    run_stream(RunRequest(model=str(model), source=str(line), device="cpu", jsonl=events, stats_every=0.0),
               echo=lambda t: None)
    line_scores = np.array([json.loads(text)["score"] for text in events.read_text().splitlines()])
    is_defect = np.isin(np.arange(len(line_scores)), defect_frames)
    return {"clip": calibration.scores.tolist(), "good": line_scores[~is_defect].tolist(),
            "defect": line_scores[is_defect].tolist()}


def counts(scores: dict, margin: float) -> dict:
    threshold = ThresholdRule(0.99, margin).threshold(np.array(scores["clip"]))
    good, defect = np.array(scores["good"]), np.array(scores["defect"])
    return {"threshold": threshold, "false_alarms": int((good > threshold).sum()), "good_frames": int(good.size),
            "detected": int((defect > threshold).sum()), "defect_frames": int(defect.size)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True, help="Folder of <category>/model.ckpt")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "real")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--results", type=Path, default=folder_of("calibration margin"))
    parser.add_argument("--swap-halves", action="store_true", help="Calibrate on the second half of the normal test "
                        "images and make the line video from the first.")
    args = parser.parse_args()
    calibrate_on, name = ("second", "threshold_margin_swapped") if args.swap_halves else ("first", "threshold_margin")
    per_category = {}
    with tempfile.TemporaryDirectory() as folder:
        for category in CATEGORIES:
            scores = scores_of(args.runs / category / "model.ckpt", args.data, category, Path(folder), args.frames,
                               calibrate_on)
            good, defect = np.array(scores["good"]), np.array(scores["defect"])
            per_category[category] = {"scores": scores, "margins": {str(m): counts(scores, m) for m in MARGINS},
                                      "defects_below_largest_good": int((defect <= good.max()).sum())}
            print(category, {m: (c["false_alarms"], c["detected"]) for m, c in per_category[category]["margins"].items()},
                  flush=True)
    machine = machine_info()
    write_bytes_atomic(args.results / f"{name}.json", json.dumps(
        {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine, "runs": str(args.runs), "margins": MARGINS,
         "calibrated_on": f"{calibrate_on} half of the normal test images", "categories": per_category},
        indent=1).encode())
    halves = ("the first", "the other") if calibrate_on == "first" else ("the second", "the first")
    lines = ["# How wide the calibration margin should be", "",
             f"`python benchmarks/threshold_margin.py --runs {args.runs}{' --swap-halves' if args.swap_halves else ''}`, "
             f"{time.strftime('%Y-%m-%d %H:%M')}, {machine['cpu']}. Per category: `edgekd calibrate` scores on a "
             f"{args.frames // 2}-frame clip of {halves[0]} half of the normal test images; a {args.frames}-frame MPEG-4 "
             f"line video of {halves[1]} half with a defect every 10th frame. Rule: threshold = max(Q0.99 + margin * s, largest + s), s = 1.4826 MAD. Cells: good frames "
             "flagged / defect frames found. Last column: defect frames that score at or below the line's largest "
             "good score (no threshold finds them without a false alarm).", "",
             "| category | " + " | ".join(f"margin {m:g}" for m in MARGINS) + " | inseparable |",
             "|---|" + "---|" * (len(MARGINS) + 1)]
    for category, row in per_category.items():
        cells = [f"{c['false_alarms']}/{c['good_frames']} / {c['detected']}/{c['defect_frames']}"
                 for c in row["margins"].values()]
        lines.append(f"| {category} | " + " | ".join(cells) + f" | {row['defects_below_largest_good']} |")
    totals = []
    for m in MARGINS:
        fa = sum(r["margins"][str(m)]["false_alarms"] for r in per_category.values())
        good = sum(r["margins"][str(m)]["good_frames"] for r in per_category.values())
        found = sum(r["margins"][str(m)]["detected"] for r in per_category.values())
        total = sum(r["margins"][str(m)]["defect_frames"] for r in per_category.values())
        totals.append(f"{fa}/{good} / {found}/{total}")
    lines.append("| **all** | " + " | ".join(totals) + " | |")
    write_bytes_atomic(args.results / f"{name}.md", ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    main()

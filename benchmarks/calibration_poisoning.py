#!/usr/bin/env python
"""A calibration clip with defective parts in it: how many of the line's defects are still found.

Per category: the line video of video_targets.py (the second half of the normal test images, a defect every 10th
frame, MPEG-4) is scored once; clips of 100 good frames (the first half) with 0, 1, 3 and 10 defective parts at
random places go through `edgekd calibrate` (the outlier screen; with --accept-outliers where it refuses), and the
line's verdicts at each threshold are counted (a frame is a defect when its score is above the image threshold, as
`edgekd run` decides with --min-area 0). Beside it, the rule without the screen (every clip frame counted), which is
what calibrate did before. Target (hardening issue): >= 95% of the line's defects found with 1, 3 and 10 bad parts.

    python benchmarks/calibration_poisoning.py --runs runs/real --data data/real --categories pcb,cork,fibre_paper,felt
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgekd.calibrate import calibrate
from edgekd import calibration
from edgekd.calibration import ThresholdRule
from edgekd.data.layouts import load_dataset
from edgekd.data.video import write_line_video
from edgekd.errors import EdgekdError
from edgekd.machine import machine_info
from edgekd.stream.cli_run import run_stream
from edgekd.stream.request import RunRequest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_files import write_results  # noqa: E402
from studies import folder_of

REPO = Path(__file__).resolve().parents[1]
BAD_PARTS = (0, 1, 3, 10)
GOOD_FRAMES = 100
LINE_FRAMES = 200
TARGET_RECALL = 0.95


def line_scores(model: Path, dataset, work: Path) -> tuple[np.ndarray, set[int]]:
    """Every frame's score on the line video, and its defect frames."""
    line, jsonl = work / "line.mp4", work / "line.jsonl"
    described = write_line_video(dataset, line, LINE_FRAMES, list(range(9, LINE_FRAMES, 10)), normal_part="second")
    run_stream(RunRequest(model=str(model), source=str(line), device="cpu", jsonl=jsonl, stats_every=0.0),
               echo=lambda text: None)
    events = sorted((json.loads(line) for line in jsonl.read_text().splitlines()), key=lambda e: e["frame"])
    return np.array([e["score"] for e in events]), set(described["defect_frames"])


def verdicts(scores: np.ndarray, defects: set[int], threshold: float) -> dict:
    flagged = set(np.flatnonzero(scores > threshold).tolist())
    good = set(range(len(scores))) - defects
    return {"threshold": threshold, "found": len(flagged & defects), "defects": len(defects),
            "recall": len(flagged & defects) / len(defects), "false_alarms": len(flagged & good), "good": len(good)}


def one_category(checkpoint: Path, data: Path, category: str, work: Path, seed: int) -> dict:
    dataset = load_dataset(data, category)
    model = work / "model.ckpt"
    shutil.copy(checkpoint, model)
    scores, defects = line_scores(model, dataset, work)
    rng = np.random.default_rng(seed)
    rows = []
    for bad in BAD_PARTS:
        clip = work / f"clip_{bad}.mp4"
        places = sorted(rng.choice(GOOD_FRAMES + bad, size=bad, replace=False).tolist())
        # the same seed for every clip: the same good frames, in the same order, with the bad parts inserted
        write_line_video(dataset, clip, GOOD_FRAMES + bad, places, normal_part="first", seed=1)
        row = {"bad_parts": bad, "bad_frames": places}
        try:
            calibrate(model, str(clip), GOOD_FRAMES + bad, device="cpu", plot=work / "plot.png", dry_run=True)
            row["refused"] = None
        except EdgekdError as exc:
            row["refused"] = str(exc)
        result = calibrate(model, str(clip), GOOD_FRAMES + bad, device="cpu", plot=work / "plot.png", dry_run=True,
                           accept_outliers=True)
        excluded = {o["frame"] for o in result.outliers}
        row["excluded"] = sorted(excluded)
        row["excluded_bad"] = len(excluded & set(places))
        row["excluded_good"] = len(excluded - set(places))
        row["screened"] = verdicts(scores, defects, result.thresholds["image"])
        row["unscreened"] = verdicts(scores, defects, ThresholdRule().threshold(result.scores))  # every clip frame
        rows.append(row)
        print(f"{category} bad={bad}: screened {row['screened']['found']}/{row['screened']['defects']}, unscreened "
              f"{row['unscreened']['found']}/{row['unscreened']['defects']}, excluded {row['excluded_bad']} bad "
              f"{row['excluded_good']} good, refused {'yes' if row['refused'] else 'no'}", flush=True)
    return {"category": category, "rows": rows}


def report(payload: dict) -> str:
    lines = [f"# Calibration clips with bad parts: {payload['name']}\n",
             f"Measured {payload['date']} on {payload['machine']['cpu']} ({payload['machine']['cores']} cores). "
             f"Checkpoints {payload['runs']}; screen fence {payload['fence']:g} robust spreads. Clip: {GOOD_FRAMES} good frames (first half of the normal test images) "
             f"plus N defective parts at random places; line: {LINE_FRAMES} frames (second half), a defect every 10th. "
             "Screened: `edgekd calibrate` as it is (outliers left out; --accept-outliers where it refused); "
             "unscreened: the same rule over every clip frame (calibrate before the screen). Target: >= 95% of the "
             "line's defects found with 1, 3 and 10 bad parts.\n",
             "| category | bad parts | refused without --accept-outliers | listed as outliers (bad / good) | line defects found, "
             "screened | good frames flagged, screened | found, unscreened | target met |",
             "|---|---|---|---|---|---|---|---|"]
    for category in payload["categories"]:
        for r in category["rows"]:
            s, u = r["screened"], r["unscreened"]
            met = "-" if r["bad_parts"] == 0 else ("yes" if s["recall"] >= TARGET_RECALL else "NO")
            lines.append(f"| {category['category']} | {r['bad_parts']} | {'yes' if r['refused'] else 'no'} | "
                         f"{r['excluded_bad']} / {r['excluded_good']} | {s['found']}/{s['defects']} | "
                         f"{s['false_alarms']}/{s['good']} | {u['found']}/{u['defects']} | {met} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True, help="Folder of <category>/model.ckpt")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "real")
    parser.add_argument("--categories", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=folder_of("calibration poisoning"))
    parser.add_argument("--name", default="calibration_poisoning")
    parser.add_argument("--fence", type=float, default=None, help="Try another fence than "
                        "edgekd.calibration.OUTLIER_FENCE (robust spreads).")
    args = parser.parse_args()
    if args.fence is not None:
        calibration.OUTLIER_FENCE = args.fence
    categories = []
    for category in args.categories.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            categories.append(one_category(args.runs / category / "model.ckpt", args.data, category, Path(tmp), args.seed))
    write_results(args.results, args.name, {"name": args.name, "date": time.strftime("%Y-%m-%d %H:%M"),
                                            "fence": calibration.OUTLIER_FENCE,
                                            "machine": machine_info(), "runs": str(args.runs), "categories": categories},
                  report)


if __name__ == "__main__":
    main()

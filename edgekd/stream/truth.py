"""Checking a run against a video whose defect frames are known (the frame list `edgekd data video` writes).

Every frame the list names counts: a frame the run never scored (lost to a server outage, after a damaged end of
file) is a missed defect or an unchecked good frame, never left out of the figures.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edgekd.errors import EdgekdError
from edgekd.sinks import Sink


@dataclass(frozen=True)
class Truth:
    defect_frames: frozenset[int]
    frames: int  # how many frames the video has (the list's 'frames', or one past its last defect frame)
    video: str | None  # the file the list describes, when it says


def read_truth(path: Path) -> Truth:
    """The frame list; one clear line if the file is not one."""
    try:
        listing = json.loads(Path(path).read_text())
        defects = frozenset(int(i) for i in listing["defect_frames"])
        frames = int(listing.get("frames", max(defects, default=-1) + 1))
    except FileNotFoundError:
        raise EdgekdError(f"--truth {path} does not exist: pass the .json that 'edgekd data video' wrote") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, AttributeError, OSError):
        raise EdgekdError(f"--truth {path} is not a frame list (JSON with 'defect_frames'): pass the .json that "
                          "'edgekd data video' wrote") from None
    if frames < 0 or any(not 0 <= i < frames for i in defects):
        raise EdgekdError(f"--truth {path} names defect frames outside its {frames} frames: pass the .json that "
                          "'edgekd data video' wrote")
    return Truth(defects, frames, listing.get("video"))


def check_truth_matches(truth: Truth, path: Path, source: str, source_frames: int | None) -> str | None:
    """Refuse a frame list of another video (frame counts differ); a warning when only the file name differs."""
    if source_frames and source_frames != truth.frames:
        raise EdgekdError(f"--truth {path} describes a video of {truth.frames} frames, but {source} has "
                          f"{source_frames}: pass the frame list written with this video")
    if truth.video and Path(truth.video).name != Path(source).name:
        return (f"warning: --truth {path} was written for {Path(truth.video).name}, not {Path(source).name}: the "
                "figures are only right if it is the same video renamed")
    return None


class FrameVerdicts(Sink):
    """Which frames the run flagged (per frame, before hysteresis)."""
    name = "truth check"

    def __init__(self):
        self.flagged: set[int] = set()
        self.seen: set[int] = set()

    def write(self, result, overlay_bgr):
        self.seen.add(result.index)
        if result.defective:
            self.flagged.add(result.index)


def compare(truth: Truth, verdicts: FrameVerdicts) -> dict:
    """Detected vs true defect frames over every frame the list names; unscored defect frames are missed."""
    every = set(range(truth.frames)) | verdicts.seen
    true = set(truth.defect_frames)
    good = every - true
    never_scored = sorted(every - verdicts.seen)
    missed, false_alarms = sorted(true - verdicts.flagged), sorted(verdicts.flagged - true)
    return {"frames": len(every), "scored": len(verdicts.seen), "never_scored": len(never_scored),
            "true_defect_frames": len(true), "detected": len(true) - len(missed), "missed": missed,
            "missed_unscored": sorted(true - verdicts.seen), "good_frames": len(good),
            "good_frames_unscored": len(good - verdicts.seen), "false_alarms": false_alarms,
            "recall": (len(true) - len(missed)) / len(true) if true else None,
            "false_alarm_rate": len(false_alarms) / len(good & verdicts.seen) if good & verdicts.seen else None}


def describe(result: dict) -> str:
    recall = "n/a" if result["recall"] is None else f"{100 * result['recall']:.1f}%"
    rate = "n/a" if result["false_alarm_rate"] is None else f"{100 * result['false_alarm_rate']:.1f}%"
    scored_good = result["good_frames"] - result["good_frames_unscored"]
    return (f"truth: {result['detected']} of {result['true_defect_frames']} defect frames detected ({recall}), "
            f"{len(result['false_alarms'])} of {scored_good} good frames flagged ({rate})"
            + (f"; {result['never_scored']} of {result['frames']} frames never scored "
               f"({len(result['missed_unscored'])} defect frames among them, counted as missed)"
               if result["never_scored"] else "")
            + (f"; missed {result['missed'][:10]}" if result["missed"] else "")
            + (f"; false alarms {result['false_alarms'][:10]}" if result["false_alarms"] else ""))

"""Checking a run against a video whose defect frames are known (the frame list `edgekd data video` writes)."""

from __future__ import annotations

import json
from pathlib import Path

from edgekd.errors import EdgekdError
from edgekd.stream.sinks import Sink


def read_truth(path: Path) -> set[int]:
    """The defect frame indices of a frame list; one clear line if the file is not one."""
    try:
        listing = json.loads(Path(path).read_text())
        return {int(i) for i in listing["defect_frames"]}
    except FileNotFoundError:
        raise EdgekdError(f"--truth {path} does not exist: pass the .json that 'edgekd data video' wrote") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError):
        raise EdgekdError(f"--truth {path} is not a frame list (JSON with 'defect_frames'): pass the .json that "
                          "'edgekd data video' wrote") from None


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


def compare(truth: set[int], verdicts: FrameVerdicts) -> dict:
    """Detected vs true defect frames over the frames the run saw."""
    true = truth & verdicts.seen
    good = verdicts.seen - truth
    missed, false_alarms = sorted(true - verdicts.flagged), sorted(verdicts.flagged - truth)
    return {"frames": len(verdicts.seen), "true_defect_frames": len(true), "detected": len(true) - len(missed),
            "missed": missed, "good_frames": len(good), "false_alarms": false_alarms,
            "recall": (len(true) - len(missed)) / len(true) if true else None,
            "false_alarm_rate": len(false_alarms) / len(good) if good else None}


def describe(result: dict) -> str:
    recall = "n/a" if result["recall"] is None else f"{100 * result['recall']:.1f}%"
    rate = "n/a" if result["false_alarm_rate"] is None else f"{100 * result['false_alarm_rate']:.1f}%"
    return (f"truth: {result['detected']} of {result['true_defect_frames']} defect frames detected ({recall}), "
            f"{len(result['false_alarms'])} of {result['good_frames']} good frames flagged ({rate})"
            + (f"; missed {result['missed'][:10]}" if result["missed"] else "")
            + (f"; false alarms {result['false_alarms'][:10]}" if result["false_alarms"] else ""))

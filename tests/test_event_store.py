"""The event store of `edgekd run --events`: every defect frame with its picture and mask, the CSV of `edgekd events`
equal to the JSONL's defect lines, retention by age and size, and a kill -9 mid-run that leaves a store which opens
and holds every event committed before it."""

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import cv2
import pytest
from typer.testing import CliRunner

from edgekd.cli import app
from edgekd.data.layouts import load_dataset
from edgekd.data.video import write_line_video
from edgekd.errors import EdgekdError
from edgekd.events.query import parse_when
from edgekd.events.store import EventFilter, EventStore
from edgekd.stream.cli_run import run_stream
from edgekd.stream.request import RunRequest

DEFECT_FRAMES = [6, 17, 29, 30, 41]


@pytest.fixture(scope="module")
def line_video(synth_root, tmp_path_factory):
    path = tmp_path_factory.mktemp("line") / "line.mp4"
    return write_line_video(load_dataset(synth_root, "wood"), path, 48, DEFECT_FRAMES, fps=25.0)["video"]


def _message(frame: int, when: float, score: float = 1.0, camera: str = "camera 0") -> dict:
    return {"frame": frame, "time": when, "score": score, "defective": True, "verdict": "defect", "regions": [],
            "latency_ms": 1.0, "model": "m.onnx", "camera": camera}


def _add(store: EventStore, message: dict, size: int = 1000) -> None:
    files = []
    for suffix in (".jpg", "_mask.png"):
        path = store.files / f"{int(message['time'] * 1000)}_{message['frame']:08d}{suffix}"
        path.write_bytes(os.urandom(size))
        files.append(path)
    store.add(message, *files)


@pytest.mark.slow
def test_csv_of_edgekd_events_equals_the_jsonl_defect_lines(onnx_exports, line_video, tmp_path):
    db, jsonl = tmp_path / "line.db", tmp_path / "e.jsonl"
    request = RunRequest(device="cpu", batch=4, stats_every=0.0, model=str(onnx_exports["fp32"]),
                         source=str(line_video), jsonl=jsonl, events=db)
    summary = run_stream(request, echo=lambda text: None)
    defects = [e for e in map(json.loads, jsonl.read_text().splitlines()) if e["verdict"] == "defect"]
    assert defects and summary["outputs"]["events"]["events"] == len(defects)
    result = CliRunner().invoke(app, ["events", str(db), "--csv", str(tmp_path / "out.csv")])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert [json.loads(r["message"]) for r in rows] == [{**e, "model": str(onnx_exports["fp32"]),
                                                         "camera": f"video {line_video}"} for e in defects]
    assert [(int(r["frame"]), float(r["score"]), r["verdict"]) for r in rows] == \
        [(e["frame"], e["score"], e["verdict"]) for e in defects]
    for row in rows:  # the annotated picture and the frame-sized mask of each event
        picture, mask = cv2.imread(row["picture"]), cv2.imread(row["mask"], cv2.IMREAD_GRAYSCALE)
        assert picture is not None and mask is not None and mask.shape == picture.shape[:2] and mask.max() == 255
    # the per-minute counts hold every frame of the run
    minutes = EventStore(db, create=False).minutes()
    assert sum(m["frames"] for m in minutes) == 48 and sum(m["defects"] for m in minutes) == len(defects)
    listing = CliRunner().invoke(app, ["events", str(db), "--min-score", str(max(e["score"] for e in defects))])
    assert listing.exit_code == 0 and "1 events" in listing.output


def test_filters_select_by_time_score_and_camera(tmp_path):
    store = EventStore(tmp_path / "s.db")
    for i in range(10):
        _add(store, _message(i, 1000.0 + i, score=float(i), camera="a" if i % 2 else "b"))
    assert [e["frame"] for e in store.events(EventFilter(since=1003, until=1007))] == [3, 4, 5, 6]
    assert [e["frame"] for e in store.events(EventFilter(min_score=8))] == [8, 9]
    assert [e["frame"] for e in store.events(EventFilter(camera="a", limit=2))] == [1, 3]
    assert parse_when("2h", "--since", now=10_000.0) == 10_000.0 - 7200
    with pytest.raises(EdgekdError, match="--since 'yesterday' is not a time"):
        parse_when("yesterday", "--since")
    store.close()


def test_retention_removes_old_events_then_the_oldest_over_the_size_with_their_files(tmp_path):
    now = time.time()
    store = EventStore(tmp_path / "s.db", keep_days=1.0)
    for i in range(5):
        _add(store, _message(i, now - 3 * 86400 + i))  # three days old
    for i in range(5, 10):
        _add(store, _message(i, now - 60 + i))
    (store.files / "999_00000099.jpg").write_bytes(b"no row: a kill between file and row")
    assert store.apply_retention(now) == 5
    assert [e["frame"] for e in store.events()] == list(range(5, 10))
    assert sorted(p.name for p in store.files.iterdir()) == sorted(
        n for e in store.events() for n in (e["picture"], e["mask"]))
    store.max_mb = (store.size_bytes() - 4000) / 1e6  # about two events too many
    store.apply_retention(now)
    kept = [e["frame"] for e in store.events()]
    assert kept and kept == list(range(10 - len(kept), 10)) and store.size_bytes() <= store.max_mb * 1e6
    store.close()


def test_a_missing_store_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "edgekd", "events", str(tmp_path / "none.db")], capture_output=True,
                            text=True)
    assert result.returncode != 0 and result.stderr.strip().count("\n") == 0 and "does not exist" in result.stderr


@pytest.mark.slow
def test_kill_nine_mid_run_leaves_a_store_that_opens_with_every_committed_event(onnx_exports, line_video, tmp_path):
    db, jsonl = tmp_path / "line.db", tmp_path / "e.jsonl"
    # --threshold 0: every frame is a defect event, so the run writes events as fast as it can
    child = subprocess.Popen([sys.executable, "-m", "edgekd", "run", "--model", str(onnx_exports["fp32"]), "--source",
                              str(line_video), "--device", "cpu", "--loop", "--threshold", "0", "--jsonl", str(jsonl),
                              "--events", str(db), "--stats-every", "0"], stderr=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not jsonl.exists() or len(jsonl.read_text().splitlines()) < 60):
        time.sleep(0.1)
    child.send_signal(signal.SIGKILL)
    child.wait()
    written = [json.loads(line) for line in jsonl.read_text().splitlines() if line.endswith("}")]
    assert len(written) >= 60
    with sqlite3.connect(db) as check:
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    store = EventStore(db, create=False)
    stored = store.events()
    # the JSONL is written before the store for each frame: every frame it holds but the last is in the store
    stored_keys = [(e["frame"], e["time"]) for e in stored]
    assert set((w["frame"], w["time"]) for w in written[:-1]) <= set(stored_keys)
    assert all((store.files / e["picture"]).is_file() and (store.files / e["mask"]).is_file() for e in stored)
    store.close()

"""The dashboard's history page (the run's event store, read-only beside the writer) and the live picture's plain
camera view."""

import http.client
import json
import os
import time

import cv2
import numpy as np
import pytest

from edgekd.calibration import Thresholds
from edgekd.dashboard.access import parse_serve_address
from edgekd.dashboard.board import LiveBoard
from edgekd.dashboard.server import Dashboard
from edgekd.events.store import EventStore
from edgekd.sinks import Result
from edgekd.stream.stats import RunStats

TOKEN = "history-token-for-tests-0123"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def _store(path, count: int = 6) -> EventStore:
    store = EventStore(path)
    for i in range(count):
        stem = f"{1000 + i}_{i:08d}"
        picture, mask = store.files / f"{stem}.jpg", store.files / f"{stem}_mask.png"
        picture.write_bytes(b"\xff\xd8" + os.urandom(64))
        mask.write_bytes(b"\x89PNG" + os.urandom(32))
        store.add({"frame": i, "time": 1000.0 + i, "score": float(i), "defective": True, "verdict": "defect",
                   "regions": [], "latency_ms": 1.0, "model": "m.onnx", "camera": "camera 0"}, picture, mask)
    return store


class _Served:
    def __init__(self, events):
        self.board = LiveBoard(stream_fps=50.0)
        self.board.attach(Thresholds(1.0, 1.0), (0.0, 2.0), RunStats().snapshot, {"model": "m.onnx"})
        self.dashboard = Dashboard(parse_serve_address("127.0.0.1:0"), TOKEN, self.board, events)
        self.dashboard.start()

    def get(self, path, headers=None):
        connection = http.client.HTTPConnection("127.0.0.1", self.dashboard.port, timeout=10)
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        body = response.read()
        connection.close()
        return response, body

    def close(self):
        self.dashboard.close()


@pytest.fixture
def served(tmp_path):
    store = _store(tmp_path / "line.db")
    served = _Served(tmp_path / "line.db")
    served.store = store  # the run's writer stays open beside the page's reads
    yield served
    served.close()
    store.close()


def test_history_lists_the_stores_events_newest_first_with_filters_and_pictures(served):
    assert served.get("/api/history")[0].status == 401  # the token guards it like every route
    response, body = served.get("/api/history", BEARER)
    events = json.loads(body)["events"]
    assert response.status == 200 and [e["frame"] for e in events] == [5, 4, 3, 2, 1, 0]
    assert [e["frame"] for e in json.loads(served.get("/api/history?min_score=3.5&limit=1", BEARER)[1])["events"]] \
        == [5]
    picture = served.get(events[0]["picture"], BEARER)
    stored = served.store.events()[-1]
    assert picture[0].status == 200 and picture[0].getheader("Content-Type") == "image/jpeg"
    assert picture[1] == (served.store.files / stored["picture"]).read_bytes()
    mask = served.get(events[0]["mask"], BEARER)
    assert mask[0].getheader("Content-Type") == "image/png"
    assert mask[1] == (served.store.files / stored["mask"]).read_bytes()
    # the run goes on writing while the page reads: a new event appears at the next request
    stem = served.store.files / "2000_00000099"
    stem.with_suffix(".jpg").write_bytes(b"\xff\xd8")
    served.store.add({"frame": 99, "time": 2000.0, "score": 9.0, "defective": True, "verdict": "defect",
                      "regions": [], "latency_ms": 1.0, "model": "m.onnx", "camera": "camera 0"},
                     stem.with_suffix(".jpg"), None)
    assert json.loads(served.get("/api/history?limit=1", BEARER)[1])["events"][0]["frame"] == 99
    assert served.get("/api/history/12345.jpg", BEARER)[0].status == 404
    response, body = served.get("/api/history?since=yesterday", BEARER)
    assert response.status == 400 and "is not a time" in json.loads(body)["error"]
    page = served.get("/history", BEARER)
    assert page[0].status == 200 and b"/history.js" in page[1] and served.get("/history.js", BEARER)[0].status == 200


def test_without_an_event_store_the_history_says_how_to_get_one(tmp_path):
    served = _Served(None)
    try:
        response, body = served.get("/api/history", BEARER)
        assert response.status == 404 and b"--events DB" in body
    finally:
        served.close()


def test_the_live_picture_can_be_the_plain_camera_image():
    board = LiveBoard(stream_fps=50.0)
    board.attach(Thresholds(1.0, 1.0), (0.0, 2.0), RunStats().snapshot, {})
    try:
        image = np.zeros((64, 128, 3), np.uint8)
        image[:, :64] = (0, 0, 255)  # red left half, in BGR
        amap = np.full((32, 32), 1.9, np.float32)  # a hot heatmap over everything
        board.write(Result(0, time.time(), None, image, amap, np.ones((32, 32), np.uint8), 1.9, True, True), None)
        with board.watch(plain=True):
            plain = board.next_frame(-1, timeout=5.0, plain=True)
        with board.watch():
            annotated = board.next_frame(-1, timeout=5.0)
        decode = lambda data: cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # noqa: E731
        assert np.abs(decode(plain[1]).astype(int) - image).mean() < 4  # the camera's picture, as it was
        assert np.abs(decode(annotated[1]).astype(int) - image).mean() > 20  # the heatmap and banner drawn on it
    finally:
        board.close()


def test_metrics_count_each_line_outputs_messages():
    from edgekd.dashboard.metrics import metrics_registry, render
    board = LiveBoard()
    outputs = {"mqtt": {"queued": 12, "sent": 9, "spooled": 4, "dropped": 0, "retries": 3, "pending": 3},
               "webhook": {"queued": 2, "sent": 2, "spooled": 0, "dropped": 1, "retries": 0, "pending": 0}}
    board.attach(Thresholds(1.0, 1.0), (0.0, 2.0), lambda: {**RunStats().snapshot(), "outputs": outputs}, {})
    try:
        text = render(metrics_registry(board, lambda: {})).decode()
        for line in ('edgekd_output_messages_total{output="mqtt",state="sent"} 9.0',
                     'edgekd_output_messages_total{output="mqtt",state="spooled"} 4.0',
                     'edgekd_output_messages_total{output="webhook",state="dropped"} 1.0',
                     'edgekd_output_pending{output="mqtt"} 3.0'):
            assert line in text, line
    finally:
        board.close()

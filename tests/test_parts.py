"""Parts: frames grouped by count or by the PLC's trigger (MQTT topic, OPC UA node), one verdict per part with its
worst frame, on every output (JSONL part ids, MQTT PREFIX/part, OPC UA LastPart*, the event store)."""

import asyncio
import json
import threading
import time

import pytest

from edgekd.data.layouts import load_dataset
from edgekd.data.video import write_line_video
from edgekd.errors import EdgekdError
from edgekd.events.store import EventStore
from edgekd.stream.cli_run import run_stream
from edgekd.stream.parts import PartGrouper, PartRule
from edgekd.stream.request import RunRequest

from mqtt_broker import Broker, Listener, free_port

DEFECT_FRAMES = [6, 17, 29, 30, 41]


@pytest.fixture(scope="module")
def line_video(synth_root, tmp_path_factory):
    path = tmp_path_factory.mktemp("line") / "line.mp4"
    return write_line_video(load_dataset(synth_root, "wood"), path, 48, DEFECT_FRAMES, fps=25.0)["video"]


def _run(model, video, **options):
    request = RunRequest(**{"device": "cpu", "batch": 4, "stats_every": 0.0, **options})
    return run_stream(request.replace(model=str(model), source=str(video)), echo=lambda text: None)


def test_parts_by_count_need_k_defective_frames_and_keep_their_worst_frame():
    grouper = PartGrouper(PartRule(frames=4, defects=2).check())
    defective = [0, 1, 0, 0, 1, 1, 0, 0, 0, 0]
    ended, ids = [], []
    for i, bad in enumerate(defective):
        part_id, done = grouper.add(i, 100.0 + i, score=float(i % 4 == 2) + bad, defective=bool(bad), rejected=None)
        ids.append(part_id)
        ended += done
    ended += grouper.close()  # the last part is cut short: still reported
    assert ids == ["1"] * 4 + ["2"] * 4 + ["3"] * 2
    assert [(p.id, p.frames, p.defect_frames, p.verdict, p.worst_frame) for p in ended] == [
        ("1", 4, 1, False, 1), ("2", 4, 2, True, 4), ("3", 2, 0, False, 8)]


def test_a_trigger_starts_a_part_at_its_own_time_not_when_the_runner_gets_to_it():
    grouper = PartGrouper(PartRule(trigger="mqtt").check())
    assert grouper.add(0, 10.0, 0.0, False, None) == (None, [])  # before the first trigger: no part
    grouper.trigger("A-17", at=10.5)
    grouper.trigger("A-18", at=11.5)  # both arrive before the runner reaches frame 1
    ids = [grouper.add(i, 10.0 + 0.25 * i, 0.0, i == 3, None)[0] for i in range(1, 8)]
    assert ids == [None, "A-17", "A-17", "A-17", "A-17", "A-18", "A-18"]
    (last,) = grouper.close()
    assert last.id == "A-18" and last.first_frame == 6


@pytest.mark.parametrize("options, message", [
    ({"part_frames": 4, "part_trigger": "mqtt"}, "both cut parts"),
    ({"part_frames": 4, "part_defects": 5}, "--part-defects 5 must be from 1 to the part's frames"),
    ({"part_trigger": "mqtt"}, "give --mqtt"),
    ({"part_trigger": "opcua"}, "give --opcua"),
    ({"part_defects": 2}, "give --part-frames N or --part-trigger"),
])
def test_part_option_mistakes_are_one_line(options, message, tmp_path):
    with pytest.raises(EdgekdError, match=message):
        _run(tmp_path / "never-loaded.onnx", tmp_path / "v.mp4", **options)


@pytest.mark.slow
def test_parts_by_count_reach_the_jsonl_mqtt_and_the_event_store(onnx_exports, line_video, tmp_path):
    broker = Broker(tmp_path / "broker").start()
    listener = Listener(broker.port, "line1/part")
    try:
        summary = _run(onnx_exports["fp32"], line_video, part_frames=6, part_defects=1, jsonl=tmp_path / "e.jsonl",
                       events=tmp_path / "line.db", mqtt=f"{broker.url}/line1", spool=tmp_path / "spool")
        frames = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
        assert [f["part"] for f in frames] == [str(1 + i // 6) for i in range(48)]
        expected = []
        for n in range(8):
            part = frames[6 * n:6 * n + 6]
            worst = max(part, key=lambda f: f["score"])
            expected.append({"part": str(n + 1), "first_frame": 6 * n, "last_frame": 6 * n + 5, "frames": 6,
                             "defect_frames": sum(f["defective"] for f in part),
                             "verdict": "defect" if any(f["defective"] for f in part) else "ok",
                             "worst_frame": worst["frame"], "worst_score": worst["score"]})
        deadline = time.monotonic() + 10
        while len(listener.messages) < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        sent = [json.loads(p) for p in listener.payloads("line1/part")]
        stored = EventStore(tmp_path / "line.db", create=False).parts()
        for got in (sent, stored):
            assert [{k: m[k] for k in expected[0]} for m in got] == expected
        assert summary["parts"] == 8 and summary["defective_parts"] == sum(e["verdict"] == "defect" for e in expected)
    finally:
        listener.close()
        broker.stop()


@pytest.mark.slow
def test_the_plc_starts_parts_through_mqtt(onnx_exports, line_video, tmp_path):
    import paho.mqtt.client as mqtt
    broker = Broker(tmp_path / "broker").start()
    plc = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    plc.connect("127.0.0.1", broker.port)
    plc.loop_start()
    sent = []

    def triggers():  # parts enter the view at about 0.5 s and 1.2 s of a 1.9 s clip played in real time
        for delay, part in ((0.8, "P-100"), (0.7, "P-101")):
            time.sleep(delay)
            sent.append((time.time(), part))
            plc.publish("line1/trigger", part, qos=1).wait_for_publish(2)
    thread = threading.Thread(target=triggers)
    try:
        thread.start()
        summary = _run(onnx_exports["fp32"], line_video, part_trigger="mqtt", mqtt=f"{broker.url}/line1",
                       realtime=True, batch=1, jsonl=tmp_path / "e.jsonl", spool=tmp_path / "spool")
        thread.join(5)
        frames = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
        parts = [f.get("part") for f in frames]
        # frames belong to no part until the first trigger, then to the part each trigger started, in time order
        assert parts[0] is None and parts[-1] == "P-101" and "P-100" in parts
        first_100, first_101 = parts.index("P-100"), parts.index("P-101")
        assert parts[first_100:first_101] == ["P-100"] * (first_101 - first_100)
        assert all(p is None for p in parts[:first_100]) and all(p == "P-101" for p in parts[first_101:])
        assert frames[first_101]["time"] >= sent[1][0] - 0.1 and summary["parts"] == 2
    finally:
        plc.loop_stop()
        broker.stop()


@pytest.mark.slow
def test_the_plc_starts_parts_through_opcua_and_reads_their_verdicts(onnx_exports, line_video, tmp_path):
    port = free_port()
    url = f"opc.tcp://127.0.0.1:{port}/edgekd/"
    seen = {}

    async def plc():
        from asyncua import Client, ua
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                async with Client(url, timeout=2) as client:
                    index = await client.get_namespace_index("urn:edgekd")
                    folder = await client.nodes.objects.get_child(f"{index}:edgekd")
                    trigger = await folder.get_child(f"{index}:PartTrigger")
                    counter = await folder.get_child(f"{index}:PartCounter")
                    verdict = await folder.get_child(f"{index}:LastPartVerdict")
                    for part in ("B-1", "B-2"):
                        await asyncio.sleep(0.6)
                        await trigger.write_value(ua.DataValue(ua.Variant(part, ua.VariantType.String)))
                    while await counter.read_value() < 1:
                        await asyncio.sleep(0.02)
                    seen["counter"], seen["verdict"] = await counter.read_value(), await verdict.read_value()
                    return
            except (OSError, asyncio.TimeoutError, ConnectionError):
                await asyncio.sleep(0.05)

    thread = threading.Thread(target=lambda: asyncio.run(plc()))
    thread.start()
    summary = _run(onnx_exports["fp32"], line_video, part_trigger="opcua", opcua=f"opc.tcp://127.0.0.1:{port}",
                   realtime=True, batch=1, jsonl=tmp_path / "e.jsonl")
    thread.join(10)
    frames = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    parts = [f.get("part") for f in frames]
    assert "B-1" in parts and parts[-1] == "B-2" and summary["parts"] == 2
    b1 = [f for f in frames if f.get("part") == "B-1"]
    assert seen["counter"] >= 1 and seen["verdict"] == ("defect" if any(f["defective"] for f in b1) else "ok")

"""`edgekd run --opcua`: an asyncua client reads the nodes while a video with known defect frames plays in real time;
what it reads matches the JSONL frame by frame. Anonymous on loopback only; elsewhere a user name and password."""

import asyncio
import json
import threading
import time

import pytest

from edgekd.data.layouts import load_dataset
from edgekd.data.video import write_line_video
from edgekd.errors import EdgekdError
from edgekd.stream.cli_run import run_stream
from edgekd.stream.request import RunRequest

from mqtt_broker import free_port

DEFECT_FRAMES = [6, 17, 29, 30, 41]
READ = ("FrameCounter", "Score", "Verdict", "DefectFrames", "Defect", "DefectCount")


@pytest.fixture(scope="module")
def line_video(synth_root, tmp_path_factory):
    path = tmp_path_factory.mktemp("line") / "line.mp4"
    return write_line_video(load_dataset(synth_root, "wood"), path, 48, DEFECT_FRAMES, fps=25.0)["video"]


class Reader:
    """A PLC stand-in: connects when the server is up and reads the nodes in one request every 20 ms."""

    def __init__(self, url: str, user: str | None = None, password: str | None = None):
        self.url, self.user, self.password = url, user, password
        self.reads: list[tuple] = []
        self.notified: list[int] = []  # DefectFrames, as the subscription reports its changes
        self.fixed: dict = {}
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self.thread.start()

    async def _main(self):
        from asyncua import Client
        deadline = time.monotonic() + 60
        while not self.stop.is_set() and time.monotonic() < deadline:
            client = Client(self.url, timeout=2)
            if self.user:
                client.set_user(self.user)
                client.set_password(self.password)
            try:
                async with client:
                    index = await client.get_namespace_index("urn:edgekd")
                    folder = await client.nodes.objects.get_child(f"{index}:edgekd")
                    nodes = [await folder.get_child(f"{index}:{name}") for name in READ]
                    reader = self

                    class Changes:
                        def datachange_notification(self, node, value, data):
                            reader.notified.append(value)
                    subscription = await client.create_subscription(20, Changes())
                    await subscription.subscribe_data_change(nodes[READ.index("DefectFrames")])
                    fixed = {name: await folder.get_child(f"{index}:{name}")
                             for name in ("Model", "Camera", "ImageThreshold", "PixelThreshold", "Health")}
                    while not self.stop.is_set():
                        self.reads.append(tuple(await client.read_values(nodes)))
                        if self.reads[-1][0] and not self.fixed:  # frames flow: the run has set the fixed nodes
                            self.fixed = {name: await node.read_value() for name, node in fixed.items()}
                        await asyncio.sleep(0.02)
            except (OSError, asyncio.TimeoutError, ConnectionError):
                await asyncio.sleep(0.05)  # not up yet, or gone at the end of the run
            except Exception as exc:  # a refusal: what the test wants to see
                self.error = exc
                return

    def close(self):
        self.stop.set()
        self.thread.join(10)


@pytest.mark.slow
def test_an_opcua_client_reads_what_the_jsonl_says_frame_by_frame(onnx_exports, line_video, tmp_path):
    port = free_port()
    reader = Reader(f"opc.tcp://127.0.0.1:{port}/edgekd/")
    jsonl = tmp_path / "e.jsonl"
    request = RunRequest(device="cpu", batch=1, stats_every=0.0, model=str(onnx_exports["fp32"]),
                         source=str(line_video), realtime=True, jsonl=jsonl, opcua=f"opc.tcp://127.0.0.1:{port}")
    summary = run_stream(request, echo=lambda text: None)
    reader.close()
    events = [json.loads(line) for line in jsonl.read_text().splitlines()]
    seen = {read[0]: read for read in reader.reads if read[0]}
    assert len(seen) >= 10, f"the client saw only {len(seen)} frames"
    for counter, (_, score, verdict, defect_frames, defect, regions) in seen.items():
        event = events[counter - 1]  # FrameCounter counts from 1
        assert (verdict, defect, regions) == (event["verdict"], event["verdict"] == "defect", len(event["regions"]))
        assert score == pytest.approx(event["score"], abs=1e-5)
        assert defect_frames == sum(e["verdict"] == "defect" for e in events[:counter])
    assert reader.fixed["Model"] == str(onnx_exports["fp32"]) and reader.fixed["Health"] == "running"
    assert reader.fixed["ImageThreshold"] > 0 and summary["outputs"]["opcua"]["frames"] == 48
    # the subscription saw the latched counter rise through the JSONL's running count of defect verdicts
    running = {sum(e["verdict"] == "defect" for e in events[:n]) for n in range(49)}
    assert len(reader.notified) >= 2 and reader.notified == sorted(reader.notified)
    assert set(reader.notified) <= running and max(reader.notified) > 0
    assert summary["outputs"]["opcua"]["age_ms_p50"] > 0


def test_opcua_off_loopback_needs_credentials_and_refuses_anonymous_clients(tmp_path):
    with pytest.raises(EdgekdError, match="reachable from other machines: give --opcua-auth-file"):
        run_stream(RunRequest(model=str(tmp_path / "never-loaded.onnx"), source="x.mp4",
                              opcua=f"opc.tcp://0.0.0.0:{free_port()}"), echo=lambda text: None)
    from edgekd.sinks.opcua import OpcuaServer, parse_address
    port = free_port()
    server = OpcuaServer(parse_address(f"opc.tcp://0.0.0.0:{port}"), ("plc", "line-one-secret"))
    server.start()
    try:
        anonymous = Reader(f"opc.tcp://127.0.0.1:{port}/edgekd/")
        wrong = Reader(f"opc.tcp://127.0.0.1:{port}/edgekd/", "plc", "guess")
        right = Reader(f"opc.tcp://127.0.0.1:{port}/edgekd/", "plc", "line-one-secret")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (anonymous.error and wrong.error and right.reads):
            time.sleep(0.05)
        for reader in (anonymous, wrong, right):
            reader.close()
        assert anonymous.error is not None and wrong.error is not None and right.reads and right.error is None
    finally:
        server.close()


@pytest.mark.parametrize("url, message", [("http://127.0.0.1:4840", "is not an OPC UA address"),
                                          ("opc.tcp://127.0.0.1:123456", "port must be a number")])
def test_bad_opcua_addresses_are_one_line(url, message, tmp_path):
    with pytest.raises(EdgekdError, match=message):
        run_stream(RunRequest(model=str(tmp_path / "never-loaded.onnx"), source="x.mp4", opcua=url),
                   echo=lambda text: None)


def test_a_taken_opcua_port_fails_before_the_model_loads(tmp_path):
    import socket
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(EdgekdError, match="cannot listen"):
            run_stream(RunRequest(model=str(tmp_path / "never-loaded.onnx"), source="x.mp4",
                                  opcua=f"opc.tcp://127.0.0.1:{port}"), echo=lambda text: None)

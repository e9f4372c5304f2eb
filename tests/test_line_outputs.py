"""`edgekd run`'s line outputs against real receivers: Debian's mosquitto broker (plain, TLS with a self-made CA and a
password), a local HTTP receiver that fails and recovers, and the spool that keeps every message in between."""

import json
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from edgekd.data.layouts import load_dataset
from edgekd.data.video import write_line_video
from edgekd.errors import EdgekdError
from edgekd.sinks.delivery import Delivery
from edgekd.sinks.spool import Spool
from edgekd.stream.cli_run import run_stream
from edgekd.stream.request import RunRequest

from mqtt_broker import Broker, Listener, first_seen, free_port, mosquitto_binary

DEFECT_FRAMES = [6, 17, 29, 30, 41]
FRAMES = 48


@pytest.fixture(scope="module")
def line_video(synth_root, tmp_path_factory):
    path = tmp_path_factory.mktemp("line") / "line.mp4"
    return write_line_video(load_dataset(synth_root, "wood"), path, FRAMES, DEFECT_FRAMES, fps=25.0)["video"]


def _run(model, source, **options):
    request = RunRequest(**{"device": "cpu", "batch": 4, "stats_every": 0.0, **options})
    return run_stream(request.replace(model=str(model), source=str(source)), echo=lambda text: None)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _wait_for(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)


# ------------------------------------------------------------------------------------------------ the spool itself
def test_spool_keeps_order_across_reopening_and_drops_the_oldest_when_full_counting_them(tmp_path):
    spool = Spool(tmp_path / "s.db", limit=3)
    for i in range(5):
        spool.push(f"m{i}".encode())
    assert len(spool) == 3 and spool.dropped == 2
    assert [p for _, p in spool.peek(5)] == [b"m2", b"m3", b"m4"]
    spool.remove(spool.peek(1)[0][0])
    spool.close()
    again = Spool(tmp_path / "s.db", limit=3)
    assert [p for _, p in again.peek(5)] == [b"m3", b"m4"]
    again.close()


def test_delivery_retries_a_failing_receiver_and_keeps_the_order(tmp_path):
    received, failures, lines = [], [3], []

    def send(payload):
        if failures[0]:
            failures[0] -= 1
            raise ConnectionError("receiver down")
        received.append(payload)

    delivery = Delivery("test", Spool(tmp_path / "d.db"), send, lines.append)
    for i in range(20):
        delivery.push(str(i).encode())
    assert delivery.close(10.0) == 0
    assert received == [str(i).encode() for i in range(20)]
    counts = delivery.counters()
    assert counts["sent"] == 20 and counts["retries"] == 3 and counts["outages"] == 1 and counts["pending"] == 0
    assert any("unavailable" in line for line in lines) and any("is back" in line for line in lines)


# ------------------------------------------------------------------------------------------------ MQTT
@pytest.mark.slow
def test_mqtt_carries_every_frame_in_order_as_the_jsonl_has_it(onnx_exports, line_video, tmp_path):
    broker = Broker(tmp_path / "broker").start()
    listener = Listener(broker.port, "line1/#")
    try:
        model = onnx_exports["fp32"]
        summary = _run(model, line_video, mqtt=f"{broker.url}/line1", jsonl=tmp_path / "e.jsonl",
                       spool=tmp_path / "spool")
        _wait_for(lambda: len(listener.payloads("line1/verdict")) >= FRAMES and
                  listener.payloads("line1/status")[-1:] == [b"offline"])
        messages = [json.loads(p) for p in listener.payloads("line1/verdict")]
        events = _jsonl(tmp_path / "e.jsonl")
        assert len(messages) == FRAMES and [{k: m[k] for k in e} for m, e in zip(messages, events)] == events
        assert all(m["model"] == str(model) and m["camera"] == f"video {line_video}" for m in messages)
        assert listener.payloads("line1/status") == [b"online", b"offline"]
        assert summary["outputs"]["mqtt"] | {"age_ms_p50": 0, "age_ms_p99": 0} == {
            "queued": FRAMES, "sent": FRAMES, "spooled": 0, "retries": 0, "outages": 0, "dropped": 0, "pending": 0,
            "connected": True, "age_ms_p50": 0, "age_ms_p99": 0}
        late = Listener(broker.port, "line1/status", name="late")  # the status is retained for whoever comes later
        _wait_for(lambda: late.messages)
        assert late.messages == [("line1/status", b"offline", True)]
        late.close()
    finally:
        listener.close()
        broker.stop()


@pytest.mark.slow
def test_mqtt_every_change_sends_only_where_the_verdict_changes(onnx_exports, line_video, tmp_path):
    broker = Broker(tmp_path / "broker").start()
    listener = Listener(broker.port, "l/verdict")
    try:
        _run(onnx_exports["fp32"], line_video, mqtt=f"{broker.url}/l", mqtt_every="change", jsonl=tmp_path / "e.jsonl",
             spool=tmp_path / "spool")
        events = _jsonl(tmp_path / "e.jsonl")
        changes = [e["frame"] for i, e in enumerate(events) if i == 0 or e["verdict"] != events[i - 1]["verdict"]]
        _wait_for(lambda: len(listener.messages) >= len(changes))
        time.sleep(0.3)
        assert [json.loads(p)["frame"] for p in listener.payloads("l/verdict")] == changes
    finally:
        listener.close()
        broker.stop()


@pytest.mark.slow
def test_a_broker_killed_and_restarted_mid_run_loses_no_verdict(onnx_exports, line_video, tmp_path):
    """At least once: every verdict arrives, in order of first arrival, across a kill -9 of the broker; what was
    published while it was down waited in the spool."""
    broker = Broker(tmp_path / "broker", persistence=True)
    broker.config.write_text(broker.config.read_text() + "autosave_interval 1\n")
    broker.start()
    listener = Listener(broker.port, "line1/verdict", persistent=True)
    time.sleep(1.5)  # the listener's session is saved (autosave 1 s), so the restarted broker queues for it

    def outage():  # the run holds the main thread (it installs signal handlers): the broker dies beside it
        time.sleep(1.5)
        broker.stop(signal.SIGKILL)
        time.sleep(2.0)
        broker.start()
    killer = threading.Thread(target=outage)
    try:
        killer.start()
        result = _run(onnx_exports["fp32"], line_video, mqtt=f"{broker.url}/line1", jsonl=tmp_path / "e.jsonl",
                      spool=tmp_path / "spool", realtime=True, loop=True, max_frames=150, batch=1)
        killer.join(30)
        frames = [e["frame"] for e in _jsonl(tmp_path / "e.jsonl")]
        _wait_for(lambda: len(first_seen([json.loads(p)["frame"] for p in listener.payloads("line1/verdict")]))
                  >= len(frames), 20)
        arrived = [json.loads(p)["frame"] for p in listener.payloads("line1/verdict")]
        assert len(frames) == 150 and first_seen(arrived) == frames
        counts = result["outputs"]["mqtt"]
        assert counts["outages"] >= 1 and counts["spooled"] > 0 and counts["pending"] == 0 and counts["dropped"] == 0
        assert counts["sent"] == counts["queued"] == 150
    finally:
        listener.close()
        broker.stop()


def _make_tls(folder: Path) -> dict:
    """A CA and a server certificate for 127.0.0.1 signed by it (openssl)."""
    folder.mkdir(parents=True, exist_ok=True)

    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=edgekd test CA",
            "-keyout", "ca.key", "-out", "ca.crt")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
            "-out", "server.csr")
    (folder / "ext.cnf").write_text("subjectAltName = IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days",
            "2", "-extfile", "ext.cnf", "-out", "server.crt")
    return {"ca": folder / "ca.crt", "cert": folder / "server.crt", "key": folder / "server.key"}


@pytest.mark.slow
def test_mqtts_with_a_self_made_ca_and_a_password(onnx_exports, line_video, tmp_path):
    mosquitto_binary()
    tls = _make_tls(tmp_path / "tls")
    passwords = tmp_path / "passwords"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwords), "line", "s3cret"], check=True, capture_output=True)
    passwords.chmod(0o600)
    broker = Broker(tmp_path / "broker", password_file=passwords, tls=tls).start()
    auth = tmp_path / "auth"
    auth.write_text("line:s3cret\n")
    url = f"mqtts://127.0.0.1:{broker.port}/secure"
    try:
        import paho.mqtt.client as mqtt
        watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        watcher.tls_set(ca_certs=str(tls["ca"]))
        watcher.username_pw_set("line", "s3cret")
        seen = []
        watcher.on_connect = lambda c, u, f, rc, p: c.subscribe("secure/verdict", qos=1)
        watcher.on_message = lambda c, u, m: seen.append(m.payload)
        watcher.connect("127.0.0.1", broker.port)
        watcher.loop_start()
        time.sleep(0.5)
        summary = _run(onnx_exports["fp32"], line_video, mqtt=url, mqtt_ca=tls["ca"], mqtt_auth_file=auth,
                       max_frames=10, spool=tmp_path / "spool")
        _wait_for(lambda: len(seen) >= 10)
        assert [json.loads(p)["frame"] for p in seen] == list(range(10)) and summary["outputs"]["mqtt"]["sent"] == 10
        watcher.loop_stop()
        # a wrong password is refused at start, in one line naming the file, before the model loads
        auth.write_text("line:wrong\n")
        with pytest.raises(EdgekdError, match="refused.*--mqtt-auth-file"):
            _run(tmp_path / "not-loaded.onnx", line_video, mqtt=url, mqtt_ca=tls["ca"], mqtt_auth_file=auth,
                 spool=tmp_path / "spool")
        # and a broker whose certificate the CA did not sign is never trusted (no message would get through)
        other = _make_tls(tmp_path / "other")
        with pytest.raises(EdgekdError, match="refused|certificate"):
            _run(tmp_path / "not-loaded.onnx", line_video, mqtt=url, mqtt_ca=other["ca"], mqtt_auth_file=auth,
                 spool=tmp_path / "spool")
    finally:
        broker.stop()


@pytest.mark.slow
def test_a_broker_away_at_start_is_a_warning_and_the_next_run_sends_what_waited(onnx_exports, line_video, tmp_path,
                                                                                  capsys):
    port = free_port()
    url = f"mqtt://127.0.0.1:{port}/late"
    first = _run(onnx_exports["fp32"], line_video, mqtt=url, max_frames=12, spool=tmp_path / "spool")
    assert first["outputs"]["mqtt"]["pending"] == 12 and first["outputs"]["mqtt"]["sent"] == 0
    err = capsys.readouterr().err
    assert "does not answer yet" in err and "12 messages are still in the spool" in err
    broker = Broker(tmp_path / "broker", port=port).start()
    listener = Listener(port, "late/verdict")
    try:
        second = _run(onnx_exports["fp32"], line_video, mqtt=url, max_frames=3, spool=tmp_path / "spool")
        _wait_for(lambda: len(listener.messages) >= 15)
        assert [json.loads(p)["frame"] for p in listener.payloads("late/verdict")] == [*range(12), *range(3)]
        assert second["outputs"]["mqtt"]["pending"] == 0
    finally:
        listener.close()
        broker.stop()


# ------------------------------------------------------------------------------------------------ webhook
class _Receiver(BaseHTTPRequestHandler):
    """Fails the first `fail` POSTs (503), refuses a wrong token (401), keeps the rest."""
    fail, token, kept = 0, "", []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            code = 401
        elif type(self).fail > 0:
            type(self).fail -= 1
            code = 503
        else:
            type(self).kept.append(json.loads(body))
            code = 200
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_webhook_receiver_that_fails_for_a_while_gets_everything_in_order(onnx_exports, line_video, tmp_path):
    receiver = type("Receiver", (_Receiver,), {"fail": 4, "token": "t0ken-for-the-mes-receiver", "kept": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    token = tmp_path / "token"
    token.write_text("t0ken-for-the-mes-receiver\n")
    token.chmod(0o600)
    try:
        summary = _run(onnx_exports["fp32"], line_video, webhook=f"http://127.0.0.1:{server.server_port}/hook",
                       webhook_every="frame", webhook_token_file=token, jsonl=tmp_path / "e.jsonl",
                       spool=tmp_path / "spool")
        events = _jsonl(tmp_path / "e.jsonl")
        assert [{k: m[k] for k in e} for m, e in zip(receiver.kept, events)] == events and len(receiver.kept) == FRAMES
        counts = summary["outputs"]["webhook"]
        assert counts["retries"] == 4 and counts["sent"] == FRAMES and counts["pending"] == 0
    finally:
        server.shutdown()


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("options, message", [
    ({"mqtt": "http://127.0.0.1:1883/x"}, "--mqtt 'http://127.0.0.1:1883/x' is not a broker address"),
    ({"mqtt": "mqtt://127.0.0.1:1883"}, "give a topic prefix"),
    ({"mqtt": "mqtt://u:p@127.0.0.1:1883/x"}, "--mqtt-auth-file, not in the URL"),
    ({"mqtt": "mqtt://127.0.0.1:99999/x"}, "port must be a number"),
    ({"mqtt": "mqtt://127.0.0.1/x", "mqtt_auth_file": Path("/nonexistent/auth")}, "--mqtt-auth-file /nonexistent/auth"),
    ({"mqtt": "mqtt://127.0.0.1/x", "mqtt_ca": Path("/etc/hostname")}, "for TLS: use an mqtts:// address"),
    ({"mqtt": "mqtts://127.0.0.1/x", "mqtt_ca": Path("/nonexistent/ca.crt")}, "--mqtt-ca /nonexistent/ca.crt"),
    ({"mqtt": "mqtt://127.0.0.1/x", "mqtt_every": "sometimes"}, "--mqtt-every 'sometimes' must be one of"),
    ({"webhook": "ftp://127.0.0.1/x"}, "--webhook 'ftp://127.0.0.1/x' is not an HTTP address"),
    ({"webhook": "http://127.0.0.1:9/x", "webhook_token_file": Path("/nonexistent/t")}, "--webhook-token-file"),
    ({"events_keep_days": -1.0, "events": "EVENTS"}, "--events-keep-days -1 must be positive"),
])
def test_line_output_mistakes_fail_in_one_line_before_the_model_loads(options, message, tmp_path):
    options = {k: (tmp_path / "ev.db" if v == "EVENTS" else v) for k, v in options.items()}
    with pytest.raises(EdgekdError, match=message.replace("(", r"\(").replace("?", r"\?")) as caught:
        _run(tmp_path / "never-loaded.onnx", tmp_path / "never-opened.mp4", spool=tmp_path / "spool", **options)
    assert "\n" not in str(caught.value) and "never-loaded" not in str(caught.value)


def test_an_unwritable_spool_or_event_store_fails_in_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(EdgekdError, match="spool .*cannot be opened.*--spool"):
        _run(tmp_path / "never-loaded.onnx", tmp_path / "v.mp4", webhook="http://127.0.0.1:9/x", spool=blocker / "s")
    with pytest.raises(EdgekdError, match="--events .*give a writable place"):
        _run(tmp_path / "never-loaded.onnx", tmp_path / "v.mp4", events=blocker / "ev.db")


def test_line_outputs_are_keys_of_the_line_file(tmp_path):
    line = tmp_path / "line.yaml"
    line.write_text("model: m.onnx\ncamera: 0\nmqtt: mqtt://127.0.0.1:1883/line1\nmqtt-every: change\n"
                    "webhook: http://127.0.0.1:8000/hook\nevents: events.db\nevents_keep_days: 30\nspool: /var/spool\n")
    request = RunRequest.build(line, {"mqtt_qos": 0})
    assert (request.mqtt, request.mqtt_every, request.mqtt_qos, request.webhook, request.events,
            request.events_keep_days, request.spool) == ("mqtt://127.0.0.1:1883/line1", "change", 0,
                                                          "http://127.0.0.1:8000/hook", Path("events.db"), 30.0,
                                                          Path("/var/spool"))
    line.write_text("mqtt_every: always\n")
    with pytest.raises(EdgekdError, match="mqtt_every"):
        RunRequest.build(line, {})


def test_kill_nine_of_a_publishing_run_keeps_its_spooled_messages(tmp_path):
    """What a killed run had queued is still in the spool for the next run: a child pushes, is killed -9."""
    script = ("import sys, time\nfrom edgekd.sinks.spool import Spool\ns = Spool(sys.argv[1])\n"
              "for i in range(100000):\n    s.push(str(i).encode())\n    print(i, flush=True)\n")
    child = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "k.db")], stdout=subprocess.PIPE,
                             text=True)
    acknowledged = -1
    for line in child.stdout:
        acknowledged = int(line)
        if acknowledged >= 300:
            break
    child.send_signal(signal.SIGKILL)
    child.wait()
    spool = Spool(tmp_path / "k.db")
    kept = [int(p) for _, p in spool.peek(1_000_000)]
    assert kept == list(range(len(kept))) and len(kept) > acknowledged
    spool.close()


@pytest.mark.slow
def test_a_killed_run_is_reported_offline_by_the_brokers_last_will(onnx_exports, line_video, tmp_path):
    broker = Broker(tmp_path / "broker").start()
    listener = Listener(broker.port, "line1/status")
    child = subprocess.Popen([sys.executable, "-m", "edgekd", "run", "--model", str(onnx_exports["fp32"]), "--source",
                              str(line_video), "--device", "cpu", "--realtime", "--loop", "--mqtt",
                              f"{broker.url}/line1", "--spool", str(tmp_path / "spool"), "--stats-every", "0"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: listener.payloads("line1/status")[-1:] == [b"online"], 60)
        assert listener.payloads("line1/status")[-1:] == [b"online"]
        child.send_signal(signal.SIGKILL)
        child.wait()
        _wait_for(lambda: listener.payloads("line1/status")[-1:] == [b"offline"], 10)
        assert listener.payloads("line1/status") == [b"online", b"offline"]  # the will, sent by the broker
    finally:
        if child.poll() is None:
            child.kill()
        listener.close()
        broker.stop()

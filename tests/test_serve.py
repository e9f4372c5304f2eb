"""`edgekd serve` (a real tritonserver) and `edgekd run --server`: outputs equal to the local runtime's, bad
requests answered with errors, four clients at once, a server killed and restarted mid-run, a clean drain."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgekd.calibration import Thresholds

from cli_runner import edgekd

grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

pytestmark = pytest.mark.slow


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class Served:
    """`edgekd serve` in its own process, as a user starts it."""

    def __init__(self, artifact, ports, log: Path, max_batch=8):
        self.ports, self.log = ports, log
        self.args = [sys.executable, "-m", "edgekd.cli", "serve", str(artifact), "--http", str(ports[0]), "--grpc",
                     str(ports[1]), "--metrics", str(ports[2]), "--max-batch", str(max_batch), "--drain-s", "5"]
        self.process = None

    def start(self, timeout=120):
        self.handle = open(self.log, "ab")
        self.process = subprocess.Popen(self.args, stdout=self.handle, stderr=subprocess.STDOUT,
                                        env={**os.environ, "EDGEKD_OFFLINE": "1"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if b"serving on" in self.log.read_bytes():
                return self
            if self.process.poll() is not None:
                raise AssertionError(self.log.read_text())
            time.sleep(0.2)
        raise AssertionError(f"not ready: {self.log.read_text()}")

    def tritonserver_pid(self):
        wanted = f"--grpc-port={self.ports[1]}".encode()
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and wanted in (entry / "cmdline").read_bytes().split(b"\0"):
                    return int(entry.name)
            except OSError:
                continue
        return None

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)
        self.handle.close()
        return self.process.returncode


@pytest.fixture(scope="module")
def artifact(onnx_exports):
    return onnx_exports["fp32"]


@pytest.fixture(scope="module")
def server(artifact, tmp_path_factory):
    served = Served(artifact, free_ports(3), tmp_path_factory.mktemp("serve") / "serve.log").start()
    yield served
    assert served.stop() == 0


@pytest.fixture(scope="module")
def videos(synth_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    for i, frames in enumerate((40, 40, 40, 40, 400)):
        result = edgekd("data", "video", synth_root, folder / f"line{i}.mp4", "--category", "wood", "--frames", frames,
                        "--defect-every", "10", "--seed", i)
        assert result.returncode == 0, result.stderr
    return folder


def test_served_outputs_are_the_local_runtimes(server, artifact):
    from edgekd.runtime import open_runtime
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.ports[1]}")
    local = open_runtime(artifact)
    h, w = local.input_size
    frames = np.random.default_rng(0).integers(0, 256, (3, h, w, 3), dtype=np.uint8)
    request = grpcclient.InferInput("frames", [3, h, w, 3], "UINT8")
    request.set_data_from_numpy(frames)
    result = client.infer("wood", [request])
    maps, scores = local.run(frames.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
    np.testing.assert_allclose(result.as_numpy("score").ravel(), scores, rtol=1e-5)
    np.testing.assert_allclose(result.as_numpy("anomaly_map"), maps, rtol=1e-5, atol=1e-5)
    decide = Thresholds.for_masks(local.thresholds)  # the served mask is the one `edgekd run` draws: region cores
    assert decide.background is not None
    assert np.array_equal(result.as_numpy("mask"), np.stack([decide.mask(amap) for amap in maps[:, 0]])[:, None])
    floats = grpcclient.InferInput("images", [1, 3, h, w], "FP32")  # float tensors are the other way in
    floats.set_data_from_numpy(frames[:1].transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
    np.testing.assert_allclose(client.infer("wood", [floats]).as_numpy("score").ravel(), scores[:1], rtol=1e-5)
    params = client.get_model_config("wood", as_json=True)["config"]["parameters"]
    assert json.loads(params["edgekd_image_threshold"]["string_value"]) == local.thresholds["image"]
    import urllib.request
    assert urllib.request.urlopen(f"http://127.0.0.1:{server.ports[0]}/v2/health/ready").status == 200
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{server.ports[2]}/metrics").read().decode()
    assert 'nv_inference_count{model="wood",version="1"}' in metrics


def test_malformed_requests_get_errors_and_the_server_goes_on(server, artifact):
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.ports[1]}")
    from edgekd.artifacts import read_sidecar
    h, w = read_sidecar(artifact).input_size
    def send(name, shape, dtype, array, model="wood"):
        request = grpcclient.InferInput(name, shape, dtype)
        request.set_data_from_numpy(array)
        return client.infer(model, [request])
    cases = [("frames", [1, h // 2, w // 2, 3], "UINT8", np.zeros((1, h // 2, w // 2, 3), np.uint8), "wood", "shape"),
             ("frames", [1, h, w, 3], "FP32", np.zeros((1, h, w, 3), np.float32), "wood", "FP32"),
             ("frames", [1, h, w, 3], "UINT8", np.zeros((1, h, w, 3), np.uint8), "nosuchmodel", "nosuchmodel"),
             ("images", [1, 3, h, w], "FP32", np.full((1, 3, h, w), np.nan, np.float32), "wood", "NaN"),
             # far outside [0, 1] (the score came back NaN, which a client reads as normal) and 0..255 pixels
             ("images", [1, 3, h, w], "FP32", np.full((1, 3, h, w), 3e38, np.float32), "wood", r"in \[0, 1\]"),
             ("images", [1, 3, h, w], "FP32", np.full((1, 3, h, w), 200.0, np.float32), "wood", "0..255 pixels"),
             ("images", [1, 3, h // 2, w], "FP32", np.zeros((1, 3, h // 2, w), np.float32), "wood", "shape")]
    for name, shape, dtype, array, model, said in cases:
        with pytest.raises(InferenceServerException, match=said):
            send(name, shape, dtype, array, model)
    with pytest.raises(InferenceServerException, match="0 inputs"):  # Triton's own check
        client.infer("wood", [], outputs=None)
    both = [grpcclient.InferInput("frames", [1, h, w, 3], "UINT8"), grpcclient.InferInput("images", [1, 3, h, w], "FP32")]
    both[0].set_data_from_numpy(np.zeros((1, h, w, 3), np.uint8))
    both[1].set_data_from_numpy(np.zeros((1, 3, h, w), np.float32))
    with pytest.raises(InferenceServerException, match="exactly one of"):  # the model's own check
        client.infer("wood", both)
    assert send("frames", [1, h, w, 3], "UINT8", np.zeros((1, h, w, 3), np.uint8)).as_numpy("score").shape == (1, 1)


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_four_clients_at_once_every_frame_exactly_once_and_batched_on_the_server(server, videos, tmp_path):
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.ports[1]}")
    before = client.get_inference_statistics("wood", as_json=True)["model_stats"][0]
    runs = [subprocess.Popen([sys.executable, "-m", "edgekd.cli", "run", "--server", f"grpc://127.0.0.1:{server.ports[1]}",
                              "--model", "wood", "--source", str(videos / f"line{i}.mp4"), "--jsonl",
                              str(tmp_path / f"c{i}.jsonl"), "--batch", "1", "--stats-every", "0"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(4)]
    outputs = [r.communicate(timeout=300) for r in runs]
    for i, (run, (out, err)) in enumerate(zip(runs, outputs)):
        assert run.returncode == 0, err
        summary = json.loads(out.strip().splitlines()[-1])
        assert summary["processed"] == 40 and summary["lost"] == 0 and summary["complete"], summary
        assert sorted(e["frame"] for e in read_jsonl(tmp_path / f"c{i}.jsonl")) == list(range(40))
    after = client.get_inference_statistics("wood", as_json=True)["model_stats"][0]
    images = int(after["inference_count"]) - int(before.get("inference_count", 0))
    executions = int(after["execution_count"]) - int(before.get("execution_count", 0))
    assert images == 160  # every frame once (clients send one frame per request)
    assert executions < images, (images, executions)  # the server's dynamic batcher put requests together


def _pgid(pid: int):
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def streaming_client(served, video, jsonl, after_frames):
    """`edgekd run --server` on `video` in its own process, returned once `after_frames` events are written."""
    client = subprocess.Popen([sys.executable, "-m", "edgekd.cli", "run", "--server", f"grpc://127.0.0.1:{served.ports[1]}",
                               "--model", "wood", "--source", str(video), "--jsonl", str(jsonl),
                               "--stats-every", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not jsonl.exists() or len(jsonl.read_text().splitlines()) < after_frames):
        time.sleep(0.05)
    return client


def test_server_killed_and_restarted_mid_run(artifact, videos, tmp_path):
    served = Served(artifact, free_ports(3), tmp_path / "serve.log").start()
    jsonl = tmp_path / "line.jsonl"
    client = streaming_client(served, videos / "line4.mp4", jsonl, 30)
    killed = served.tritonserver_pid()
    os.kill(killed, signal.SIGKILL)  # the server dies mid-run
    served.process.wait(timeout=30)
    assert served.process.returncode != 0  # edgekd serve reports its server's death
    # and leaves none of the dead server's Python-backend stubs (its process group) behind
    deadline = time.monotonic() + 10  # SIGKILL is sent; the kernel and init take a moment to clear them
    while (left := [p for p in Path("/proc").iterdir() if p.name.isdigit() and _pgid(int(p.name)) == killed]) \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == []
    served.handle.close()
    served.start()
    out, err = client.communicate(timeout=300)
    assert client.returncode == 1, err  # frames were lost: not a complete run, and the exit code says so
    assert err.strip().splitlines()[-1].startswith("error: ") and "were never scored" in err
    summary = json.loads(out.strip().splitlines()[-1])
    events = read_jsonl(jsonl)  # every line whole: the run went on through the outage
    frames = [e["frame"] for e in events]
    assert frames == sorted(set(frames)) and summary["processed"] == len(events)
    assert summary["lost"] > 0 and summary["processed"] + summary["lost"] == summary["captured"] == 400
    assert summary["server_outages_s"] and not summary["complete"]
    assert "unavailable" in err and "back after" in err and "frames were lost" in err
    assert served.stop() == 0  # SIGTERM drains and exits cleanly
    assert served.tritonserver_pid() is None and "stopped" in (tmp_path / "serve.log").read_text()


def test_sigterm_lets_the_request_in_flight_finish(artifact, tmp_path):
    served = Served(artifact, free_ports(3), tmp_path / "serve.log").start()
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{served.ports[1]}")
    from edgekd.artifacts import read_sidecar
    h, w = read_sidecar(artifact).input_size
    request = grpcclient.InferInput("frames", [8, h, w, 3], "UINT8")
    request.set_data_from_numpy(np.zeros((8, h, w, 3), np.uint8))
    results = []
    threads = [threading.Thread(target=lambda: results.append(client.infer("wood", [request]))) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.05)
    served.process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == 4 and all(r.as_numpy("score").shape == (8, 1) for r in results)
    assert served.stop() == 0


def test_serve_refuses_an_engine_it_cannot_run_here(onnx_exports, tmp_path):
    pytest.importorskip("tensorrt_rtx")
    from edgekd.engine.builder import build_engine
    from edgekd.engine.gpu import gpu_count
    if gpu_count():
        pytest.skip("a GPU is here: the engine would load")
    engine = build_engine(onnx_exports["fp16"], tmp_path, batch="1,1,2", flavour="tensorrt_rtx").engine
    result = edgekd("serve", engine, "--http", "0", "--grpc", "0", "--metrics", "0")
    assert result.returncode != 0 and "needs an NVIDIA GPU" in result.stderr and "starting Triton" not in result.stdout


def test_serve_refuses_bad_artifacts_before_starting(onnx_exports, split_export, tmp_path):
    missing = edgekd("serve", tmp_path / "nope.onnx")
    assert missing.returncode != 0 and "does not exist" in missing.stderr
    split = edgekd("serve", split_export)
    assert split.returncode != 0 and "split export" in split.stderr
    unreachable = edgekd("run", "--server", "grpc://127.0.0.1:1", "--model", "wood", "--source", tmp_path)
    assert unreachable.returncode != 0 and "cannot reach the Triton server" in unreachable.stderr
    bad_url = edgekd("run", "--server", "ftp://x", "--model", "wood", "--source", tmp_path)
    assert bad_url.returncode != 0 and "grpc://HOST:PORT" in bad_url.stderr


# -- safe by default: where it listens, ports, and nothing left behind ------------------------------------------------
def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _group_left(pid: int) -> list:
    return [p for p in Path("/proc").iterdir() if p.name.isdigit() and _pgid(int(p.name)) == pid]


@pytest.mark.parametrize("args, said", [
    (("--http", "70000"), "--http 70000 is not a port"),
    (("--grpc", "-5"), "--grpc -5 is not a port"),
    (("--http", "9100", "--grpc", "9100"), "two endpoints on port 9100"),
    (("--http", "0", "--grpc", "0"), "leave nothing to serve"),
    (("--address", "0.0.0.0"), "--api-key-file"),
    (("--address", "no-such-host.invalid"), "is not an address of this machine"),
])
def test_serve_refuses_bad_ports_and_exposed_addresses_in_one_line(artifact, args, said, capsys, monkeypatch):
    from cli_runner import run_main
    code, out, err = run_main(capsys, monkeypatch, "serve", artifact, *args)  # the CLI entry point, in this process
    assert code == 2 and said in err and len(err.strip().splitlines()) == 1, err
    assert "starting Triton" not in out


def test_serve_listens_on_loopback_by_default_and_a_taken_port_is_one_line(artifact, tmp_path):
    from edgekd.serve.server import Exposure, Ports, server_command
    command = server_command(tmp_path, tmp_path, Ports(1, 2, 3), 5)
    assert {"--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1"} <= set(command)
    exposed = server_command(tmp_path, tmp_path, Ports(1, 2, 3), 5, Exposure("0.0.0.0", False, "k" * 20))
    assert "--metrics-address=127.0.0.1" in exposed and "--http-address=0.0.0.0" in exposed  # metrics have no key check
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        result = edgekd("serve", artifact, "--grpc", str(taken), timeout=60)
    assert result.returncode == 2 and f"--grpc {taken} on 127.0.0.1" in result.stderr, result.stderr


def test_an_exposed_server_answers_only_requests_with_the_api_key(artifact, videos, tmp_path):
    key = tmp_path / "api.key"
    key.write_text("line-3-serving-key-0123456789\n")
    key.chmod(0o600)
    ports = free_ports(3)
    served = Served(artifact, ports, tmp_path / "serve.log")
    served.args += ["--address", "0.0.0.0", "--api-key-file", str(key)]
    served.start()
    try:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{ports[1]}")
        with pytest.raises(InferenceServerException):
            client.get_model_config("wood")
        keyed = {"triton-grpc-protocol-edgekd-api-key": "line-3-serving-key-0123456789"}
        assert client.get_model_config("wood", headers=keyed)
        import urllib.error
        import urllib.request
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/v2/models/wood/config", timeout=5)
        without = edgekd("run", "--server", f"grpc://127.0.0.1:{ports[1]}", "--model", "wood", "--source",
                         videos / "line0.mp4", timeout=120)
        assert without.returncode == 2 and "cannot reach the Triton server" in without.stderr
        with_key = edgekd("run", "--server", f"grpc://127.0.0.1:{ports[1]}", "--model", "wood", "--source",
                          videos / "line0.mp4", "--server-key-file", key, "--stats-every", "0", timeout=120)
        assert with_key.returncode == 0, with_key.stderr
        assert json.loads(with_key.stdout.strip().splitlines()[-1])["processed"] == 40
    finally:
        assert served.stop() == 0


@pytest.mark.parametrize("how", ["SIGKILL once serving", "SIGTERM during start-up"])
def test_killing_edgekd_serve_leaves_no_tritonserver_behind(artifact, tmp_path, how):
    served = Served(artifact, free_ports(3), tmp_path / "serve.log")
    if how.startswith("SIGKILL"):
        served.start()
    else:
        served.handle = open(served.log, "ab")
        served.process = subprocess.Popen(served.args, stdout=served.handle, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while served.tritonserver_pid() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    triton = served.tritonserver_pid()
    assert triton is not None
    served.process.send_signal(signal.SIGKILL if how.startswith("SIGKILL") else signal.SIGTERM)
    served.process.wait(timeout=30)
    deadline = time.monotonic() + 45
    while (_group_left(triton) or any(_listening(p) for p in served.ports)) and time.monotonic() < deadline:
        time.sleep(0.2)
    served.handle.close()
    assert _group_left(triton) == [] and not any(_listening(p) for p in served.ports)


def test_a_server_that_drains_mid_run_and_stays_away_is_an_incomplete_run(artifact, videos, tmp_path):
    """Reported: the server drained mid-run, 346 of 400 frames were never scored, and the client exited 0 with an
    empty outage list (here: a 40-frame video). The outage still open at the end counts, and lost frames make the run incomplete."""
    served = Served(artifact, free_ports(3), tmp_path / "serve.log").start()
    client = streaming_client(served, videos / "line0.mp4", tmp_path / "line.jsonl", 10)
    assert served.stop() == 0  # SIGTERM: Triton drains and exits; it does not come back
    out, err = client.communicate(timeout=300)
    summary = json.loads(out.strip().splitlines()[-1])
    assert client.returncode == 1 and "were never scored" in err.strip().splitlines()[-1], err
    assert summary["lost"] > 0 and summary["processed"] + summary["lost"] == 40
    assert summary["server_outages_s"] and summary["complete"] is False

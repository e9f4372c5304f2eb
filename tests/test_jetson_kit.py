"""jetson/: the setup script (shellcheck, and its refusal off a Jetson), the service unit (systemd-analyze), the
Dockerfile, and the watchdog the runner feeds only while frames flow."""

import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from edgekd.runtime import open_runtime
from edgekd.calibration import Thresholds
from edgekd.stream.runner import RunOptions, Runner
from edgekd.stream.sources import FolderSource

JETSON = Path(__file__).resolve().parents[1] / "jetson"
REQUIRED = os.environ.get("EDGEKD_REQUIRE_TOOLS") == "1"  # .ci/run installs shellcheck: no silent skip there


def tool(name):
    path = shutil.which(name)
    if path is None:
        if REQUIRED:
            pytest.fail(f"{name} is missing: .ci/run installs it with apt")
        pytest.skip(f"{name} is not installed (apt install {name})")
    return path


def test_setup_script_passes_shellcheck():
    result = subprocess.run([tool("shellcheck"), str(JETSON / "setup.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_setup_script_stops_first_off_a_jetson_with_the_fix(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the script's first check is for root")
    if Path("/etc/nv_tegra_release").exists():
        pytest.skip("this is a Jetson")
    result = subprocess.run(["bash", str(JETSON / "setup.sh"), "--prefix", str(tmp_path / "opt")], capture_output=True,
                            text=True)
    assert result.returncode == 1 and "not a Jetson" in result.stderr and "fix:" in result.stderr
    assert not (tmp_path / "opt").exists()  # nothing was touched before the check


def test_service_unit_verifies_and_restarts_a_stalled_runner(tmp_path):
    text = (JETSON / "edgekd@.service").read_text()
    for setting in ("Type=notify", "WatchdogSec=", "Restart=always", "User=edgekd", "SupplementaryGroups=video",
                    "StandardOutput=journal", "run --config /etc/edgekd/%i.yaml"):
        assert setting in text, setting
    # systemd-analyze also checks that ExecStart's program exists: point it at this edgekd for the check
    edgekd_bin = shutil.which("edgekd") or str(Path(os.sys.executable).with_name("edgekd"))
    unit = tmp_path / "edgekd@line.service"
    unit.write_text(text.replace("/opt/edgekd/venv/bin/edgekd", edgekd_bin))
    result = subprocess.run([tool("systemd-analyze"), "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


def test_dockerfile_builds_on_l4t_and_copies_what_exists():
    text = (JETSON / "Dockerfile").read_text()
    assert "FROM nvcr.io/nvidia/l4t-jetpack:r36" in text and 'ENTRYPOINT ["edgekd"]' in text
    for line in text.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (JETSON.parent / source).exists(), source
    assert "--system-site-packages" in text and "python3-libnvinfer" in text


class FreezingFolder(FolderSource):
    """A 20 fps camera that delivers some frames, then freezes (a test stand-in for a stalled capture), then goes on."""

    def __init__(self, folder, frames_before_freeze, freeze_s, frame_s=0.05):
        super().__init__(folder)
        self.frames_before_freeze, self.freeze_s, self.frame_s = frames_before_freeze, freeze_s, frame_s

    def read(self):
        time.sleep(self.freeze_s if self.position == self.frames_before_freeze else self.frame_s)
        return super().read()


def test_watchdog_is_fed_only_while_frames_flow(onnx_exports, synth_root, tmp_path, monkeypatch):
    address = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    messages = []
    def collect():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                messages.append((time.monotonic(), listener.recv(256).decode()))
            except socket.timeout:
                continue
    stop = threading.Event()
    thread = threading.Thread(target=collect)
    thread.start()
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # systemd would expect a ping every 0.4 s; the runner pings at 0.2 s
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, image in enumerate(sorted((synth_root / "wood" / "test" / "good").glob("*.png")) * 3):
        shutil.copyfile(image, folder / f"{i:03d}.png")
    runtime = open_runtime(onnx_exports["fp32"])
    source = FreezingFolder(folder, frames_before_freeze=12, freeze_s=2.0)
    source.open()
    options = RunOptions(Thresholds.resolve(runtime.thresholds, None), max_batch=2, stats_every=0.0)
    try:
        summary = Runner(source, runtime, [], options, log=lambda text: None).run()
    finally:
        stop.set()
        thread.join()
        listener.close()
    assert summary["processed"] == len(list(folder.iterdir()))
    texts = [m for _, m in messages]
    assert texts[0] == "READY=1" and texts[-1] == "STOPPING=1" and texts.count("READY=1") == 1
    pings = [t for t, m in messages if m == "WATCHDOG=1"]
    assert len(pings) >= 2
    # during the 2 s freeze no frame is processed, so no ping: the longest silence spans the freeze
    assert max(b - a for a, b in zip(pings, pings[1:])) > 1.5


# -- edgekd bundle ----------------------------------------------------------------------------------------------------
def events(path):
    import json
    keep = ("frame", "position_s", "score", "defective", "verdict", "regions")
    return [{k: e[k] for k in keep} for e in map(json.loads, Path(path).read_text().splitlines())]


def test_bundle_round_trip_runs_like_the_model_itself(onnx_exports, synth_root, tmp_path):
    from cli_runner import edgekd
    artifact = onnx_exports["fp32"]
    video = tmp_path / "line.mp4"
    assert edgekd("data", "video", synth_root, video, "--category", "wood", "--frames", "30", "--defect-every", "10").returncode == 0
    made = edgekd("bundle", artifact, "--out", tmp_path / "out" / "wood.tar.gz")
    assert made.returncode == 0, made.stderr
    elsewhere = tmp_path / "box"
    elsewhere.mkdir()
    shutil.copyfile(tmp_path / "out" / "wood.tar.gz", elsewhere / "wood.tar.gz")  # as if copied to the line box
    import tarfile
    names = tarfile.open(elsewhere / "wood.tar.gz").getnames()
    assert {artifact.name, artifact.with_suffix(".json").name, "edgekd-bundle.json", "service/edgekd@.service",
            "plugin/MultiScaleFeatureDiffPlugin.cu"} <= set(names)
    direct = edgekd("run", "--model", artifact, "--source", video, "--jsonl", tmp_path / "direct.jsonl", "--stats-every", "0")
    bundled = edgekd("run", "--bundle", elsewhere / "wood.tar.gz", "--source", video, "--jsonl", tmp_path / "bundled.jsonl",
                     "--stats-every", "0")
    assert direct.returncode == 0 and bundled.returncode == 0, bundled.stderr
    bundled_events, direct_events = events(tmp_path / "bundled.jsonl"), events(tmp_path / "direct.jsonl")
    # The runner micro-batches frames as they arrive, and onnxruntime rounds some frames differently in a batch of
    # 3 than alone (3.8e-6 on a score of 117, measured): scores agree to 1e-6, everything else exactly.
    scores = [(b.pop("score"), d.pop("score")) for b, d in zip(bundled_events, direct_events)]
    assert bundled_events == direct_events and len(scores) == 30
    assert all(abs(b - d) <= 1e-6 * max(1.0, abs(d)) for b, d in scores)
    assert edgekd("bundle", artifact, "--out", tmp_path / "out" / "wood.tar.gz").returncode != 0  # no silent overwrite


def test_damaged_or_hostile_bundles_are_refused(onnx_exports, tmp_path):
    import io
    import tarfile
    from edgekd.deploy.bundle import open_bundle, write_bundle
    from edgekd.errors import EdgekdError
    good = write_bundle(onnx_exports["fp32"], tmp_path / "good.tar.gz")
    edited = tmp_path / "edited.tar.gz"  # the sidecar's thresholds changed after bundling
    with tarfile.open(good) as source, tarfile.open(edited, "w:gz") as target:
        for member in source.getmembers():
            data = source.extractfile(member).read()
            if member.name.endswith(".json") and member.name != "edgekd-bundle.json":
                data = data.replace(b'"image"', b'"image" ', 1)
                member.size = len(data)
            target.addfile(member, io.BytesIO(data))
    with pytest.raises(EdgekdError, match="differs from its manifest"):
        open_bundle(edited, tmp_path / "cache")
    hostile = tmp_path / "hostile.tar.gz"
    with tarfile.open(hostile, "w:gz") as archive:
        entry = tarfile.TarInfo("../escaped.txt")
        entry.size = 2
        archive.addfile(entry, io.BytesIO(b"hi"))
    with pytest.raises(EdgekdError, match="not a plain relative file name"):
        open_bundle(hostile, tmp_path / "cache")
    assert not (tmp_path / "escaped.txt").exists()
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(EdgekdError, match="cannot be unpacked"):
        open_bundle(truncated, tmp_path / "cache")
    lonely = tmp_path / "lonely.onnx"
    shutil.copyfile(onnx_exports["fp32"], lonely)
    with pytest.raises(EdgekdError, match="has no sidecar"):
        write_bundle(lonely, tmp_path / "lonely.tar.gz")


def test_the_example_line_file_is_what_edgekd_run_takes(tmp_path):
    """The example line file, its dashboard lines switched on, reaches edgekd run's own checks (a missing token
    file is named); every key in it is an option of edgekd run."""
    text = (JETSON / "example.yaml").read_text().replace("#serve:", "serve:").replace("#token_file:", "token_file:")
    line = tmp_path / "line.yaml"
    line.write_text(text.replace("/etc/edgekd/dashboard.token", str(tmp_path / "dashboard.token")))
    result = subprocess.run([os.sys.executable, "-m", "edgekd", "run", "--config", str(line), "--jsonl",
                             str(tmp_path / "e.jsonl")], capture_output=True, text=True)
    assert result.returncode != 0 and "dashboard.token does not exist" in result.stderr, result.stderr

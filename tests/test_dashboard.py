"""The operator dashboard (`edgekd run --serve`): where it may listen and who may read it, the board's pictures and
history, every route of the real HTTP server (the page in chromium: tests/test_dashboard_page.py)."""

import http.client
import json
import re
import socket
import stat
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgekd.dashboard.access import check_exposure, parse_serve_address
from edgekd.secret_files import read_token
from edgekd.dashboard.board import LiveBoard
from edgekd.dashboard.server import Dashboard
from edgekd.errors import EdgekdError
from edgekd.calibration import Thresholds
from edgekd.sinks import Region
from edgekd.sinks import Result
from edgekd.stream.stats import RunStats

sys.path.insert(0, str(Path(__file__).parent))
from cli_runner import run_main  # noqa: E402

TOKEN = "s3cret-token-for-tests-0123"


# -- where it listens, and the token ----------------------------------------------------------------------------------
@pytest.mark.parametrize("text, host, port, loopback", [
    ("8080", "127.0.0.1", 8080, True), (":0", "127.0.0.1", 0, True), ("127.0.0.1:9000", "127.0.0.1", 9000, True),
    ("localhost:9000", "localhost", 9000, True), ("[::1]:9000", "::1", 9000, True),
    ("0.0.0.0:8080", "0.0.0.0", 8080, False)])
def test_serve_addresses(text, host, port, loopback):
    address = parse_serve_address(text)
    assert (address.host, address.port, address.loopback) == (host, port, loopback)


@pytest.mark.parametrize("text, words", [("eighty", "HOST:PORT"), ("1.2.3.4:99999", "out of range"),
                                         ("no-such-host.invalid:80", "not an address of this machine")])
def test_bad_serve_addresses_say_what_to_give(text, words):
    with pytest.raises(EdgekdError, match=words):
        parse_serve_address(text)


def test_anything_but_loopback_needs_a_token():
    with pytest.raises(EdgekdError, match="--token-file"):
        check_exposure(parse_serve_address("0.0.0.0:8080"), None)
    check_exposure(parse_serve_address("0.0.0.0:8080"), TOKEN)
    check_exposure(parse_serve_address("127.0.0.1:8080"), None)


def test_tokens_are_checked(tmp_path, capsys):
    with pytest.raises(EdgekdError, match="at least 16"):
        read_token("short", None)
    with pytest.raises(EdgekdError, match="letters, digits"):
        read_token("a token; with spaces and semicolons", None)
    with pytest.raises(EdgekdError, match="does not exist"):
        read_token(None, tmp_path / "missing.token")
    with pytest.raises(EdgekdError, match="once"):
        read_token(TOKEN, tmp_path / "x")
    token_file = tmp_path / "dashboard.token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o644)
    assert read_token(None, token_file) == TOKEN
    assert "readable by other users" in capsys.readouterr().err
    token_file.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert read_token(None, token_file) == TOKEN and capsys.readouterr().err == ""
    assert read_token(None, None) is None


@pytest.mark.parametrize("args, words", [
    (["--serve", "0.0.0.0:8080"], "reachable from other machines"),
    (["--token", TOKEN], "use them with --serve"),
    (["--serve", "127.0.0.1:0", "--token", "short"], "at least 16"),
])
def test_run_refuses_a_bad_dashboard_before_the_model_loads(capsys, monkeypatch, tmp_path, args, words):
    # The model does not exist: the dashboard's problem must be the one reported, so it was checked first.
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    code, _, err = run_main(capsys, monkeypatch, "run", "--model", tmp_path / "missing.onnx", "--source", video, *args)
    assert code != 0 and words in err and len(err.strip().splitlines()) == 1, err


def test_a_taken_port_is_one_line(capsys, monkeypatch, tmp_path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    try:
        port = holder.getsockname()[1]
        code, _, err = run_main(capsys, monkeypatch, "run", "--model", tmp_path / "missing.onnx", "--source",
                                tmp_path, "--serve", f"127.0.0.1:{port}")
    finally:
        holder.close()
    assert code != 0 and "port is in use" in err and len(err.strip().splitlines()) == 1, err


# -- the board --------------------------------------------------------------------------------------------------------
def _result(index: int, score: float, verdict: bool, when: float, size: int = 64) -> Result:
    rng = np.random.default_rng(index)
    image = rng.integers(0, 255, (size, size * 2, 3), dtype=np.uint8)
    amap = np.full((32, 32), score, np.float32)
    mask = (amap > 1.0).astype(np.uint8)
    regions = [Region(4, 4, 10, 10, 100)] if verdict else []
    return Result(index, when, None, image, amap, mask, score, verdict, verdict, regions)


def _board(**options) -> LiveBoard:
    board = LiveBoard(**options)
    stats = RunStats()
    board.attach(Thresholds(1.0, 1.0), (0.0, 2.0), stats.snapshot, {"model": "m.onnx", "source": "video v.mp4",
                                                                     "backend": "onnxruntime"})
    return board


def _wait_for(condition, timeout=10.0, every=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return False


def test_board_keeps_one_picture_per_defect_second_and_a_bounded_history():
    board = _board(history_s=5.0, gallery_size=3)
    try:
        start = 1_000_000.0
        # 8 fps (exact in binary) for 25 s: a defect from 2.5 s to 5.5 s (frames 20-44), one frame at 11.25 s, and
        # 15.0-16.125 s (frames 120-129)
        defect = lambda i: 20 <= i < 45 or i == 90 or 120 <= i < 130  # noqa: E731
        for i in range(200):
            board.write(_result(i, 1.5 if defect(i) else 0.5, defect(i), start + i / 8, size=200), None)
        assert _wait_for(lambda: not board.pending_shots and len(board.gallery) == 3)
        time.sleep(0.1)  # let the encoder finish the shot in hand
        shots = board.defects()
        # the defect's first frame, then one a second while it lasts; the gallery keeps the newest three
        assert [s["frame"] for s in shots] == [128, 120, 90]
        assert all(s["regions"] == [{"x": 4, "y": 4, "w": 10, "h": 10, "area": 100, "length_px": 0.0,
                                      "width_px": 0.0}] for s in shots)
        thumb, full = board.defect_picture(shots[0]["id"], True), board.defect_picture(shots[0]["id"], False)
        assert thumb[:2] == full[:2] == b"\xff\xd8" and len(thumb) < len(full)
        assert board.defect_picture(10_000, False) is None
        points = board.scores()["points"]
        assert points[0][0] == 159 and points[-1][0] == 199  # only the last 5 s
        assert [p[0] for p in board.scores(since=195)["points"]] == [196, 197, 198, 199]
        assert board.status()["verdict"] == "ok" and board.status()["frame"] == 199
    finally:
        board.close()


def test_board_encodes_the_live_picture_only_while_watched():
    board = _board(stream_fps=50.0)
    try:
        for i in range(5):
            board.write(_result(i, 0.2, False, 100.0 + i), None)
        time.sleep(0.3)
        assert board.frame_jpeg is None  # no viewer: no encoding work at all
        with board.watch():
            first = board.next_frame(-1, timeout=5.0)
            assert first is not None and first[0] == 4 and first[1][:2] == b"\xff\xd8"
            board.write(_result(5, 0.2, False, 105.0), None)
            second = board.next_frame(first[0], timeout=5.0)
            assert second is not None and second[0] == 5
        assert board.viewers == 0
        board.close()
        assert board.next_frame(5, timeout=5.0) is None  # a finished run ends the streams at once
    finally:
        board.close()


# -- the HTTP server, in process --------------------------------------------------------------------------------------
class _Served:
    def __init__(self, serve: str, token: str | None):
        self.board = _board(stream_fps=50.0)
        self.dashboard = Dashboard(parse_serve_address(serve), token, self.board)
        self.dashboard.start()

    def request(self, path, method="GET", headers=None, host=None):
        connection = http.client.HTTPConnection("127.0.0.1", self.dashboard.port, timeout=10)
        connection.putrequest(method, path, skip_host=host is not None)
        if host is not None:
            connection.putheader("Host", host)
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        body = response.read()
        connection.close()
        return response, body

    def close(self):
        self.dashboard.close()


@pytest.fixture
def guarded():
    served = _Served("127.0.0.1:0", TOKEN)
    yield served
    served.close()


def test_every_request_without_the_token_is_refused(guarded):
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    for path in ("/", "/dashboard.js", "/api/status", "/api/scores", "/api/defects", "/api/frame.jpg", "/metrics",
                 "/healthz", "/stream.mjpg", "/api/defects/1.jpg"):
        response, body = guarded.request(path)
        assert response.status == 401 and b"token is required" in body, path
        response, _ = guarded.request(path, headers={"Authorization": "Bearer wrong-token-0123456789"})
        assert response.status == 401, path
    assert guarded.request("/?token=wrong")[0].status == 401
    # the first visit with the token sets an HttpOnly cookie and drops the token from the address
    response, _ = guarded.request(f"/?token={TOKEN}")
    assert response.status == 303 and response.getheader("Location") == "/"
    cookie = response.getheader("Set-Cookie")
    assert cookie.startswith(f"edgekd_token={TOKEN};") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert guarded.request("/api/status", headers={"Cookie": f"theme=dark; edgekd_token={TOKEN}"})[0].status == 200
    response, body = guarded.request("/healthz", headers=bearer)
    assert response.status == 200 and json.loads(body)["status"] == "starting"
    assert guarded.dashboard.request_counts()["refused"] == 21


def test_the_dashboard_is_read_only_and_self_contained(guarded):
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        response, body = guarded.request("/api/status", method=method, headers=bearer)
        assert response.status == 405 and b"read-only" in body
    response, page = guarded.request("/", headers=bearer)
    assert response.status == 200 and "default-src 'self'" in response.getheader("Content-Security-Policy")
    # everything the page loads comes from edgekd itself
    assert not re.search(rb"(src|href)=\"(https?:)?//", page)
    for asset in re.findall(rb"(?:src|href)=\"(/[^\"]*)\"", page):
        assert guarded.request(asset.decode(), method="HEAD", headers=bearer)[0].status == 200, asset
    response, body = guarded.request("/../../etc/passwd", headers=bearer)
    assert response.status == 404


def test_routes_answer_from_the_board(guarded):
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    board = guarded.board
    assert guarded.request("/api/frame.jpg", headers=bearer)[0].status == 404  # nothing seen yet
    for i in range(12):
        board.write(_result(i, 1.5 if i in (6, 7) else 0.4, i in (6, 7), 500.0 + i / 10), None)
    assert _wait_for(lambda: len(board.gallery) == 1)
    status = json.loads(guarded.request("/api/status", headers=bearer)[1])
    assert status["frame"] == 11 and status["verdict"] == "ok" and status["thresholds"] == {"image": 1.0, "pixel": 1.0}
    assert status["model"] == "m.onnx" and status["running"] is True
    scores = json.loads(guarded.request("/api/scores?since=9", headers=bearer)[1])
    assert [p[0] for p in scores["points"]] == [10, 11] and scores["threshold"] == 1.0
    defects = json.loads(guarded.request("/api/defects", headers=bearer)[1])["defects"]
    assert [d["frame"] for d in defects] == [6]
    response, picture = guarded.request(defects[0]["image"], headers=bearer)
    assert response.status == 200 and response.getheader("Content-Type") == "image/jpeg" and picture[:2] == b"\xff\xd8"
    assert guarded.request(defects[0]["thumb"], headers=bearer)[0].status == 200
    assert guarded.request("/api/frame.jpg", headers=bearer)[1][:2] == b"\xff\xd8"
    metrics = guarded.request("/metrics", headers=bearer)[1].decode()
    assert 'edgekd_threshold{kind="image"} 1.0' in metrics and "edgekd_last_score 0.4" in metrics
    assert 'edgekd_run_info{backend="onnxruntime",model="m.onnx",source="video v.mp4"} 1.0' in metrics
    assert re.search(r'edgekd_dashboard_requests_total\{outcome="ok"\} \d', metrics)


def test_mjpeg_stream_delivers_new_frames(guarded):
    board = guarded.board
    board.write(_result(0, 0.4, False, 10.0), None)
    connection = http.client.HTTPConnection("127.0.0.1", guarded.dashboard.port, timeout=10)
    connection.request("GET", "/stream.mjpg", headers={"Authorization": f"Bearer {TOKEN}"})
    response = connection.getresponse()
    assert response.status == 200 and "multipart/x-mixed-replace" in response.getheader("Content-Type")

    def feed():
        for i in range(1, 40):
            board.write(_result(i, 0.4, False, 10.0 + i / 10), None)
            time.sleep(0.03)
    threading.Thread(target=feed, daemon=True).start()
    frames = []
    while len(frames) < 3:
        part = b""
        while not part.endswith(b"\r\n\r\n"):
            part += response.read(1)
        headers = dict(line.split(": ", 1) for line in part.decode().strip().splitlines()[1:])
        data = response.read(int(headers["Content-Length"]))
        assert data[:2] == b"\xff\xd8"
        frames.append(int(headers["X-Frame"]))
        response.read(2)
    assert frames == sorted(set(frames))  # each part a newer frame
    assert board.viewers == 1
    connection.close()


def test_loopback_without_token_serves_loopback_names_only():
    served = _Served("127.0.0.1:0", None)
    try:
        for host in ("127.0.0.1", f"127.0.0.1:{served.dashboard.port}", "localhost:8080", "[::1]:80"):
            assert served.request("/healthz", host=host)[0].status == 200, host
        # a page elsewhere that rebinds its name to 127.0.0.1 still sends its own name
        response, body = served.request("/api/status", host="attacker.example:8080")
        assert response.status == 401 and b"loopback" in body
    finally:
        served.close()


# -- pictures that cannot be drawn, and raw HTTP -------------------------------------------------------------------
def test_a_picture_that_cannot_be_drawn_is_counted_and_the_board_goes_on():
    board = _board(stream_fps=50.0)
    try:
        broken = _result(0, 1.5, True, 10.0)
        broken.image = np.zeros((0, 0, 3), np.uint8)  # nothing to draw
        board.write(broken, None)
        assert _wait_for(lambda: board.picture_errors == 1)
        assert board.status()["last_picture_error"] and board.defects() == []
        board.write(_result(1, 1.5, True, 12.0, size=200), None)  # the next defect is drawn as usual
        assert _wait_for(lambda: len(board.defects()) == 1) and board.defects()[0]["frame"] == 1
    finally:
        board.close()


def test_a_live_picture_that_cannot_be_drawn_is_not_retried_in_a_loop():
    board = _board(stream_fps=10.0)
    try:
        broken = _result(0, 0.2, False, 10.0)
        broken.image = np.zeros((0, 0, 3), np.uint8)
        board.write(broken, None)
        with board.watch():
            time.sleep(0.55)  # at 10 pictures a second: about 6 tries of the same frame, not thousands
        assert 1 <= board.picture_errors <= 8
    finally:
        board.close()


# -- strict HTTP framing (the smuggling report) -----------------------------------------------------------------------
def _raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes on one connection and read until the server closes it (or goes quiet)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except socket.timeout:
            pass
    return b"".join(chunks)


def test_a_request_smuggled_in_a_refused_body_is_never_answered(guarded):
    """A 405 on a keep-alive connection used to leave its body unread, and the body was then served as a second
    request. Now the refusal closes the connection: one response, and the smuggled GET never reaches a route."""
    smuggled = f"GET /api/status HTTP/1.1\r\nHost: evil.example\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
    for method in (b"POST", b"PUT", b"GET"):
        reply = _raw(guarded.dashboard.port, method + b" /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: "
                     + str(len(smuggled)).encode() + b"\r\nConnection: keep-alive\r\n\r\n" + smuggled)
        assert reply.count(b"HTTP/1.1 ") == 1 and b"Connection: close" in reply, reply
        assert reply.startswith(b"HTTP/1.1 405" if method != b"GET" else b"HTTP/1.1 400") and b'"frames"' not in reply
    chunked = _raw(guarded.dashboard.port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                   + hex(len(smuggled))[2:].encode() + b"\r\n" + smuggled + b"\r\n0\r\n\r\n")
    assert chunked.count(b"HTTP/1.1 ") == 1 and chunked.startswith(b"HTTP/1.1 400")
    # a refused (401) request on keep-alive closes too, so a pipelined request after it is not read
    pipelined = _raw(guarded.dashboard.port, b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" + smuggled)
    assert pipelined.count(b"HTTP/1.1 ") == 1 and pipelined.startswith(b"HTTP/1.1 401")


def test_headers_are_capped_and_good_keep_alive_still_works(guarded):
    huge = b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(
        b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000) for i in range(40)) + b"\r\n"
    reply = _raw(guarded.dashboard.port, huge)
    assert reply.startswith(b"HTTP/1.1 431") and reply.count(b"HTTP/1.1 ") == 1
    auth = f"Authorization: Bearer {TOKEN}\r\n".encode()
    two = (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth + b"\r\n") * 2
    with socket.create_connection(("127.0.0.1", guarded.dashboard.port), timeout=5) as sock:
        sock.sendall(two)
        data = b""
        while data.count(b"HTTP/1.1 ") < 2 or not data.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    assert data.count(b"HTTP/1.1 200") == 2  # both pipelined requests answered on one connection

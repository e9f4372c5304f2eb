"""The dashboard's HTTP server: a thread per request (the MJPEG stream holds one per viewer), GET and HEAD only.

Strict about framing: requests carry no body, headers are capped, every refusal closes its connection, and an idle
connection is closed after IDLE_TIMEOUT_S, so one connection can never carry a request the gate did not see.

Nothing here can change the model or write a file: every route reads the board, and the static assets are a fixed
list shipped inside the package (no CDN, no path taken from the request).
"""

from __future__ import annotations

import errno
import json
import re
import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from edgekd.dashboard.access import Gate, ServeAddress
from edgekd.dashboard.board import LiveBoard
from edgekd.dashboard.metrics import metrics_registry, render
from edgekd.errors import EdgekdError

ASSETS = {"/": ("index.html", "text/html; charset=utf-8"),
          "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
          "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
          "/history": ("history.html", "text/html; charset=utf-8"),
          "/history.js": ("history.js", "text/javascript; charset=utf-8")}
ROUTES = {"/stream.mjpg": "_stream", "/api/status": "_status", "/api/scores": "_scores", "/api/defects": "_defects",
          "/api/frame.jpg": "_frame", "/metrics": "_metrics", "/healthz": "_healthz",
          "/api/history": "_history"}  # path -> handler method
DEFECT_PICTURE = re.compile(r"/api/defects/(\d+)(\.thumb)?\.jpg")
HISTORY_FILE = re.compile(r"/api/history/(\d+)\.(jpg|mask\.png)")
HISTORY_LIMIT = 500  # events one history request returns at most
BOUNDARY = "edgekd-frame"
STALL_S = 10.0  # /healthz turns 503 when no frame was scored for this long
IDLE_TIMEOUT_S = 30.0
MAX_HEADER_BYTES = 16 * 1024
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _asset(name: str) -> bytes:
    return resources.files("edgekd.dashboard").joinpath("static", name).read_bytes()


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a viewer's stream never keeps the process alive
    allow_reuse_address = True

    def __init__(self, address: ServeAddress, app: "Dashboard"):
        self.address_family = address.family
        self.app = app
        super().__init__((address.host, address.port), _Handler)

    def server_bind(self):
        if self.address_family == socket.AF_INET6:  # '::' serves IPv6 only; say so rather than guess dual stack
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        super().server_bind()


class Dashboard:
    """Binds at construction (a taken port fails before the model loads); serves from start() until close()."""

    def __init__(self, address: ServeAddress, token: str | None, board: LiveBoard, events: Path | None = None):
        self.address, self.board, self.gate = address, board, Gate(address, token)
        self.events = events  # the run's event store (--events), which the history page reads
        self.requests: Counter = Counter()  # outcome -> count, for /metrics
        self._count_lock = threading.Lock()
        self.registry = metrics_registry(board, self.request_counts)
        self.assets = {path: (_asset(name), kind) for path, (name, kind) in ASSETS.items()}
        try:
            self.server = _Server(address, self)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise EdgekdError(f"--serve {address.host}:{address.port}: that port is in use (another edgekd run?): "
                                  "pick another port, or stop what holds it (ss -ltnp)") from None
            if exc.errno == errno.EACCES:
                raise EdgekdError(f"--serve {address.host}:{address.port}: ports below 1024 need root: use a port "
                                  "such as 8080") from None
            raise EdgekdError(f"--serve {address.host}:{address.port}: cannot listen there ({exc.strerror}): use "
                              "127.0.0.1 or an address of this machine") from None
        self.port = self.server.server_address[1]
        self.url = address.url(self.port)
        self._thread: threading.Thread | None = None

    def count(self, outcome: str) -> None:
        with self._count_lock:
            self.requests[outcome] += 1

    def request_counts(self) -> dict:
        with self._count_lock:
            return dict(self.requests)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="edgekd-dashboard-http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.board.close()  # ends the streams
        if self._thread is not None:
            self.server.shutdown()
            self._thread.join(timeout=5.0)
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    server_version = "edgekd"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT_S  # a connection that sends nothing (or trickles a request) is closed

    def parse_request(self) -> bool:
        """The standard parse, then the limits: headers of at most MAX_HEADER_BYTES, and no request body (no route
        takes one). A request that breaks them is answered and its connection closed, so no byte of it can be read
        as a second request."""
        if not super().parse_request():
            return False
        if sum(len(k) + len(v) for k, v in self.headers.items()) > MAX_HEADER_BYTES:
            self.close_connection = True
            self.send_error(431, "request headers too large")
            return False
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") is not None or (length is not None and length.strip() != "0"):
            self.close_connection = True
            self.send_error(400 if self.command in ("GET", "HEAD") else 405,
                            "edgekd dashboard takes no request bodies (it is read-only: GET and HEAD)")
            self.app.count("not_allowed" if self.command not in ("GET", "HEAD") else "bad_request")
            return False
        return True

    @property
    def app(self) -> Dashboard:
        return self.server.app

    def log_message(self, format, *args):  # the runner's stderr is for the line, not for page loads
        pass

    # -- answering ------------------------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, kind: str, headers: dict | None = None) -> None:
        if status >= 400:  # a refused request ends its connection: nothing after it is read as another request
            self.close_connection = True
            headers = {**(headers or {}), "Connection": "close"}
        self.send_response(status)
        for name, value in {**SECURITY_HEADERS, "Content-Type": kind, "Content-Length": str(len(body)),
                            "Cache-Control": "no-store", **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, value, status: int = 200) -> None:
        self._send(status, json.dumps(value).encode(), "application/json")

    def _text(self, status: int, text: str) -> None:
        self._send(status, (text + "\n").encode(), "text/plain; charset=utf-8")

    def _refuse(self, status: int, text: str, outcome: str) -> None:
        self.app.count(outcome)
        self._text(status, text)

    # -- methods --------------------------------------------------------------------------------------------------
    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/" and url.query and self.app.gate.token_in_query(url.query):
            self.app.count("ok")  # first visit with the token: keep it in a cookie, out of the address bar
            self._send(303, b"", "text/plain", {"Location": "/", "Set-Cookie": self.app.gate.cookie()})
            return
        if not self.app.gate.allows(self.headers):
            self._refuse(401, "edgekd dashboard: a token is required (open /?token=... once, or send 'Authorization: "
                              "Bearer ...')" if self.app.gate.token else "edgekd dashboard: serve only under a "
                              "loopback name (127.0.0.1, localhost)", "refused")
            return
        try:
            self._route(url.path, parse_qs(url.query))
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True  # the viewer went away, or stopped reading for IDLE_TIMEOUT_S

    do_HEAD = do_GET

    def _not_allowed(self):
        self._refuse(405, "edgekd dashboard is read-only: GET only", "not_allowed")

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    def _route(self, path: str, query: dict) -> None:
        picture = DEFECT_PICTURE.fullmatch(path)
        stored = HISTORY_FILE.fullmatch(path)
        if path in self.app.assets:
            answer = lambda: self._send(200, *self.app.assets[path])  # noqa: E731
        elif path in ROUTES:
            answer = lambda: getattr(self, ROUTES[path])(query)  # noqa: E731
        elif picture:
            answer = lambda: self._defect_picture(int(picture.group(1)), bool(picture.group(2)))  # noqa: E731
        elif stored:
            answer = lambda: self._history_file(int(stored.group(1)), stored.group(2))  # noqa: E731
        else:
            self._refuse(404, f"no page {path}: see / for the dashboard", "not_found")
            return
        self.app.count("ok")  # counted before answering: a stream answers until the viewer leaves
        answer()

    def _status(self, query: dict) -> None:
        self._json(self.app.board.status())

    def _scores(self, query: dict) -> None:
        since = (query.get("since") or ["-1"])[0]
        self._json(self.app.board.scores(int(since) if re.fullmatch(r"-?\d+", since) else -1))

    def _defects(self, query: dict) -> None:
        self._json({"defects": self.app.board.defects()})

    def _frame(self, query: dict) -> None:
        picture = self.app.board.current_jpeg()
        self._send(200, picture, "image/jpeg") if picture else self._text(404, "no frame yet")

    def _defect_picture(self, shot_id: int, thumb: bool) -> None:
        picture = self.app.board.defect_picture(shot_id, thumb)
        self._send(200, picture, "image/jpeg") if picture else self._text(404, "no such defect picture (the gallery "
                                                                           "keeps the newest ones)")

    def _store(self):
        """The event store, opened read-only for this request; None (answered) when there is none to read."""
        from edgekd.events.store import EventStore
        if self.app.events is None:
            self._text(404, "this run keeps no event store: start it with --events DB to see its history")
            return None
        try:
            return EventStore(self.app.events, create=False, read_only=True)
        except EdgekdError as exc:
            self._text(404, str(exc))
            return None

    def _history(self, query: dict) -> None:
        from edgekd.events.query import parse_when
        from edgekd.events.store import EventFilter
        value = lambda name: (query.get(name) or [None])[0] or None  # noqa: E731
        try:
            min_score = float(value("min_score")) if value("min_score") else None
            limit = min(int(value("limit") or 200), HISTORY_LIMIT)
            selection = EventFilter(parse_when(value("since"), "since"), parse_when(value("until"), "until"),
                                    min_score, value("camera"), limit, newest_first=True)
        except (ValueError, EdgekdError) as exc:
            self._json({"error": str(exc)}, 400)
            return
        store = self._store()
        if store is None:
            return
        try:
            events = store.events(selection)
        finally:
            store.close()
        self._json({"events": [{**json.loads(e["message"]), "id": e["id"], "picture": f"/api/history/{e['id']}.jpg",
                                "mask": f"/api/history/{e['id']}.mask.png"} for e in events], "limit": limit})

    def _history_file(self, event_id: int, kind: str) -> None:
        store = self._store()
        if store is None:
            return
        try:
            event = store.event(event_id)
            name = event and (event["picture"] if kind == "jpg" else event["mask"])
            data = (store.files / name).read_bytes() if name and (store.files / name).is_file() else None
        finally:
            store.close()
        if data is None:
            self._text(404, "no such event picture (retention may have removed it)")
        else:
            self._send(200, data, "image/jpeg" if kind == "jpg" else "image/png")

    def _metrics(self, query: dict) -> None:
        self._send(200, render(self.app.registry), "text/plain; version=0.0.4; charset=utf-8")

    def _healthz(self, query: dict) -> None:
        healthy, detail = self.app.board.health(STALL_S)
        self._json(detail, 200 if healthy else 503)

    def _stream(self, query: dict) -> None:
        """multipart/x-mixed-replace: each part a JPEG; browsers show it in a plain <img>."""
        self.send_response(200)
        for name, value in {**SECURITY_HEADERS, "Cache-Control": "no-store",
                            "Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}"}.items():
            self.send_header(name, value)
        self.end_headers()
        self.close_connection = True  # the stream ends the connection (no Content-Length to frame it)
        if self.command == "HEAD":
            return
        last, plain = -1, (query.get("view") or [""])[0] == "plain"
        with self.app.board.watch(plain) as board:
            while True:
                frame = board.next_frame(last, timeout=5.0, plain=plain)
                if frame is None:
                    if board.finished:
                        return
                    continue  # no new frame yet (a paused line): keep the connection
                last, data = frame
                self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n"
                                 f"X-Frame: {last}\r\n\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

"""A real live source for tests: an HTTP MJPEG stream (multipart/x-mixed-replace, as IP cameras serve it) that
OpenCV's FFmpeg backend reads like any camera stream. It can end each connection after some frames, or refuse
connections for a while, to act out a camera that drops off the network and comes back."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np


class MjpegServer:
    def __init__(self, frames: list[np.ndarray], frames_per_connection: int | None = None, fps: float = 50.0,
                 offline_after_drop: float = 0.0):
        self.frames, self.per_connection, self.period = frames, frames_per_connection, 1.0 / fps
        self.offline_after_drop = offline_after_drop
        self.connections = 0
        self.refuse_until = 0.0
        self.sent = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if time.monotonic() < server.refuse_until:
                    self.send_error(503, "camera offline")
                    return
                server.connections += 1
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                count = 0
                while server.per_connection is None or count < server.per_connection:
                    image = server.frames[server.sent % len(server.frames)]
                    jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
                    try:
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                         + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n")
                    except (BrokenPipeError, ConnectionResetError):
                        return
                    server.sent += 1
                    count += 1
                    time.sleep(server.period)
                # the connection ends here: to the client the camera has dropped out (and stays away a while)
                server.refuse_until = time.monotonic() + server.offline_after_drop

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/stream.mjpg"

    def refuse_for(self, seconds: float) -> None:
        self.refuse_until = time.monotonic() + seconds

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

"""`edgekd run --webhook URL`: an HTTP POST of the line message (edgekd/sinks/line_message.py) for each frame with a
defect verdict (--webhook-every to change that), through the same spool and delivery as MQTT: in order, retried
with a growing pause while the receiver fails, nothing lost. A 2xx answer is an acknowledgement; anything else, or
no answer, is retried. --webhook-token-file sends its first line as a bearer token."""

from __future__ import annotations

import http.client
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from edgekd.errors import EdgekdError
from edgekd.sinks.spool import Spool
from edgekd.sinks.spooled import EVERY, SpooledSink

POST_TIMEOUT_S = 5.0


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EdgekdError(f"--webhook {url!r} is not an HTTP address: give http(s)://HOST[:PORT]/PATH")
    if parts.username or parts.password:
        raise EdgekdError("--webhook: put the receiver's token in a file given with --webhook-token-file, not in "
                          "the URL")
    try:
        parts.port
    except ValueError:
        raise EdgekdError(f"--webhook {url!r}: the port must be a number from 1 to 65535") from None
    return url


class WebhookPoster:
    """POSTs over one kept-alive connection (a new one per message cost the run 10% of its frames per second at
    50 FPS on 2 cores); a connection the receiver closed is opened again for the next message."""

    def __init__(self, url: str, token: str | None):
        self.url, self.token = url, token
        parts = urlsplit(url)
        self.https, self.host, self.port = parts.scheme == "https", parts.hostname, parts.port
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.headers = {"Content-Type": "application/json", "User-Agent": "edgekd"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.connection: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if self.connection is None:
            kind = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
            self.connection = kind(self.host, self.port, timeout=POST_TIMEOUT_S)
        return self.connection

    def send(self, payload: bytes) -> None:
        try:
            connection = self._connect()
            connection.request("POST", self.path, payload, self.headers)
            answer = connection.getresponse()
            answer.read()
            if answer.will_close:
                self.close()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise ConnectionError(str(exc) or type(exc).__name__) from None
        if not 200 <= answer.status < 300:
            raise ConnectionError(f"HTTP {answer.status} {answer.reason}")

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


@dataclass
class PreparedWebhook:
    poster: WebhookPoster
    spool: Spool
    every: str


def prepare(request) -> PreparedWebhook:
    from edgekd.secret_files import read_token
    if request.webhook_every not in EVERY:
        raise EdgekdError(f"--webhook-every {request.webhook_every!r} must be one of {', '.join(EVERY)}")
    url = check_url(request.webhook)
    token = read_token(None, request.webhook_token_file, "webhook token", "--webhook-token-file") \
        if request.webhook_token_file else None
    return PreparedWebhook(WebhookPoster(url, token), Spool(Path(request.spool) / "webhook.db", request.spool_limit),
                           request.webhook_every)


def build(prepared: PreparedWebhook, context) -> SpooledSink:
    sink = SpooledSink("webhook", prepared.spool, prepared.every, context.names, context.log, prepared.poster.send)
    sink.disconnect = prepared.poster.close
    return sink

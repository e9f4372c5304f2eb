"""`edgekd run --webhook URL`: an HTTP POST of the line message (edgekd/sinks/line_message.py) for each frame with a
defect verdict (--webhook-every to change that), through the same spool and delivery as MQTT: in order, retried
with a growing pause while the receiver fails, nothing lost. A 2xx answer is an acknowledgement; anything else, or
no answer, is retried. --webhook-token-file sends its first line as a bearer token."""

from __future__ import annotations

import urllib.error
import urllib.request
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
    def __init__(self, url: str, token: str | None):
        self.url, self.token = url, token

    def send(self, payload: bytes) -> None:
        headers = {"Content-Type": "application/json", "User-Agent": "edgekd"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url, payload, headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=POST_TIMEOUT_S) as answer:
                answer.read()
        except urllib.error.HTTPError as exc:
            raise ConnectionError(f"HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise ConnectionError(str(getattr(exc, "reason", exc))) from None


@dataclass
class PreparedWebhook:
    poster: WebhookPoster
    spool: Spool
    every: str


def prepare(request) -> PreparedWebhook:
    from edgekd.dashboard.access import read_token
    if request.webhook_every not in EVERY:
        raise EdgekdError(f"--webhook-every {request.webhook_every!r} must be one of {', '.join(EVERY)}")
    url = check_url(request.webhook)
    token = read_token(None, request.webhook_token_file, "webhook token", "--webhook-token-file") \
        if request.webhook_token_file else None
    return PreparedWebhook(WebhookPoster(url, token), Spool(Path(request.spool) / "webhook.db", request.spool_limit),
                           request.webhook_every)


def build(prepared: PreparedWebhook, context) -> SpooledSink:
    return SpooledSink("webhook", prepared.spool, prepared.every, context.names, context.log, prepared.poster.send)

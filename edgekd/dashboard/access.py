"""Who may see the dashboard: where it listens, and the token that guards it.

On loopback it needs no token (only this machine reaches it), but then only requests naming a loopback host are
served, so a web page elsewhere cannot reach it through DNS rebinding. Anywhere else a token is required; it is
checked on every request, from an `Authorization: Bearer` header (Prometheus, scripts) or from the cookie the page
sets after it was opened once as /?token=...
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import parse_qs

from edgekd.addresses import LOOPBACK_NAMES, resolves_to_loopback
from edgekd.errors import EdgekdError
from edgekd.secret_files import MAKE_TOKEN

COOKIE = "edgekd_token"


@dataclass(frozen=True)
class ServeAddress:
    host: str
    port: int
    loopback: bool
    family: int  # socket.AF_INET or AF_INET6

    def url(self, port: int | None = None) -> str:
        host = f"[{self.host}]" if self.family == socket.AF_INET6 else self.host
        return f"http://{host}:{self.port if port is None else port}/"


def parse_serve_address(text: str) -> ServeAddress:
    """'8080', ':8080', 'HOST:PORT' or '[v6]:PORT'; no host means 127.0.0.1. Port 0 picks a free port."""
    spec = text.strip()
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)", spec) or re.fullmatch(r"([^:\[\]]*):(\d+)", spec) \
        or re.fullmatch(r"()(\d+)", spec)
    if not match:
        raise EdgekdError(f"--serve {text!r}: give HOST:PORT (e.g. 127.0.0.1:8080, 0.0.0.0:8080 with --token) or a "
                          "port alone (127.0.0.1)")
    host, port = match.group(1) or "127.0.0.1", int(match.group(2))
    if port > 65535:
        raise EdgekdError(f"--serve {text!r}: port {port} is out of range (1-65535, or 0 for any free port)")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise EdgekdError(f"--serve {text!r}: '{host}' is not an address of this machine: use 127.0.0.1, 0.0.0.0 or "
                          "one of its IP addresses") from None
    return ServeAddress(host, port, resolves_to_loopback(host, port), infos[0][0])


def check_exposure(address: ServeAddress, token: str | None) -> None:
    if not address.loopback and token is None:
        raise EdgekdError(f"--serve {address.host}:{address.port} is reachable from other machines: protect it with "
                          f"--token-file FILE (or --token), e.g. {MAKE_TOKEN} > dashboard.token; or serve on "
                          "127.0.0.1 and reach it through an SSH tunnel")


class Gate:
    """Decides, per request, whether it may be answered."""

    def __init__(self, address: ServeAddress, token: str | None):
        check_exposure(address, token)  # without a token the address is loopback
        self.token = token.encode() if token else None

    def _matches(self, candidate: str | None) -> bool:
        return candidate is not None and hmac.compare_digest(candidate.encode(), self.token)

    def token_in_query(self, query: str) -> bool:
        """`/?token=...`: a browser's first visit; the page then lives on a cookie."""
        return self.token is not None and self._matches((parse_qs(query).get("token") or [None])[0])

    def allows(self, headers) -> bool:
        if self.token is None:
            host = (headers.get("Host") or "").strip().lower()
            name = host[1:].split("]")[0] if host.startswith("[") else host.rsplit(":", 1)[0]
            try:
                return name in LOOPBACK_NAMES or ipaddress.ip_address(name).is_loopback
            except ValueError:
                return False
        authorization = headers.get("Authorization") or ""
        if authorization.startswith("Bearer ") and self._matches(authorization[len("Bearer "):].strip()):
            return True
        for part in (headers.get("Cookie") or "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and self._matches(value):
                return True
        return False

    def cookie(self) -> str:
        return f"{COOKIE}={self.token.decode()}; Path=/; HttpOnly; SameSite=Strict"

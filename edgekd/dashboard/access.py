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
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

from edgekd.addresses import LOOPBACK_NAMES, resolves_to_loopback
from edgekd.errors import EdgekdError

COOKIE = "edgekd_token"
MIN_TOKEN_LENGTH = 16
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9._~+/=-]+")  # safe in a cookie and a header as it is
MAKE_TOKEN = "python3 -c 'import secrets; print(secrets.token_urlsafe(24))'"


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


def read_token(token: str | None, token_file: Path | None, what: str = "dashboard token",
               file_option: str = "--token-file") -> str | None:
    """The token from --token or --token-file (its first line), checked for length and characters."""
    if token is not None and token_file is not None:
        raise EdgekdError(f"give the {what} once: --token or {file_option}, not both")
    if token_file is not None:
        try:
            mode = token_file.stat().st_mode
            lines = token_file.read_text().splitlines()
        except FileNotFoundError:
            raise EdgekdError(f"{file_option} {token_file} does not exist: write a token into it, e.g. "
                              f"{MAKE_TOKEN} > {token_file}; chmod 600 {token_file}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise EdgekdError(f"{file_option} {token_file} cannot be read ({exc}): make it a readable text file") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            sys.stderr.write(f"warning: {file_option} {token_file} is readable by other users: chmod 600 it\n")
        token = lines[0].strip() if lines else ""
        where = f"{file_option} {token_file}"
    else:
        where = "--token"
    if token is None:
        return None
    if len(token) < MIN_TOKEN_LENGTH or not TOKEN_PATTERN.fullmatch(token):
        raise EdgekdError(f"{where}: a {what} needs at least {MIN_TOKEN_LENGTH} characters of letters, digits "
                          f"and ._~+/=- (make one: {MAKE_TOKEN})")
    return token


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

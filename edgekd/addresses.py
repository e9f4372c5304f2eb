"""Which addresses only this machine can reach: THE test behind every listener's rule (dashboard, OPC UA): loopback
needs no credentials, anything else does."""

from __future__ import annotations

import ipaddress
import socket

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def resolves_to_loopback(host: str, port: int = 0) -> bool:
    """True when `host` names this machine's loopback only (every address it resolves to); False for wildcards
    such as 0.0.0.0 and for anything that does not resolve."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False
    return all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)

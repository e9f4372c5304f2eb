"""Talking to systemd when `edgekd run` is a service (jetson/edgekd@.service, Type=notify, WatchdogSec=).

READY=1 once frames flow, WATCHDOG=1 only while they keep flowing, STOPPING=1 at the end. A pipeline that stalls
(camera gone silent, inference stuck) stops feeding the watchdog, and systemd restarts the service. The protocol
is one datagram per message to the socket in $NOTIFY_SOCKET; outside systemd nothing is sent.
"""

from __future__ import annotations

import os
import socket


class ServiceNotifier:
    def __init__(self, environ=os.environ):
        address = environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address  # '@': an abstract socket
        usec = environ.get("WATCHDOG_USEC", "")
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 else None
        self._socket = None
        self.ready_sent = False

    @property
    def active(self) -> bool:
        return bool(self.address)

    @property
    def ping_every_s(self) -> float | None:
        """Half the watchdog interval, as systemd advises; None without a watchdog."""
        return self.watchdog_s / 2 if self.watchdog_s else None

    def send(self, message: str) -> None:
        if not self.active:
            return
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._socket.sendto(message.encode(), self.address)
        except OSError:
            pass  # systemd gone (shutting down): nothing useful to do

    def frames_flowing(self) -> None:
        """Called when frames have been processed since the last call."""
        if not self.ready_sent:
            self.send("READY=1")
            self.ready_sent = True
        self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1")
        if self._socket is not None:
            self._socket.close()
            self._socket = None

"""What MQTT and the webhook share: a sink that chooses which frames to tell the line about, encodes them as the
line message and hands them to its Delivery (spool first, then the network, in order); at the end it waits a
little for the receiver and says what is left in the spool."""

from __future__ import annotations

import numpy as np

from edgekd.sinks.base import Result, Sink
from edgekd.sinks.delivery import Delivery
from edgekd.sinks.line_message import captured_at, encode, line_message
from edgekd.sinks.spool import Spool

CLOSE_WAIT_S = 10.0  # at the end of a run, how long queued messages may take to go out
# which frames are sent: each one, each verdict change, each defect verdict, or none but the parts' verdicts
EVERY = ("frame", "change", "defect", "part")


class SpooledSink(Sink):
    def __init__(self, name: str, spool: Spool, every: str, names: dict, log, send):
        self.name, self.every, self.names, self.log = name, every, names, log
        self.delivery = Delivery(name, spool, send, log, captured_at)
        self._last_verdict: bool | None = None
        self._final: dict | None = None  # the counters when closed (the spool is gone then)
        self.sends_parts = every == "part"  # MQTT sends them on their own topic whatever `every` is

    def wanted(self, result: Result) -> bool:
        if self.every == "part":
            return False
        if self.every == "frame":
            return True
        if self.every == "defect":
            return result.verdict
        changed = result.verdict != self._last_verdict
        self._last_verdict = result.verdict
        return changed

    def write(self, result: Result, overlay_bgr: np.ndarray | None) -> None:
        if self.wanted(result):
            self.delivery.push(encode(line_message(result, self.names)))

    def write_part(self, part, message: dict) -> None:
        if self.sends_parts:
            self.delivery.push(encode(message))

    def counters(self) -> dict:
        return self._final if self._final is not None else self.delivery.counters()

    def close(self) -> None:
        left = self.delivery.close(CLOSE_WAIT_S)
        if left:
            self.log(f"warning: {self.name}: {left} messages are still in the spool {self.delivery.spool.path} "
                     "(the receiver was away); the next run with this spool sends them first")
        self._final = self.delivery.counters()
        self.delivery.spool.close()
        self.disconnect()

    def disconnect(self) -> None:
        pass

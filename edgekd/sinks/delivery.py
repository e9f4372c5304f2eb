"""Delivery of a line output's messages, in order, at least once: the sink pushes each message into its Spool and
returns at once (the runner never waits on a network); this thread sends the oldest queued message, removes it
only when the receiver acknowledged it, and while the receiver is away retries with a growing pause, leaving
everything else queued. Counters for the summary and /metrics: queued, sent, spooled (messages that had to wait
for the receiver), dropped (only when the spool was full), pending, retries, and the verdict's age when sent."""

from __future__ import annotations

import threading
import time
from typing import Callable

from edgekd.sinks.ages import Ages
from edgekd.sinks.spool import Spool

FIRST_PAUSE_S = 0.2
LONGEST_PAUSE_S = 5.0  # a broker back after an outage is found within this
CLOSE_DOWN_S = 6.0  # at the end of a run, a receiver away this long (a retry at the longest pause failed) is left


class Delivery:
    def __init__(self, name: str, spool: Spool, send: Callable[[bytes], None], log: Callable[[str], None],
                 age_of: Callable[[bytes], float | None] = lambda payload: None):
        """`send(payload)` returns when the receiver has the message and raises when it does not; `age_of(payload)`
        is the message's capture time (Unix seconds), for the age it reaches the receiver at."""
        self.name, self.spool, self.send, self.log, self.age_of = name, spool, send, log, age_of
        self.counts = {"queued": 0, "sent": 0, "spooled": 0, "retries": 0, "outages": 0}
        self.ages = Ages()
        self.down_since: float | None = None
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._abandon = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"edgekd-{name}", daemon=True)
        self._thread.start()

    def push(self, payload: bytes) -> None:
        self.spool.push(payload)
        self.counts["queued"] += 1
        if self.down_since is not None:
            self.counts["spooled"] += 1
        self._wake.set()

    def _loop(self) -> None:
        pause = FIRST_PAUSE_S
        while not self._abandon.is_set():
            queued = self.spool.peek(1)
            if not queued:
                if self._closing.is_set():
                    return
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            message_id, payload = queued[0]
            try:
                self.send(payload)
            except Exception as exc:  # the receiver is away or refused: keep it queued, try again later
                self.counts["retries"] += 1
                if self.down_since is None:
                    self.down_since = time.monotonic()
                    self.counts["outages"] += 1
                    self.counts["spooled"] += 1  # this one waits too
                    self.log(f"warning: {self.name} unavailable ({exc}): messages are kept in the spool "
                             f"{self.spool.path} and sent in order when it is back")
                self._abandon.wait(pause)
                pause = min(pause * 2, LONGEST_PAUSE_S)
                continue
            self.spool.remove(message_id)
            self.counts["sent"] += 1
            self.ages.add(self.age_of(payload))
            if self.down_since is not None:
                self.log(f"info: {self.name} is back after {time.monotonic() - self.down_since:.1f} s; "
                         f"{len(self.spool)} queued messages follow")
                self.down_since = None
            pause = FIRST_PAUSE_S

    def close(self, wait_s: float) -> int:
        """Send what is queued for at most `wait_s` seconds (less once the receiver has been away for CLOSE_DOWN_S),
        then stop; returns how many stay in the spool (sent by the next run with the same spool)."""
        self._closing.set()
        self._wake.set()
        deadline = time.monotonic() + wait_s
        while self._thread.is_alive() and time.monotonic() < deadline:
            if self.down_since is not None and time.monotonic() - self.down_since > CLOSE_DOWN_S:
                break
            self._thread.join(0.05)
        self._abandon.set()
        self._thread.join(LONGEST_PAUSE_S + 5.0)
        return len(self.spool)

    def counters(self) -> dict:
        return {**self.counts, "dropped": self.spool.dropped, "pending": len(self.spool),
                "connected": self.down_since is None, **self.ages.summary()}

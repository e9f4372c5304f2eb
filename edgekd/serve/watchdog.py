"""Ties tritonserver's life to `edgekd serve`'s: `python -m edgekd.serve.watchdog DRAIN_S`.

Started (in a session of its own, so a terminal's Ctrl-C does not reach it) before the server; it reads the server's
process-group id from its stdin, then waits for end-of-file. Whenever `edgekd serve` ends, normally or by SIGKILL,
the pipe closes: the watchdog sends the group SIGTERM (Triton drains), waits up to DRAIN_S, then kills what is left
and removes the stubs' shared memory (edgekd.serve.server.reap_process_group). After a normal stop the group is
already gone and it just exits.
"""

from __future__ import annotations

import os
import signal
import sys
import time


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def main(drain_s: float) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    line = sys.stdin.buffer.readline()
    if not line.strip().isdigit():
        return 0  # the parent died before the server started
    pgid = int(line)
    sys.stdin.buffer.read()  # returns when the parent closes the pipe or dies
    if not _alive(pgid):
        return 0
    os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + drain_s + 5
    while _alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    from edgekd.serve.server import reap_process_group
    reap_process_group(pgid)
    return 0


if __name__ == "__main__":
    sys.exit(main(float(sys.argv[1]) if len(sys.argv) > 1 else 30.0))

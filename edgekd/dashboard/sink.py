"""The dashboard as a row of the sinks table (edgekd/sinks/__init__.py): bound before the model loads, so a taken
port or a missing token fails first; started once the run's thresholds and counters exist."""

from __future__ import annotations

from edgekd.dashboard.access import parse_serve_address
from edgekd.secret_files import read_token
from edgekd.dashboard.board import LiveBoard
from edgekd.dashboard.server import Dashboard

TOKEN_HINT = " (open it once as /?token=YOUR_TOKEN; scripts send 'Authorization: Bearer YOUR_TOKEN')"


def prepare(request) -> Dashboard:
    """The dashboard of --serve, bound and ready to start; every problem with the address or token is raised here
    (an exposed address without a token by the Dashboard's own gate)."""
    address = parse_serve_address(request.serve)
    token = read_token(request.token, request.token_file)
    board = LiveBoard()
    try:
        return Dashboard(address, token, board, request.events)
    except BaseException:
        board.close()
        raise


def build(dashboard: Dashboard, run) -> LiveBoard:
    """Tell the board what the run decides with, start serving, and say where."""
    dashboard.board.attach(run.thresholds, run.colour_range, run.stats, run.names)
    dashboard.start()
    run.log(f"info: dashboard at {dashboard.url}" + (TOKEN_HINT if dashboard.gate.token else ""))
    return dashboard.board

"""The edgekd command line as the tests drive it: in a fresh process, or through the same entry point in this one."""

from __future__ import annotations

import os
import subprocess
import sys


def edgekd(*args, cwd=None, timeout=None) -> subprocess.CompletedProcess:
    """`edgekd ARGS` in a fresh process, as a user runs it (no weight downloads)."""
    return subprocess.run([sys.executable, "-m", "edgekd.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env={**os.environ, "EDGEKD_OFFLINE": "1"})


def run_main(capsys, monkeypatch, *args) -> tuple[int, str, str]:
    """The same entry point (`edgekd.cli.main`) in this process: fast enough for a matrix of dozens of cases."""
    from edgekd import cli as cli_module
    monkeypatch.setattr(sys, "argv", ["edgekd", *map(str, args)])
    code = 0
    try:
        cli_module.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def assert_ends_in_error(code: int, err: str, *fragments: str) -> None:
    """After long work (progress shown), a refusal is the last line."""
    assert code != 0 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(f in last for f in fragments), err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code != 0, err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]

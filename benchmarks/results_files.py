"""Where a benchmark's figures go: one definition of the results pair every script here writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from edgekd.atomic import write_bytes_atomic


def write_results(folder: Path, name: str, payload: dict, report: Callable[[dict], str]) -> str:
    """`folder`/`name`.json (the raw payload), then `folder`/`name`.md (report(payload)), each written atomically;
    prints the report and returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(folder / f"{name}.json", json.dumps(payload, indent=2).encode())
    text = report(payload)
    write_bytes_atomic(folder / f"{name}.md", text.encode())
    print(text)
    return text

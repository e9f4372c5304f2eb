"""What `edgekd events` does with a store: times as people give them, the listing, the CSV."""

from __future__ import annotations

import csv
import io
import re
import time
from datetime import datetime
from pathlib import Path

from edgekd.atomic import write_bytes_atomic
from edgekd.errors import EdgekdError

AGO = {"s": 1, "m": 60, "h": 3600, "d": 86400}
CSV_FIELDS = ("id", "time", "iso_time", "frame", "camera", "model", "score", "verdict", "defective", "reject",
              "regions", "picture", "mask", "message")


def parse_when(text: str | None, option: str, now: float | None = None) -> float | None:
    """'2026-12-08T10:30', '2026-12-08' (local time) or an age: '15m', '2h', '7d' ago; None stays None."""
    if text is None:
        return None
    ago = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if ago:
        return (now if now is not None else time.time()) - float(ago.group(1)) * AGO[ago.group(2)]
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise EdgekdError(f"{option} {text!r} is not a time: give 2026-12-08T10:30, 2026-12-08 or an age such as "
                          "15m, 2h, 7d") from None


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds).isoformat(timespec="milliseconds")


def to_csv(rows: list[dict], files: Path) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "iso_time": iso(row["time"]),
                         "picture": str(files / row["picture"]) if row["picture"] else "",
                         "mask": str(files / row["mask"]) if row["mask"] else ""})
    return out.getvalue().encode()


def write_csv(path: Path, rows: list[dict], files: Path) -> None:
    try:
        write_bytes_atomic(path, to_csv(rows, files))
    except OSError as exc:
        raise EdgekdError(f"--csv {path} cannot be written ({exc.strerror}): give a writable place") from None


def listing(rows: list[dict]) -> list[str]:
    lines = [f"{'time':23}  {'frame':>8}  {'score':>9}  {'verdict':7}  {'regions':>7}  camera"]
    for row in rows:
        lines.append(f"{iso(row['time']):23}  {row['frame']:>8}  {row['score']:>9.4f}  {row['verdict']:7}  "
                     f"{row['regions']:>7}  {row['camera']}")
    return lines

"""Where a command will write, checked before any long work starts, and what a killed writer left behind.

Every command that writes asks here first: a folder where a file is expected (or the reverse), a place that
cannot be created or written, or a disk without room fails in one line naming the option and the fix, instead of a
traceback after an hour of training.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from edgekd.errors import EdgekdError

MIN_FREE_BYTES = 64 << 20  # below this a checkpoint, video or engine would likely end half-written


def _nearest_existing(path: Path) -> Path:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def _check_writable_parent(path: Path, what: str) -> None:
    existing = _nearest_existing(path)
    if not existing.is_dir():
        raise EdgekdError(f"{what} {path} cannot be created: {existing} is a file, not a folder; choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise EdgekdError(f"{what} {path} cannot be written: no write permission in {existing}; choose another path")
    free = shutil.disk_usage(existing).free
    if free < MIN_FREE_BYTES:
        raise EdgekdError(f"{what} {path}: only {free >> 20} MiB free on the disk holding {existing}; free some space "
                          f"or write elsewhere")


def check_output_folder(path: str | Path, what: str) -> Path:
    """`path` is a folder, or can be created as one, and is writable."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise EdgekdError(f"{what} {path} is a file, but a folder is expected: pass a folder path")
    _check_writable_parent(path, what)
    return path


def check_output_file(path: str | Path, what: str, suffixes: tuple[str, ...] = ()) -> Path:
    """`path` is a file, or can be created as one, in a writable folder, with one of the expected suffixes."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise EdgekdError(f"{what} {path} is a folder, but a file is expected: pass a file path"
                          + (f" ending in {' or '.join(suffixes)}" if suffixes else ""))
    if suffixes and path.suffix.lower() not in suffixes:
        raise EdgekdError(f"{what} {path} must end in {' or '.join(suffixes)}")
    _check_writable_parent(path.parent, what)
    return path


def remove_stale_temps(folder: str | Path, names: list[str]) -> list[Path]:
    """Temp files of edgekd.atomic writes of `names` in `folder` that a killed run left behind."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for name in names:
        for stale in folder.glob(f".{name}.*.tmp"):
            stale.unlink(missing_ok=True)
            removed.append(stale)
    return removed

"""edgekd's per-user cache (unpacked bundles): private to the user, bounded in size.

Under $EDGEKD_CACHE, else $XDG_CACHE_HOME/edgekd, else ~/.cache/edgekd. Each folder is created 0700 and refused
when another user owns it or others may write to it: what is cached there is run, so nobody else may put it there.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from pathlib import Path

from edgekd.errors import EdgekdError

STALE_STAGING_S = 3600.0


def cache_root() -> Path:
    if os.environ.get("EDGEKD_CACHE"):
        return Path(os.environ["EDGEKD_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgekd"


def _private(folder: Path) -> Path:
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(folder)
    except OSError as exc:
        raise EdgekdError(f"cache folder {folder} cannot be created ({exc.strerror or exc}): set EDGEKD_CACHE to a "
                          "writable folder of your own") from None
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise EdgekdError(f"cache folder {folder} is a link or not a folder: remove it, or set EDGEKD_CACHE to a "
                          "folder of your own")
    if info.st_uid != os.getuid():
        raise EdgekdError(f"cache folder {folder} belongs to another user (uid {info.st_uid}): set EDGEKD_CACHE to a "
                          "folder of your own")
    if info.st_mode & 0o077:
        os.chmod(folder, 0o700)  # ours, but open to others: close it before anything in it is trusted
    return folder


def user_cache_dir(kind: str, override: str | Path | None = None) -> Path:
    """The private folder for one kind of cached thing; `override` replaces the whole root (tests, --cache)."""
    root = _private(Path(override) if override else cache_root())
    return _private(root / kind) if not override else root


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def prune_cache(folder: Path, keep_bytes: int, keep: Path | None = None) -> list[Path]:
    """Remove the least recently used entries until the folder holds at most keep_bytes (never `keep`)."""
    now = time.time()
    # a staging folder ('.unpack-...') is another process's work in progress unless a killed run left it long ago
    entries = [p for p in folder.iterdir() if p.is_dir() and not p.is_symlink() and p != keep
               and (not p.name.startswith(".") or now - p.stat().st_mtime > STALE_STAGING_S)]
    entries.sort(key=lambda p: p.stat().st_mtime)
    sizes = {entry: _size(entry) for entry in entries}
    total = sum(sizes.values()) + (_size(keep) if keep is not None and keep.is_dir() else 0)
    removed = []
    for entry in entries:
        if total <= keep_bytes and not entry.name.startswith("."):
            continue
        total -= sizes[entry]
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed

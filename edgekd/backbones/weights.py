"""Where pretrained teacher weights come from: an explicit file, the torch hub cache, or a download."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from edgekd.errors import EdgekdError


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def load_state_dict_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise EdgekdError(f"teacher weights file {path} does not exist: pass an existing file with --weights")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged files
        raise EdgekdError(f"teacher weights file {path} is not a readable PyTorch state dict ({exc.__class__.__name__}): "
                          "download it again") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise EdgekdError(f"teacher weights file {path} holds a {type(state).__name__}, not a state dict")
    return state


def resolve_weights_file(name: str, filename: str, url: str | None, explicit: str | Path | None = None) -> Path:
    """Find the weights of backbone `name`: explicit path, then the hub cache, then a download.

    Offline machines (the factory floor, CI) never download: they get a one-line error that names the
    exact file to place and where.
    """
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise EdgekdError(f"weights file {path} for teacher '{name}' does not exist: check the path given with --weights")
        return path
    cached = hub_checkpoint_dir() / filename
    if cached.is_file():
        return cached
    if url and os.environ.get("EDGEKD_OFFLINE", "0") != "1":
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(cached), progress=True)
            return cached
        except Exception:
            pass  # offline or blocked: fall through to the instructions below
    where = f" (download it from {url})" if url else ""
    raise EdgekdError(
        f"weights for teacher '{name}' not found: place {filename} in {cached.parent}{where} or pass --weights PATH"
    )

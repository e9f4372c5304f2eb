"""Choosing where torch runs."""

import torch

from edgekd.errors import EdgekdError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise EdgekdError(f"device '{name}' requested but no CUDA GPU is visible to torch: use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise EdgekdError(f"device '{name}' is not a torch device: use auto, cpu or cuda[:N]") from None

"""Which TensorRT this machine has, and the few API differences edgekd cares about.

- TensorRT 10.x (JetPack 6 ships 10.3): weakly typed networks with BuilderFlag.FP16/INT8, or strongly typed.
- TensorRT 11.x: strongly typed only; precision comes from the ONNX types and Q/DQ nodes.
- TensorRT-RTX (`tensorrt_rtx`): strongly typed, builds without a GPU, runs on RTX GPUs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from edgekd.errors import EdgekdError

INSTALL_HINT = ("on a Jetson it comes with JetPack (sudo apt install nvidia-tensorrt python3-libnvinfer); on a "
                "desktop GPU: pip install tensorrt (from NVIDIA's index) or pip install 'edgekd[rtx]' for TensorRT-RTX")


@dataclass(frozen=True)
class TensorRT:
    module: ModuleType
    flavour: str  # "tensorrt" or "tensorrt_rtx"
    version: str

    @property
    def weakly_typed(self) -> bool:
        """True where BuilderFlag.FP16 still exists (TensorRT <= 10.x)."""
        return hasattr(self.module.BuilderFlag, "FP16")

    @property
    def label(self) -> str:
        return f"{self.flavour} {self.version}"


def load_tensorrt(flavour: str | None = None) -> TensorRT:
    """Full TensorRT first (Jetson, desktop), then TensorRT-RTX; `flavour` forces one."""
    candidates = [flavour] if flavour else ["tensorrt", "tensorrt_rtx"]
    for name in candidates:
        try:
            module = importlib.import_module(name)
            version = str(module.__version__)
        except Exception:  # not installed, or a PyPI stub whose libraries never arrived
            continue
        return TensorRT(module, name, version)
    raise EdgekdError(f"{' or '.join(candidates)} is not installed: {INSTALL_HINT}")

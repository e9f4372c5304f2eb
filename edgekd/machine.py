"""A description of the machine a measurement came from, recorded with every benchmark result."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

import torch


def _cpu_name() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return cpu


def machine_info() -> dict:
    info = {"cpu": _cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _onnxruntime() -> dict | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    return {"version": ort.__version__, "providers": ort.get_available_providers()}


def _tensorrt() -> dict | None:
    from edgekd.engine.trt import load_tensorrt
    from edgekd.errors import EdgekdError
    try:
        found = load_tensorrt()
    except EdgekdError:
        return None
    return {"flavour": found.flavour, "version": found.version}


def _nvidia_driver() -> dict | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return None
    if not out:
        return None
    name, driver, memory = [part.strip() for part in out[0].split(",")[:3]]
    return {"name": name, "driver": driver, "memory": memory}


def _jetson() -> dict | None:
    """L4T release, power mode and clocks on a Jetson (None elsewhere)."""
    release = Path("/etc/nv_tegra_release")
    if not release.is_file():
        return None
    info = {"l4t": release.read_text().splitlines()[0].strip()}
    for key, command in (("nvpmodel", ["nvpmodel", "-q"]), ("jetson_clocks", ["jetson_clocks", "--show"])):
        if shutil.which(command[0]):
            try:
                out = subprocess.run(command, capture_output=True, text=True, timeout=10).stdout
                info[key] = " ".join(out.split())[:300]
            except (OSError, subprocess.SubprocessError):
                pass
    return info


def environment_info() -> dict:
    """Everything a speed figure depends on: CPU, GPU and driver, CUDA, TensorRT, onnxruntime, torch, Jetson."""
    info = machine_info()
    from edgekd.engine.gpu import gpu_description
    info["gpu"] = gpu_description()
    info["cuda"] = torch.version.cuda
    info["nvidia"] = _nvidia_driver()
    info["onnxruntime"] = _onnxruntime()
    info["tensorrt"] = _tensorrt()
    info["jetson"] = _jetson()
    return info

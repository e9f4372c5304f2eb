"""What GPU (if any) this process can use, asked without creating a TensorRT runtime (that segfaults
without a GPU)."""

from __future__ import annotations


def gpu_count() -> int:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            import torch
            return torch.cuda.device_count()
        except Exception:
            return 0
    try:
        err, count = cudart.cudaGetDeviceCount()  # returns an error code without a driver; never raises
    except Exception:
        return 0
    return int(count) if int(err) == 0 else 0


def gpu_description(index: int = 0) -> dict | None:
    """{'name': ..., 'compute_capability': 'M.m'} of a visible GPU, or None."""
    if gpu_count() <= index:
        return None
    try:
        from cuda.bindings import runtime as cudart
        err, props = cudart.cudaGetDeviceProperties(index)
        if int(err) == 0:
            name = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name, bytes) else str(props.name)
            return {"name": name, "compute_capability": f"{props.major}.{props.minor}"}
    except Exception:
        pass
    import torch
    major, minor = torch.cuda.get_device_capability(index)
    return {"name": torch.cuda.get_device_name(index), "compute_capability": f"{major}.{minor}"}

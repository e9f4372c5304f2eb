"""Peak memory of one artifact at one batch size, measured in a process of its own (in the benchmark's process the
memory freed by earlier exports and rows is reused, so growth there says little).

    python -m edgekd.bench.memprobe ARTIFACT BACKEND DEVICE BATCH  ->  one JSON line
"""

from __future__ import annotations

import json
import sys


def _hwm_mb() -> float:
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) / 1024.0 for line in handle if line.startswith("VmHWM:"))


def _gpu_used_mb() -> float | None:
    """Device memory in use on GPU 0 (None without a GPU). In this process of its own, what it gains between the
    baseline and the end of the calls is the artifact's: engines, activations, the allocator's pools."""
    from edgekd.engine.gpu import gpu_count
    if gpu_count() == 0:
        return None
    try:
        from cuda.bindings import runtime as cudart
        err, free, total = cudart.cudaMemGetInfo()
        return (total - free) / 2**20 if int(err) == 0 else None
    except Exception:
        return None


def main(argv: list[str]) -> None:
    artifact, backend, device, batch = argv[0], argv[1], argv[2], int(argv[3])
    import numpy as np

    from edgekd.artifact_kinds import kind_for_backend
    from edgekd.runtime import open_runtime
    baseline = _hwm_mb()  # the interpreter, torch, onnxruntime and edgekd, before the artifact
    gpu_baseline = _gpu_used_mb()  # also creates this process's CUDA context, which is not the artifact's
    runtime = open_runtime(artifact, backend, device)
    frames = np.random.default_rng(0).random((batch, 3, *runtime.input_size), dtype=np.float32)
    for _ in range(3):
        runtime.run(frames)
    gpu = None
    if kind_for_backend(backend).runs_in_torch:  # its allocator knows the peak
        import torch
        gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    elif gpu_baseline is not None and (used := _gpu_used_mb()) is not None:
        gpu = max(0.0, used - gpu_baseline)  # TensorRT and onnxruntime hold what their calls needed until closed
    runtime.close()
    print(json.dumps({"mem_mb": round(_hwm_mb() - baseline, 1), "gpu_peak_mb": gpu}))


if __name__ == "__main__":
    main(sys.argv[1:])

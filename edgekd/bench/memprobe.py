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


def main(argv: list[str]) -> None:
    artifact, backend, device, batch = argv[0], argv[1], argv[2], int(argv[3])
    import numpy as np

    from edgekd.runtime import open_runtime
    baseline = _hwm_mb()  # the interpreter, torch, onnxruntime and edgekd, before the artifact
    runtime = open_runtime(artifact, backend, device)
    frames = np.random.default_rng(0).random((batch, 3, *runtime.input_size), dtype=np.float32)
    for _ in range(3):
        runtime.run(frames)
    gpu = None
    if backend == "torch":
        import torch
        gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    runtime.close()
    print(json.dumps({"mem_mb": round(_hwm_mb() - baseline, 1), "gpu_peak_mb": gpu}))


if __name__ == "__main__":
    main(sys.argv[1:])

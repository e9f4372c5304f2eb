"""The fastest a model could possibly run on this CPU: its arithmetic against the machine's measured GEMM peak.

    python benchmarks/cpu_ceiling.py            # rd and stfpm (EfficientNet-Lite0 teacher) at 256x256

- Peak: onnxruntime's own FP32 MatMul and uint8 x int8 MatMulInteger on 2048x2048 matrices, best of 10, all
  cores. A dense square GEMM is the most favourable work a CPU kernel gets; depthwise convolutions, the bulk
  of the EfficientNet-Lite layers by count, reach a fraction of it.
- Work per frame: multiply-adds of every convolution (x2 = operations) at the model's input size, counted on
  the PyTorch model. In the INT8 exports the finest scale (stem to the stride-4 tap) stays float by design
  (edgekd/export/quantize.py), so its operations are charged at the FP32 peak.
- Ceiling = frames/s if every operation ran at peak: an upper bound no runtime on this machine can pass.

Writes benchmarks/results/cpu-ceiling/cpu_ceiling.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from edgekd.atomic import write_bytes_atomic
from edgekd.bench.timing import timed_turn
from edgekd.machine import machine_info
sys.path.insert(0, str(Path(__file__).resolve().parent))  # studies.py, however this is loaded
from studies import folder_of  # noqa: E402

RESULTS = folder_of("CPU ceiling")  # this study's folder (benchmarks/studies.py)
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TARGETS_INT8 = {"stfpm": 250.0, "rd": 100.0}  # the runner targets on this machine


def _gemm_session(integer: bool, size: int):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    if integer:
        weights = numpy_helper.from_array(rng.integers(-127, 128, (size, size)).astype(np.int8), "W")
        zero_points = [numpy_helper.from_array(np.array(128, np.uint8), "xz"),
                       numpy_helper.from_array(np.array(0, np.int8), "wz")]
        node = helper.make_node("MatMulInteger", ["X", "W", "xz", "wz"], ["Y"])
        x_type, y_type = TensorProto.UINT8, TensorProto.INT32
    else:
        weights, zero_points = numpy_helper.from_array(rng.random((size, size), np.float32), "W"), []
        node = helper.make_node("MatMul", ["X", "W"], ["Y"])
        x_type = y_type = TensorProto.FLOAT
    graph = helper.make_graph([node], "gemm", [helper.make_tensor_value_info("X", x_type, [size, size])],
                              [helper.make_tensor_value_info("Y", y_type, [size, size])], [weights, *zero_points])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime we support
    onnx.checker.check_model(model)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def gemm_peak(integer: bool, size: int = 2048, repeats: int = 10) -> float:
    """Operations per second (2 per multiply-add) of onnxruntime's best case on this CPU."""
    session = _gemm_session(integer, size)
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (size, size)).astype(np.uint8) if integer else rng.random((size, size), np.float32)
    best = min(timed_turn(lambda: session.run(None, {"X": x}), calls=repeats))  # the best call: the ceiling
    return 2 * size ** 3 / best


def conv_operations(model) -> tuple[float, float]:
    """(all operations, those in the finest-scale segments) per image, from the PyTorch model's convolutions."""
    import torch
    totals = {"all": 0.0, "finest": 0.0}

    def counter(name):
        def hook(module, inputs, output):
            if isinstance(module, torch.nn.ConvTranspose2d):
                macs = inputs[0].numel() * module.weight[0].numel()
            else:
                macs = output.numel() * module.weight[0].numel()
            totals["all"] += 2 * macs
            if ".segments.0." in f".{name}.":
                totals["finest"] += 2 * macs
        return hook

    handles = [m.register_forward_hook(counter(n)) for n, m in model.named_modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    with torch.inference_mode():
        model(torch.zeros(1, 3, *model.input_size))
    for handle in handles:
        handle.remove()
    return totals["all"], totals["finest"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="rd,stfpm")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    from edgekd.checkpoint import build_model
    from edgekd.config import load_config
    fp32_peak, int8_peak = gemm_peak(False), gemm_peak(True)
    print(f"onnxruntime GEMM peak on this CPU: FP32 {fp32_peak / 1e9:.0f} GFLOP/s, "
          f"uint8 x int8 {int8_peak / 1e9:.0f} GOP/s", flush=True)
    rows = []
    for family in args.models.split(","):
        config = load_config(CONFIGS / f"{family}_lite0.yaml", [])
        model = build_model(config, pretrained_teacher=False).eval()  # arithmetic does not depend on weights
        total, finest = conv_operations(model)
        fp32_ceiling = fp32_peak / total
        int8_ceiling = 1.0 / (finest / fp32_peak + (total - finest) / int8_peak)
        all_int8_ceiling = int8_peak / total
        target = TARGETS_INT8.get(family)
        rows.append({"model": family, "input": list(model.input_size), "gop_per_frame": round(total / 1e9, 3),
                     "float_gop_in_int8_export": round(finest / 1e9, 3), "fp32_ceiling_fps": round(fp32_ceiling, 1),
                     "int8_ceiling_fps": round(int8_ceiling, 1), "all_int8_ceiling_fps": round(all_int8_ceiling, 1),
                     "int8_target_fps": target, "target_within_ceiling": None if target is None else target <= int8_ceiling})
        print(f"{family:6s} {total / 1e9:.2f} GOP/frame: ceiling FP32 {fp32_ceiling:.0f} FPS, INT8 export "
              f"{int8_ceiling:.0f} FPS (all-INT8 {all_int8_ceiling:.0f}); target {target:g}", flush=True)
    report = {"machine": machine_info(), "fp32_gemm_gflops": round(fp32_peak / 1e9, 1),
              "int8_gemm_gops": round(int8_peak / 1e9, 1), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(args.out / "cpu_ceiling.json", json.dumps(report, indent=2).encode())
    machine = report["machine"]
    lines = [f"# Upper bound on frames/s from arithmetic ({machine['cpu']} x{machine['cores']})", "",
             f"onnxruntime GEMM peak, 2048^3, all cores: FP32 **{report['fp32_gemm_gflops']} GFLOP/s**, "
             f"uint8 x int8 **{report['int8_gemm_gops']} GOP/s**. Ceiling = frames/s if every convolution ran at "
             "that peak (the INT8 export's float finest scale charged at the FP32 peak).", "",
             "| model | input | GOP/frame | float GOP in INT8 export | FP32 ceiling | INT8 export ceiling | "
             "all-INT8 ceiling | INT8 target | target within ceiling |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['input'][0]}x{r['input'][1]} | {r['gop_per_frame']} | {r['float_gop_in_int8_export']} | "
              f"{r['fp32_ceiling_fps']} | {r['int8_ceiling_fps']} | {r['all_int8_ceiling_fps']} | {r['int8_target_fps']} | "
              f"{'yes' if r['target_within_ceiling'] else 'no'} |" for r in rows]
    write_bytes_atomic(args.out / "cpu_ceiling.md", ("\n".join(lines) + "\n").encode())
    print(f"wrote {args.out / 'cpu_ceiling.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

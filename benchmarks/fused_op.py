"""Speed of the fused MultiScaleFeatureDiff against the unfused stock-op version, with the bytes the op must move.

    python benchmarks/fused_op.py                  # CPU: the ONNX function body vs stock ops in onnxruntime, torch
    python benchmarks/fused_op.py --gpu            # also the CUDA kernels vs eager torch stock ops (needs a GPU)

Workload: the RD + EfficientNet-Lite0 features at 256x256 (24x64x64, 40x32x32, 112x16x16 per image, teacher and
student), scoring to a 256x256 map (add, blur sigma 4 on the stride-4 grid, one upsample, max score, mask). Bytes moved = T and S read once plus
the outputs written once; bandwidth = bytes / median time. On a GPU it also measures a plain device copy as the
bandwidth ceiling and times stage 1 (the per-scale cosine pass) alone. Targets (H100-class GPU, batch 8):
stage 1 >= 70% of copy bandwidth, whole op >= 3x faster than the unfused graph.
Writes benchmarks/results/fused-op/fused_op_<cpu|gpu>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from edgekd.atomic import write_bytes_atomic
from edgekd.bench.timing import timed_turn
from edgekd.fused.cuda_kernels import LaunchPlan
from edgekd.fused.onnx_function import op_model
from edgekd.fused.spec import FusedOpSpec
from edgekd.machine import machine_info
sys.path.insert(0, str(Path(__file__).resolve().parent))  # studies.py, however this is loaded
from studies import folder_of  # noqa: E402

RESULTS = folder_of("fused op")  # this study's folder (benchmarks/studies.py)
LITE0_256 = ((24, 64, 64), (40, 32, 32), (112, 16, 16))
SPEC = FusedOpSpec((256, 256), threshold=0.6, map_stride=4)  # the default scoring grid


def features(batch: int, dtype: torch.dtype, device: str = "cpu") -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(batch)
    teacher = [torch.randn(batch, *s, generator=generator) for s in LITE0_256]
    student = [t + 0.3 * torch.randn(t.shape, generator=generator) for t in teacher]
    return [f.to(device=device, dtype=dtype).contiguous() for f in teacher + student]


def median_seconds(run, repeats: int, warmup: int = 2) -> float:
    """The median of one timed turn (edgekd/bench/timing.py), after `warmup` calls (CUDA kernels load lazily)."""
    for _ in range(warmup):
        run()
    return statistics.median(timed_turn(run, calls=repeats))


def row(name: str, seconds: float, moved: int, **extra) -> dict:
    return {"variant": name, "ms": round(seconds * 1e3, 3), "GB/s": round(moved / seconds / 1e9, 2), **extra}


def cpu_rows(batch: int, repeats: int) -> list[dict]:
    import onnxruntime as ort
    feats = features(batch, torch.float32)
    moved = LaunchPlan(SPEC, batch, LITE0_256).bytes_moved(4)
    rows = []
    for fused, name in ((True, "onnxruntime: fused node, function body"), (False, "onnxruntime: stock ops (unfused)")):
        session = ort.InferenceSession(op_model(SPEC, feats, fused=fused).SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        feeds = {i.name: f.numpy() for i, f in zip(session.get_inputs(), feats)}
        rows.append(row(name, median_seconds(lambda: session.run(None, feeds), repeats), moved))
    reference = SPEC.reference()
    with torch.no_grad():
        rows.append(row("torch eager (reference module)", median_seconds(lambda: reference(*feats), repeats), moved))
    return rows


def cuda_seconds(run, repeats: int) -> float:
    for _ in range(3):
        run()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def gpu_rows(batch: int, repeats: int) -> list[dict]:
    from edgekd.fused.cuda_kernels import FeatureDiffKernels
    kernels = FeatureDiffKernels.for_device(torch.cuda.current_device())
    rows = []
    copy_src = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    copy_dst = torch.empty_like(copy_src)
    copy_seconds = cuda_seconds(lambda: copy_dst.copy_(copy_src), repeats)
    copy_bandwidth = 2 * copy_src.numel() / copy_seconds
    rows.append(row("device copy (bandwidth ceiling)", copy_seconds, 2 * copy_src.numel()))
    for dtype in (torch.float16, torch.float32):
        feats = features(batch, dtype, "cuda")
        size = 2 if dtype == torch.float16 else 4
        plan = LaunchPlan(SPEC, batch, LITE0_256)
        workspace = torch.empty(plan.workspace_bytes, dtype=torch.uint8, device="cuda")
        amap = torch.empty(batch, 1, 256, 256, device="cuda")
        scores = torch.empty(batch, device="cuda")
        mask = torch.empty(batch, 1, 256, 256, dtype=torch.uint8, device="cuda")
        stream = torch.cuda.current_stream().cuda_stream
        t_ptr, s_ptr = [f.data_ptr() for f in feats[:3]], [f.data_ptr() for f in feats[3:]]
        half = [dtype == torch.float16] * 3
        feature_bytes = plan.bytes_moved(size) - plan.bytes_moved(0)  # T and S, read once
        stage1_bytes = feature_bytes + sum(batch * h * w * 4 for _, h, w in LITE0_256)  # + FP32 distance maps
        stage1 = cuda_seconds(lambda: kernels.launch_stage1(plan, t_ptr, s_ptr, half, workspace.data_ptr(), stream), repeats)
        rows.append(row(f"fused stage 1 ({str(dtype)[6:]})", stage1, stage1_bytes,
                        of_copy_bandwidth=round(stage1_bytes / stage1 / copy_bandwidth, 3)))
        fused = cuda_seconds(lambda: kernels.launch(plan, t_ptr, s_ptr, half, workspace.data_ptr(), amap.data_ptr(),
                                                    scores.data_ptr(), mask.data_ptr(), stream), repeats)
        reference = SPEC.reference().cuda()
        with torch.no_grad():
            unfused = cuda_seconds(lambda: reference(*feats), repeats)
        moved = plan.bytes_moved(size)
        rows.append(row(f"fused op ({str(dtype)[6:]})", fused, moved, speedup_vs_unfused=round(unfused / fused, 2)))
        rows.append(row(f"unfused stock ops, torch eager ({str(dtype)[6:]})", unfused, moved))
    return rows


def write_report(kind: str, batch: int, rows: list[dict], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"fused_op_{kind}"
    info = {"machine": machine_info(), "batch": batch, "workload": "RD + Lite0 features at 256x256",
            "scales": LITE0_256, "spec": SPEC.attributes(), "rows": rows}
    if kind == "gpu":
        info["device"] = torch.cuda.get_device_name()
    write_bytes_atomic(stem.with_suffix(".json"), json.dumps(info, indent=2).encode())
    keys = sorted({k for r in rows for k in r} - {"variant", "ms", "GB/s"})
    lines = [f"# Fused MultiScaleFeatureDiff, {info.get('device', info['machine'].get('cpu', 'CPU'))}, batch {batch}", "",
             "| variant | ms | GB/s | " + " | ".join(keys) + " |", "|---|---|---|" + "---|" * len(keys)]
    lines += [f"| {r['variant']} | {r['ms']} | {r['GB/s']} | " + " | ".join(str(r.get(k, "")) for k in keys) + " |"
              for r in rows]
    write_bytes_atomic(stem.with_suffix(".md"), ("\n".join(lines) + "\n").encode())
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * len(rows)))
        ax.barh([r["variant"] for r in rows][::-1], [r["ms"] for r in rows][::-1], color="#4477aa")
        ax.set_xlabel(f"milliseconds per call, batch {batch} (lower is better)")
        ax.set_title(f"MultiScaleFeatureDiff, {info.get('device', 'CPU')}")
        fig.tight_layout()
        fig.savefig(stem.with_suffix(".png"), dpi=110)
        plt.close(fig)
    except ImportError:
        print("matplotlib missing (pip install 'edgekd[bench]'): no plot written", file=sys.stderr)
    return stem


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="also time the CUDA kernels (needs a CUDA GPU)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.gpu and not torch.cuda.is_available():
        print("error: --gpu asked for but torch sees no CUDA GPU: run it on a GPU machine", file=sys.stderr)
        return 2
    rows = cpu_rows(args.batch, args.repeats)
    stem = write_report("cpu", args.batch, rows, args.out)
    for r in rows:
        print(f"{r['variant']:45s} {r['ms']:9.2f} ms {r['GB/s']:7.2f} GB/s")
    if args.gpu:
        rows = gpu_rows(args.batch, args.repeats)
        stem = write_report("gpu", args.batch, rows, args.out)
        for r in rows:
            print(f"{r['variant']:45s} {r['ms']:9.3f} ms {r['GB/s']:8.1f} GB/s {r.get('of_copy_bandwidth', '')} "
                  f"{r.get('speedup_vs_unfused', '')}")
    print(f"wrote {stem.parent}/fused_op_*.json, .md, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

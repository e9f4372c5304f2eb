"""Check the fused MultiScaleFeatureDiff kernels against a float64 reference.

    python benchmarks/verify_fused_kernels.py                 # on a CUDA GPU (needs torch+CUDA, cuda-python, NVRTC)
    python benchmarks/verify_fused_kernels.py --emulate       # the same kernels in the CPU host emulation

For every case (each combine and score mode, blur on/off, mask on/off, odd and Lite0-sized shapes, FP32 and FP16
features) and every trial: fresh random features, outputs poisoned (NaN / 255) before the run, then the
kernels' anomaly map and score against edgekd/scoring.py evaluated in float64 on the same (FP16-rounded) values.
Relative error = max |kernel - reference| / max |reference|; any NaN fails; mask pixels must agree except
within 1e-5 of the threshold. Writes benchmarks/results/fused-op/fused_kernels_<backend>.{json,md}; exit 1 on a failure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from edgekd.atomic import write_bytes_atomic
from edgekd.fused.spec import FusedOpSpec
from edgekd.machine import machine_info
sys.path.insert(0, str(Path(__file__).resolve().parent))  # studies.py, however this is loaded
from studies import folder_of  # noqa: E402

RESULTS = folder_of("fused op")  # this study's folder (benchmarks/studies.py)
LITE0_256 = [(24, 64, 64), (40, 32, 32), (112, 16, 16)]
TOLERANCE = 2e-5  # relative, both input precisions: FP16 features are read exactly and accumulated in FP32


def cases(emulate: bool):
    odd = [(7, 13, 9), (5, 7, 5), (3, 3, 2)]
    small = [
        ("add/max/mask, odd sizes", FusedOpSpec((50, 37), threshold=0.5), odd, 3),
        ("mul/topk, odd sizes", FusedOpSpec((41, 29), combine="mul", sigma=1.5, score="topk", topk=23), odd, 2),
        ("max/max/no blur", FusedOpSpec((33, 33), combine="max", sigma=0.0, threshold=1.0), odd[:2], 4),
        ("weighted/topk, k > pixels", FusedOpSpec((24, 20), combine="weighted", weights=(0.3, 1.2, 0.5), sigma=2.0,
                                                   score="topk", topk=10_000), odd, 2),
        ("map smaller than blur radius", FusedOpSpec((9, 6), sigma=4.0), odd[:1], 5),
        ("grid stride 8, weighted/topk/mask", FusedOpSpec((48, 40), combine="weighted", weights=(1.0, 0.5, 2.0),
                                                           sigma=6.0, score="topk", topk=50, threshold=0.5,
                                                           map_stride=8), odd, 3),
    ]
    if emulate:  # the emulation runs a host thread per CUDA thread: keep Lite0 sizes small there
        return small + [("Lite0 RD scales, 64 px", FusedOpSpec((64, 64), threshold=0.6),
                         [(24, 16, 16), (40, 8, 8), (112, 4, 4)], 2),
                        ("Lite0 RD scales, 64 px, grid stride 4", FusedOpSpec((64, 64), threshold=0.6, map_stride=4),
                         [(24, 16, 16), (40, 8, 8), (112, 4, 4)], 2)]
    return small + [("Lite0 RD, 256 px, batch 8", FusedOpSpec((256, 256), threshold=0.6, map_stride=4), LITE0_256, 8),
                    ("Lite0 RD, 256 px, batch 8, top-100",
                     FusedOpSpec((256, 256), score="topk", topk=100, map_stride=4), LITE0_256, 8),
                    ("Lite0 RD, 256 px, batch 1", FusedOpSpec((256, 256), threshold=0.6, map_stride=4), LITE0_256, 1),
                    ("Lite0 RD, 256 px, batch 8, output-size form", FusedOpSpec((256, 256), threshold=0.6), LITE0_256, 8)]


def random_features(shapes, batch: int, dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    teacher = [torch.randn(batch, *s, generator=generator) for s in shapes]
    student = [t + 0.4 * torch.randn(t.shape, generator=generator) for t in teacher]
    for s in student:  # a defect-like patch where the student is unrelated to the teacher
        h, w = s.shape[-2:]
        s[:, :, h // 4: h // 4 + max(1, h // 4), w // 3: w // 3 + max(1, w // 4)] *= -1.0
    return [f.to(dtype) for f in teacher + student]


class GpuRunner:
    name = "cuda"

    def __init__(self):
        self.device = torch.cuda.get_device_name()

    def __call__(self, spec: FusedOpSpec, features: list[torch.Tensor]):
        from edgekd.fused.torch_cuda import fused_scoring
        half = len(features) // 2
        feats = [f.cuda() for f in features]
        out = fused_scoring(spec, feats[:half], feats[half:], poison=True)
        torch.cuda.synchronize()
        out = [o.cpu().numpy() for o in out]
        return out if len(out) == 3 else (*out, None)


class EmulatedRunner:
    name = "host-emulation"

    def __init__(self):
        from edgekd.fused.host_emulation import HostEmulatedKernels
        self.kernels = HostEmulatedKernels()
        self.device = "CPU host emulation of the CUDA kernels"

    def __call__(self, spec: FusedOpSpec, features: list[torch.Tensor]):
        from edgekd.fused.host_emulation import emulated_feature_diff
        half = len(features) // 2
        out = emulated_feature_diff(spec, [f.numpy() for f in features[:half]], [f.numpy() for f in features[half:]],
                                    self.kernels)
        return out if len(out) == 3 else (*out, None)


def check(spec: FusedOpSpec, got, features: list[torch.Tensor]) -> dict:
    reference = spec.reference()(*[f.double() for f in features])
    amap, scores = reference[0].numpy(), reference[1].numpy()
    nan = bool(np.isnan(got[0]).any() or np.isnan(got[1]).any())
    map_error = float(np.abs(got[0].astype(np.float64) - amap).max() / max(np.abs(amap).max(), 1e-30))
    score_error = float(np.abs(got[1].astype(np.float64) - scores).max() / max(np.abs(scores).max(), 1e-30))
    mask_mismatch = 0
    if spec.threshold is not None and got[2] is not None:
        decided = np.abs(amap - spec.threshold) >= 1e-5
        mask_mismatch = int((got[2][decided] != reference[2].numpy()[decided]).sum())
    passed = (not nan) and map_error <= TOLERANCE and score_error <= TOLERANCE and mask_mismatch == 0
    return {"nan": nan, "map_rel_error": map_error, "score_rel_error": score_error, "mask_mismatch": mask_mismatch,
            "passed": passed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emulate", action="store_true", help="run the kernels in the CPU host emulation")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not args.emulate and not torch.cuda.is_available():
        print("error: no CUDA GPU here: run on a GPU machine, or pass --emulate for the CPU host emulation",
              file=sys.stderr)
        return 2
    runner = EmulatedRunner() if args.emulate else GpuRunner()
    rows, started = [], time.time()
    for label, spec, shapes, batch in cases(args.emulate):
        for dtype in (torch.float32, torch.float16):
            results = []
            for trial in range(args.trials):
                features = random_features(shapes, batch, dtype, seed=1000 * trial + len(rows))
                results.append(check(spec, runner(spec, features), features))
            failing = [r for r in results if not r["passed"]]
            worst = failing[0] if failing else max(results, key=lambda r: max(r["map_rel_error"], r["score_rel_error"]))
            row = {"case": label, "dtype": str(dtype).split(".")[-1], "batch": batch, "scales": shapes,
                   "output_size": list(spec.output_size), "trials": args.trials, **worst}
            rows.append(row)
            print(f"{'PASS' if row['passed'] else 'FAIL'}  {label:38s} {row['dtype']:8s} map {row['map_rel_error']:.2e} "
                  f"score {row['score_rel_error']:.2e} mask mismatches {row['mask_mismatch']}", flush=True)
    report = {"backend": runner.name, "device": runner.device, "machine": machine_info(), "tolerance": TOLERANCE,
              "seconds": round(time.time() - started, 1), "passed": all(r["passed"] for r in rows), "cases": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"fused_kernels_{runner.name}"
    write_bytes_atomic(stem.with_suffix(".json"), json.dumps(report, indent=2).encode())
    lines = [f"# Fused MultiScaleFeatureDiff kernels vs float64 reference ({runner.device})", "",
             f"Tolerance {TOLERANCE:g} relative; outputs poisoned before every run; {args.trials} fresh random inputs per case.",
             "", "| case | features | batch | map rel. error | score rel. error | mask mismatches | NaN | result |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['dtype']} | {r['batch']} | {r['map_rel_error']:.2e} | {r['score_rel_error']:.2e} | "
              f"{r['mask_mismatch']} | {r['nan']} | {'pass' if r['passed'] else 'FAIL'} |" for r in rows]
    write_bytes_atomic(stem.with_suffix(".md"), ("\n".join(lines) + "\n").encode())
    print(f"{'all passed' if report['passed'] else 'FAILURES'}: wrote {stem}.json and .md")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

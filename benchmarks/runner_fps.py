"""Frames per second of `edgekd run` against the bare backend on the same frames.

    python benchmarks/runner_fps.py                       # CPU, onnxruntime: rd and stfpm, FP32 and INT8
    python benchmarks/runner_fps.py --device cuda         # torch CUDA backend, CUDA graphs and eager (needs a GPU)

Setup (in --work, reused between runs): the synthetic `wood` category at 256x256, RD and STFPM with the Lite0
teacher trained briefly (speed does not depend on accuracy, but INT8 export parity needs a model that ranks
images), exported to FP32 ONNX and to INT8 in both Q/DQ forms (for TensorRT, and for onnxruntime:
--int8-for onnxruntime), and a 256x256 MP4 line video with a defect every 10 frames.

- bare backend: the video's frames decoded and preprocessed beforehand, then only `runtime.run` on batches of
  --batch (the model alone, like the figure a library quotes for its model).
- runner: `edgekd run --source line.mp4 --jsonl ...` end to end: decode, preprocess, inference (micro-batched),
  regions and verdict, and a JSON line per frame written to disk.
Targets on this 2-core CPU machine: runner >= 90% of bare throughput; stfpm INT8 runner >= 250 FPS, rd INT8 >= 100
(benchmarks/cpu_ceiling.py gives the most this CPU's arithmetic allows).
Writes benchmarks/results/runner-fps/runner_fps_<device>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from edgekd.atomic import write_bytes_atomic
from edgekd.bench.timing import rotated, timed_turn
from edgekd.machine import machine_info
sys.path.insert(0, str(Path(__file__).resolve().parent))  # studies.py, however this is loaded
from studies import folder_of  # noqa: E402

RESULTS = folder_of("runner FPS")  # this study's folder (benchmarks/studies.py)
# The INT8 targets apply to the INT8 form made for onnxruntime (--int8-for onnxruntime); the TensorRT form is
# measured beside it to show why that form is not the one to run on a CPU.
TARGETS = {("stfpm", "int8-ort"): 250.0, ("rd", "int8-ort"): 100.0}


def prepare(work: Path, epochs: int, frames: int) -> dict:
    """Dataset, models, exports and video, made once per --work folder."""
    from edgekd.config import load_config
    from edgekd.data.layouts import load_dataset
    from edgekd.data.synth import synthesize
    from edgekd.data.video import write_line_video
    from edgekd.export.exporter import export_checkpoint
    from edgekd.train import train
    data = work / "synth"
    if not (data / "wood").is_dir():
        synthesize(data, ["wood"], seed=0, size=256, n_train=64, n_test_good=12, n_per_defect=3)
    video = work / "line.mp4"
    if not video.is_file():
        write_line_video(load_dataset(data, "wood"), video, frames, list(range(9, frames, 10)), fps=25.0)
    models = {}
    configs = Path(__file__).resolve().parents[1] / "configs"
    for family in ("rd", "stfpm"):
        checkpoint = work / "runs" / family / "model.ckpt"
        if not checkpoint.is_file():
            cfg = load_config(configs / f"{family}_lite0.yaml", [f"train.epochs={epochs}", "train.batch_size=16"])
            train(cfg, data, "wood", checkpoint.parent)
        models[(family, "ckpt")] = checkpoint
        for precision, int8_for in (("fp32", "tensorrt"), ("int8", "tensorrt"), ("int8-ort", "onnxruntime")):
            artifact = work / "export" / f"{family}.{precision}.onnx"
            if not artifact.is_file():
                export_checkpoint(checkpoint, precision.split("-")[0], out_dir=work / "export", name=family,
                                  calib_images=32, int8_for=int8_for, force=True)
            models[(family, precision)] = artifact
    return {"video": video, "models": models}


def decoded_frames(video: Path, size: tuple[int, int]) -> np.ndarray:
    from edgekd.data.images import resize_rgb, to_model_input
    capture, tensors = cv2.VideoCapture(str(video)), []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        tensors.append(to_model_input(resize_rgb(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), size)[None]))
    return np.concatenate(tensors)


def bare_fps(runtime, frames: np.ndarray, batch: int) -> float:
    """The model alone over pre-decoded frames, as one timed turn (edgekd/bench/timing.py): an untimed pass, then
    the pass timed as one call."""
    batches = [frames[start:start + batch] for start in range(0, len(frames), batch)]

    def one_pass() -> None:
        for chunk in batches:
            runtime.run(chunk)
    [seconds] = timed_turn(one_pass, calls=1)
    return len(frames) / seconds


def runner_fps(model: Path, video: Path, device: str, batch: int) -> tuple[float, dict]:
    """One `edgekd run` over the video, decode to JSONL (first frame read to last sink closed)."""
    from edgekd.stream.cli_run import run_stream
    from edgekd.stream.request import RunRequest
    with tempfile.TemporaryDirectory() as scratch:
        summary = run_stream(RunRequest(model=str(model), source=str(video), device=device, batch=batch,
                                        jsonl=Path(scratch) / "events.jsonl", stats_every=0.0), echo=lambda text: None)
    return summary["processed"] / summary["seconds"], summary


def measure(model: Path, video: Path, device: str, batch: int, repeats: int) -> tuple[float, float, dict]:
    """Best of `repeats` for both, taken in rotating turns (edgekd/bench/timing.py): a shared or throttled machine
    then slows both alike instead of skewing their ratio."""
    from edgekd.runtime import open_runtime
    best_bare, best_runner, best_summary = 0.0, 0.0, {}
    for round_index in range(repeats):
        for turn in rotated(["bare", "runner"], round_index):  # each takes each position equally often
            if turn == "bare":
                with open_runtime(model, None, device) as runtime:
                    frames = decoded_frames(video, runtime.input_size)
                    best_bare = max(best_bare, bare_fps(runtime, frames, batch))
                continue
            fps, summary = runner_fps(model, video, device, batch)
            if fps > best_runner:
                best_runner, best_summary = fps, summary
    return best_bare, best_runner, best_summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "edgekd-runner-bench")
    parser.add_argument("--device", default="cpu", help="cpu (onnxruntime) or cuda (torch CUDA backend)")
    parser.add_argument("--epochs", type=int, default=12)  # INT8 parity needs a model that ranks images
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    os.environ.setdefault("EDGEKD_OFFLINE", "1")
    if args.device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            print("error: --device cuda but torch sees no CUDA GPU: run it on a GPU machine", file=sys.stderr)
            return 2
    setup = prepare(args.work, args.epochs, args.frames)
    variants = [(f, p) for f in ("rd", "stfpm") for p in ("fp32", "int8", "int8-ort")] if args.device == "cpu" \
        else [(f, p) for f in ("rd", "stfpm") for p in ("ckpt", "ckpt-eager")]
    labels = {"ckpt": "fp32 (torch, CUDA graphs)", "ckpt-eager": "fp32 (torch, eager)"}
    rows = []
    for family, precision in variants:
        model = setup["models"][(family, precision.split("-")[0] if precision.startswith("ckpt") else precision)]
        os.environ["EDGEKD_CUDA_GRAPHS"] = "0" if precision == "ckpt-eager" else "1"
        bare, runner, summary = measure(model, setup["video"], args.device, args.batch, args.repeats)
        target = TARGETS.get((family, precision))
        row = {"model": family, "precision": labels.get(precision, precision),
               "backend": "torch" if precision.startswith("ckpt") else "onnxruntime", "frames": args.frames,
               "bare_fps": round(bare, 1), "runner_fps": round(runner, 1), "runner_vs_bare": round(runner / bare, 3),
               "mean_batch": summary.get("mean_batch"), "stage_ms": summary.get("stage_ms"),
               "target_runner_fps": target, "meets_target": None if target is None else runner >= target,
               "meets_90_percent": runner >= 0.9 * bare}
        rows.append(row)
        print(f"{family:6s} {row['precision']:13s} bare {bare:7.1f} fps   runner {runner:7.1f} fps   "
              f"({100 * runner / bare:.0f}% of bare){'' if target is None else f'   target {target:g}'}", flush=True)
    report = {"machine": machine_info(), "device": args.device, "input": "256x256, RD/STFPM + EfficientNet-Lite0",
              "video_frames": args.frames, "batch": args.batch, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"runner_fps_{args.device.split(':')[0]}"
    write_bytes_atomic(stem.with_suffix(".json"), json.dumps(report, indent=2).encode())
    lines = [f"# `edgekd run` vs the bare backend ({args.device}, {machine_info().get('cpu')} x{machine_info().get('cores')})",
             "", f"256x256 MP4 of {args.frames} frames; runner = decode to JSONL; bare = `runtime.run` on pre-decoded "
             f"frames, batch {args.batch}; best of {args.repeats}, bare and runner taken in turns.", "",
             "| model | precision | bare FPS | runner FPS | runner / bare | mean batch | target | met |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['precision']} | {r['bare_fps']} | {r['runner_fps']} | {100 * r['runner_vs_bare']:.0f}% | "
              f"{r['mean_batch']} | {r['target_runner_fps'] or ''} | "
              f"{'' if r['meets_target'] is None else ('yes' if r['meets_target'] else 'no')} |" for r in rows]
    write_bytes_atomic(stem.with_suffix(".md"), ("\n".join(lines) + "\n").encode())
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(8, 4))
        labels = [f"{r['model']} {r['precision']}" for r in rows]
        x = np.arange(len(rows))
        ax.bar(x - 0.2, [r["bare_fps"] for r in rows], 0.4, label="bare backend", color="#bbbbbb")
        ax.bar(x + 0.2, [r["runner_fps"] for r in rows], 0.4, label="edgekd run (decode to JSONL)", color="#4477aa")
        for i, r in enumerate(rows):
            if r["target_runner_fps"]:
                ax.plot([i + 0.0, i + 0.4], [r["target_runner_fps"]] * 2, color="#cc3311", lw=2)
        ax.set_xticks(x, labels)
        ax.set_ylabel("frames per second")
        ax.set_title(f"256x256 on {args.device} ({machine_info().get('cores')} cores); red: target")
        ax.legend()
        fig.tight_layout()
        fig.savefig(stem.with_suffix(".png"), dpi=110)
        plt.close(fig)
    except ImportError:
        print("matplotlib missing (pip install 'edgekd[bench]'): no plot written", file=sys.stderr)
    print(f"wrote {stem}.json, .md, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

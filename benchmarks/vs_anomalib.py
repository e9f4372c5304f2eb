#!/usr/bin/env python
"""edgekd beside anomalib STFPM in onnxruntime, the figures users choose by: model-only throughput of STFPM and RD
(FP32 and INT8, batch 1 and 8) and `edgekd run` end to end.

Two measurements, each in one process on the same inputs with interleaved turns in rotating order (A B C, B C A,
C A B ...: no model always runs after the same other one), medians and per-round ratios, on an idle machine:
1. model only: the shared peer harness (../shared/peers/anomalib/speed_bench.py) over every ONNX file, with
   onnxruntime profiles and each graph also cut at its feature taps, so the share of the time spent after the
   features (scoring and post-processing) is a measured figure;
2. end to end: `edgekd run` on a line video made from the real-texture test split (decode, preprocess, model,
   regions, verdict, one JSON line per frame) against the bare models (pre-decoded frames, `session.run` only) in
   the same rotating turns.

    python benchmarks/vs_anomalib.py --stfpm runs/x/stfpm/model.ckpt --rd runs/x/rd/model.ckpt \
        --anomalib /tmp/anomalib-peer/export/stfpm/weights/onnx/model.onnx --data data/real --category cork

Writes benchmarks/vs_anomalib.md and benchmarks/results/beside-anomalib-speed/vs_anomalib.{json,txt}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


from edgekd.atomic import write_bytes_atomic
from edgekd.checkpoint import read_checkpoint
from edgekd.data.layouts import load_dataset
from edgekd.data.video import write_line_video
from edgekd.export.exporter import export_checkpoint
from edgekd.machine import environment_info
sys.path.insert(0, str(Path(__file__).resolve().parent))  # studies.py, however this is loaded
from studies import folder_of  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HARNESS = REPO.parent / "shared" / "peers" / "anomalib" / "speed_bench.py"
REFERENCE = "anomalib_stfpm"
TARGETS = {  # the speed issue's targets, as ratios to anomalib STFPM FP32 model-only at the same batch
    "edgekd_stfpm_int8": 1.5, "edgekd_stfpm_fp32": 1.1}
SCORING_SHARE_TARGET = 0.03  # of the FP32 graph's time
RUN_TARGET, RUNNER_KEEPS = 1.2, 0.9  # RD INT8 `edgekd run` vs anomalib model-only; runner vs its bare model


def stride_copy(checkpoint: Path, stride: int, out: Path, data: Path, category: str) -> Path:
    """The checkpoint scored on another grid (benchmarks/scoring_grid.py convert): map_stride 1 is how edgekd scored
    before the grid existed, for a same-run before/after of the scoring's cost."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from scoring_grid import convert
    convert(checkpoint, stride, out.parent, data, category)
    return out


def prepare(args) -> dict[str, Path]:
    """ONNX files by name, exported into the empty --work from the checkpoints given, and the line video."""
    work, models = args.work, {REFERENCE: args.anomalib}
    sources = {"stfpm": args.stfpm, "rd": args.rd,
               "stfpm_output_form": stride_copy(args.stfpm, 1, work / "stfpm_output_form" / "model.ckpt", args.data,
                                                args.category)}
    for stride in args.other_strides:
        sources[f"stfpm_grid{stride}"] = stride_copy(args.stfpm, stride, work / f"stfpm_grid{stride}" / "model.ckpt",
                                                     args.data, args.category)
    for family, checkpoint in sources.items():
        for precision, int8_for, suffix in (("fp32", "tensorrt", "fp32"), ("int8", "onnxruntime", "int8-ort")):
            if family == "stfpm_output_form" and precision == "int8" and not args.before_int8:
                continue
            print(f"export {family} {suffix}", flush=True)
            # "before": the output-size scoring with the stems in float, as every export was before this work
            stems = "float" if family == "stfpm_output_form" else "auto"
            models[f"edgekd_{family}_{precision}"] = export_checkpoint(
                checkpoint, precision, out_dir=work / "export", name=family, data=args.data, category=args.category,
                int8_for=int8_for, int8_stems=stems, max_drop=100.0, force=True).artifact
    video = work / "line.mp4"
    write_line_video(load_dataset(args.data, args.category), video, args.frames, list(range(9, args.frames, 10)),
                     fps=25.0, size=256)
    return {"models": models, "video": video}


def model_only(models: dict[str, Path], args) -> dict:
    out = args.work / "harness.json"
    command = [sys.executable, str(HARNESS), "--reference", REFERENCE, "--images",
               str(args.data / args.category / "test" / "**" / "*.png"), "--rounds", str(args.rounds),
               "--images-per-turn", str(args.images_per_turn), "--profile", str(args.profile), "--json", str(out),
               # Each model first in turn: with a fixed order a session right after another ran up to 13% slower
               # (a scratch check: two copies of one graph, the previous session's threads still spinning).
               "--order", "rotate"]
    for name, path in models.items():
        command += ["--model", f"{name}={path}"]
    print("model only:", " ".join(command), flush=True)
    log = subprocess.run(command, capture_output=True, text=True)
    if log.returncode != 0:
        raise SystemExit(f"the harness failed:\n{log.stdout[-3000:]}\n{log.stderr[-3000:]}")
    write_bytes_atomic(args.results / "vs_anomalib.txt", log.stdout.encode())
    return json.loads(out.read_text())


def after_features_share(throughput: dict, name: str) -> float | None:
    """Median over rounds of 1 - (full graph img/s / the same graph cut at its taps img/s): the time share of
    everything after the features (scoring, memory, post-processing)."""
    full, feat = throughput.get(name), throughput.get(f"{name}[feat]")
    if not full or not feat:
        return None
    return float(statistics.median(1 - a / b for a, b in zip(full["turns"], feat["turns"])))


def end_to_end(models: dict[str, Path], video: Path, args) -> dict:
    """`edgekd run` (decode to JSONL) against bare models, in rotating turns."""
    import onnxruntime as ort
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from edgekd.bench.timing import rotated
    from runner_fps import bare_fps, decoded_frames, runner_fps
    from edgekd.runtime import open_runtime

    frames = decoded_frames(video, (256, 256))
    anomalib = ort.InferenceSession(str(models[REFERENCE]), providers=["CPUExecutionProvider"])
    anomalib_input = anomalib.get_inputs()[0].name

    class Bare:  # the harness's model-only turn, for the peer's graph (its input is named differently)
        def run(self, batch):
            return anomalib.run(None, {anomalib_input: batch})

    runtimes = {name: open_runtime(models[name]) for name in args.runner_models}
    summaries = {}

    def run_turn(name: str) -> float:
        fps, summaries[name] = runner_fps(models[name], video, "cpu", 8)
        return fps
    measure = {f"{REFERENCE} b1": lambda: bare_fps(Bare(), frames, 1),
               f"{REFERENCE} b8": lambda: bare_fps(Bare(), frames, 8)}
    for name in args.runner_models:
        measure[f"{name} bare b8"] = lambda name=name: bare_fps(runtimes[name], frames, 8)
        measure[f"{name} run"] = lambda name=name: run_turn(name)
    order = list(measure)
    turns = {key: [] for key in order}
    for round_index in range(args.e2e_rounds):
        for key in rotated(order, round_index):  # each turn first in turn, as the model-only harness's rotate order
            turns[key].append(measure[key]())
        print(f"end to end round {round_index + 1}/{args.e2e_rounds}: " +
              ", ".join(f"{k} {v[-1]:.1f}" for k, v in turns.items()), flush=True)
    for runtime in runtimes.values():
        runtime.close()
    reference = turns[f"{REFERENCE} b1"]
    rows = {}
    for key, values in turns.items():
        rows[key] = {"median": float(statistics.median(values)), "turns": values,
                     "x_anomalib_b1": float(statistics.median(v / r for v, r in zip(values, reference)))}
    for name in args.runner_models:
        rows[f"{name} run"]["x_own_bare"] = float(statistics.median(
            r / b for r, b in zip(turns[f"{name} run"], turns[f"{name} bare b8"])))
        rows[f"{name} run"]["stage_ms"] = summaries[name].get("stage_ms")
    return {"frames": len(frames), "rows": rows}


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(payload: dict) -> str:
    harness, e2e, env = payload["model_only"], payload["end_to_end"], payload["environment"]
    throughput = harness["throughput"]
    lines = ["# edgekd beside anomalib STFPM (onnxruntime, CPU)", "",
             f"Measured {payload['date']} on {env.get('cpu', '?')} ({env.get('cores', '?')} cores), onnxruntime "
             f"{harness.get('onnxruntime', '?')}, 256x256 real-texture `{payload['category']}` test images, by "
             "`benchmarks/vs_anomalib.py`. Model only: the shared harness (`../shared/peers/anomalib/speed_bench.py`), "
             f"one process, {harness['settings']['rounds']} interleaved rounds of "
             f"{harness['settings']['images_per_turn']} images per turn (order "
             f"{harness['settings'].get('order', 'fixed')}: each round starts one model later), 2 intra-op threads; "
             "ratios are medians of the "
             "per-round ratios to anomalib STFPM FP32 (its own `to_onnx`, Lite0 teacher) at the same batch. Raw: "
             "`benchmarks/results/beside-anomalib-speed/vs_anomalib.{json,txt}`. Only ratios count: these VMs vary 2-3x between sessions.",
             "", "## Model only", "",
             "| model | img/s b1 | x anomalib b1 | img/s b8 | x anomalib b8 | after the features (b1 / b8) | target |",
             "|---|---|---|---|---|---|---|"]
    names = [n for n in throughput["1"] if not n.endswith("[feat]")]
    for name in names:
        cells = []
        for batch in ("1", "8"):
            row = throughput[batch][name]
            cells += [f"{row['median']:.1f}", f"{row['median_per_round_ratio']:.2f}"]
        shares = [after_features_share(throughput[b], name) for b in ("1", "8")]
        share = " / ".join("-" if s is None else f"{100 * s:.0f}%" for s in shares)
        target = TARGETS.get(name)
        met = "" if target is None else f">= {target}x: " + verdict(
            min(throughput[b][name]["median_per_round_ratio"] for b in ("1", "8")) >= target)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {share} | {met} |")
    lines += ["", "\"After the features\": the time share of everything after the feature taps (scoring, for RD also "
              "the patch memory's nearest-neighbour search), from the same graph cut at its taps, timed in the same "
              "rounds.", "", "Where the FP32 time goes after the taps (onnxruntime profile, ms per image, batch 1):", ""]
    profile = harness.get("profile", {}).get("1", {})
    for name in names:
        if name in profile:
            ops = sorted(profile[name]["per_op_ms"].items(), key=lambda kv: -kv[1])
            non_conv = ", ".join(f"{op} {ms:.2f}" for op, ms in ops if not op.endswith("Conv"))[:400]
            lines.append(f"- {name}: run {profile[name]['run_ms_per_img']:.2f} ms, of which at full resolution "
                         f"{profile[name]['full_res_ms']:.2f} ms; non-conv ops: {non_conv}")
    lines += ["", "## `edgekd run` end to end", "",
              f"`edgekd run --source line.mp4 --jsonl ...` over a {e2e['frames']}-frame 256x256 MP4 made from the test "
              "split (decode, preprocess, micro-batched inference, regions, verdict, a JSON line per frame), against "
              "the bare models on the pre-decoded frames, in interleaved turns, each round starting one turn later "
              f"({len(next(iter(e2e['rows'].values()))['turns'])} rounds).", "",
              "| turn | frames/s (median) | x anomalib STFPM FP32 b1 (model only) | runner / own bare model |",
              "|---|---|---|---|"]
    for key, row in e2e["rows"].items():
        own = f"{100 * row['x_own_bare']:.0f}%" if "x_own_bare" in row else ""
        lines.append(f"| {key} | {row['median']:.1f} | {row['x_anomalib_b1']:.2f} | {own} |")
    lines += ["", "## Targets", ""] + [f"- {t}" for t in payload["targets"]]
    return "\n".join(lines) + "\n"


def targets(payload: dict, runner_models: list[str]) -> list[str]:
    throughput, rows = payload["model_only"]["throughput"], payload["end_to_end"]["rows"]
    found = []
    for name, target in TARGETS.items():
        ratios = [throughput[b][name]["median_per_round_ratio"] for b in ("1", "8") if name in throughput[b]]
        if ratios:
            found.append(f"{name} >= {target}x anomalib STFPM FP32 at batch 1 and 8: "
                         f"{' / '.join(f'{r:.2f}x' for r in ratios)}, {verdict(min(ratios) >= target)}")
    shares = [after_features_share(throughput[b], "edgekd_stfpm_fp32") for b in ("1", "8")]
    if None not in shares:
        found.append(f"scoring <= {100 * SCORING_SHARE_TARGET:.0f}% of the FP32 graph (STFPM, whose graph after the "
                     f"taps is the scoring alone): {' / '.join(f'{100 * s:.1f}%' for s in shares)}, "
                     f"{verdict(max(shares) <= SCORING_SHARE_TARGET)}")
    for name in runner_models:
        run = rows[f"{name} run"]
        found.append(f"{name} `edgekd run` >= {RUN_TARGET}x anomalib STFPM FP32 model-only (b1): "
                     f"{run['x_anomalib_b1']:.2f}x, {verdict(run['x_anomalib_b1'] >= RUN_TARGET)}; runner keeps "
                     f"{100 * run['x_own_bare']:.0f}% of its bare model (target {100 * RUNNER_KEEPS:.0f}%), "
                     f"{verdict(run['x_own_bare'] >= RUNNER_KEEPS)}")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stfpm", type=Path, required=True, help="edgekd STFPM model.ckpt")
    parser.add_argument("--rd", type=Path, required=True, help="edgekd RD (the default detector) model.ckpt")
    parser.add_argument("--anomalib", type=Path, default=Path("/tmp/anomalib-peer/export/stfpm/weights/onnx/model.onnx"))
    parser.add_argument("--data", type=Path, default=REPO / "data" / "real")
    parser.add_argument("--category", default="cork")
    parser.add_argument("--work", type=Path, default=None, help="An empty folder for the exports and the video "
                        "(default: a new temporary folder). Never reused: exports left from another checkpoint or an "
                        "earlier edgekd once went into the figures unnoticed.")
    parser.add_argument("--results", type=Path, default=folder_of("beside anomalib (speed)"))
    parser.add_argument("--report", type=Path, default=REPO / "benchmarks" / "vs_anomalib.md")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--images-per-turn", type=int, default=32)
    parser.add_argument("--profile", type=int, default=32)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--e2e-rounds", type=int, default=5)
    parser.add_argument("--other-strides", type=lambda text: [int(v) for v in text.split(",") if v], default=[],
                        help="Also STFPM scored with these map_strides (e.g. 2), FP32 and INT8.")
    parser.add_argument("--before-int8", action="store_true", help="Also the INT8 export as it was before (output-size "
                        "scoring, stems in float).")
    args = parser.parse_args()
    os.environ.setdefault("EDGEKD_OFFLINE", "1")
    for path, what in ((args.stfpm, "--stfpm"), (args.rd, "--rd"), (args.anomalib, "--anomalib"), (HARNESS, "the harness")):
        if not Path(path).is_file():
            print(f"error: {what} {path} does not exist", file=sys.stderr)
            return 2
    if args.work is None:
        args.work = Path(tempfile.mkdtemp(prefix="edgekd-vs-anomalib-"))
    elif args.work.exists() and any(args.work.iterdir()):
        print(f"error: --work {args.work} is not empty: pass an empty folder (or none), so that every model is "
              "exported from the checkpoints given", file=sys.stderr)
        return 2
    args.runner_models = ["edgekd_rd_int8", "edgekd_stfpm_int8"]
    setup = prepare(args)
    started = time.strftime("%Y-%m-%d %H:%M")
    payload = {"date": started, "category": args.category, "environment": environment_info(),
               "checkpoints": {"stfpm": str(args.stfpm), "rd": str(args.rd)},
               "scoring": {k: read_checkpoint(v)["config"]["scoring"] for k, v in (("stfpm", args.stfpm), ("rd", args.rd))},
               "model_only": model_only(setup["models"], args),
               "end_to_end": end_to_end(setup["models"], setup["video"], args)}
    payload["targets"] = targets(payload, args.runner_models)
    args.results.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(args.results / "vs_anomalib.json", json.dumps(payload, indent=2, default=str).encode())
    text = report(payload)
    write_bytes_atomic(args.report, text.encode())
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""How the scoring's ONNX body is written, measured: the same exported models (STFPM and RD, FP32 and INT8 for
onnxruntime) with their `edgekd::MultiScaleFeatureDiff` body in each form, timed in one process on the same
real-texture images in interleaved turns, beside the same graph cut at its feature taps (the floor: no scoring).

Forms of the body (the arithmetic is the same in all; edgekd/scoring.py):
- before:      scales combined by stack + ReduceSum, the final upsample a Resize, channel sums by ReduceSum
               (the body every export wrote until this change);
- reducesum:   Add chain and the phase upsample (DepthToSpace), channel sums by ReduceSum;
- convolution: Add chain and the phase upsample, channel sums by 1x1 convolutions with ones;
- exported:    what the exporter attaches now (convolution after float features; after DequantizeLinear,
               reducesum with the squares as Pow, which onnxruntime dequantizes once fewer per feature).

    python benchmarks/scoring_lowering.py --stfpm runs/real/stfpm_lite0_grid2/cork/model.ckpt \
        --rd runs/real/rd_lite0_grid2/cork/model.ckpt --data data/real --category cork

Writes benchmarks/results/scoring-lowering/scoring_lowering.{md,json}.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import onnx

from edgekd.data.images import read_rgb, resize_rgb, to_model_input
from edgekd.data.layouts import load_dataset
from edgekd.export.exporter import export_checkpoint
from edgekd.fused import onnx_function
from edgekd import scoring
from edgekd.machine import environment_info
from edgekd.bench.timing import rotated, session_options, timed_turn
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the modules beside this script, however it is loaded
from results_files import write_results  # noqa: E402
from studies import folder_of  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FORMS = ("before", "reducesum", "convolution", "exported")


@contextmanager
def body_as_before():
    """The forms the body had before this change: stack + ReduceSum for 'add', a Resize for the final upsample."""
    combine, upsample = scoring.combine_maps, scoring.upsample

    def stacked(maps, mode, weights=None):
        return torch.stack(maps).sum(0) if mode == "add" else combine(maps, mode, weights)

    scoring.combine_maps = stacked
    scoring.upsample = lambda amap, from_size, to_size: scoring.resize(amap, to_size)
    try:
        yield
    finally:
        scoring.combine_maps, scoring.upsample = combine, upsample


def with_body(model: onnx.ModelProto, form: str) -> bytes:
    """The model with its fused node's function body written in `form`."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    if form == "exported":
        return model.SerializeToString()
    nodes = onnx_function.fused_nodes(model)
    spec, scales = onnx_function.node_spec(nodes[0]), len(nodes[0].input) // 2
    channels = onnx_function.feature_channels(model, nodes)
    if form == "convolution" and channels is None:  # after Dequantize: take the counts from the shapes anyway
        inferred = onnx.shape_inference.infer_shapes(model).graph
        shapes = {v.name: v.type.tensor_type.shape for v in inferred.value_info}
        channels = tuple(shapes[name].dim[1].dim_value for name in nodes[0].input[:scales])
    del model.functions[:]
    if form == "before":
        with body_as_before():
            model.functions.append(onnx_function.function_body(spec, scales, None))
    else:
        model.functions.append(onnx_function.function_body(spec, scales, channels if form == "convolution" else None))
    return model.SerializeToString()


def cut_at_taps(model: onnx.ModelProto) -> bytes | None:
    """The same graph ending at the fused node's inputs: everything but the scoring. None where other nodes use the
    scoring's outputs (RD joins its patch memory's map there): that graph has no scoring-free cut."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    node = onnx_function.fused_nodes(model)[0]
    if any(name in other.input for other in model.graph.node for name in node.output):
        return None
    model.graph.node.remove(node)
    del model.graph.output[:]
    for name in dict.fromkeys(node.input):
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    del model.functions[:]
    return model.SerializeToString()


def export(checkpoint: Path, name: str, work: Path, data: Path, category: str) -> dict[str, Path]:
    paths = {}
    for precision, int8_for, suffix in (("fp32", "tensorrt", "fp32"), ("int8", "onnxruntime", "int8-ort")):
        path = work / f"{name}.{suffix}.onnx"
        if not path.is_file():
            print(f"export {name} {suffix}", flush=True)
            export_checkpoint(checkpoint, precision, out_dir=work, name=name, data=data, category=category,
                              int8_for=int8_for, max_drop=100.0, force=True)
        paths[f"{name}_{precision}"] = path
    return paths


def images(data: Path, category: str, count: int) -> np.ndarray:
    dataset = load_dataset(data, category)
    paths = [sample.path for sample in dataset.test][:count]
    return to_model_input(np.stack([resize_rgb(read_rgb(p), (256, 256)) for p in paths]))


def measure(models: dict[str, Path], batch_images: np.ndarray, rounds: int, images_per_turn: int) -> dict:
    import onnxruntime as ort
    options = session_options(2)
    results = {}
    for model_name, path in models.items():
        model = onnx.load(str(path))
        graphs = {form: with_body(model, form) for form in FORMS}
        cut = cut_at_taps(model)
        if cut is not None:
            graphs["cut at taps"] = cut
        sessions = {form: ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
                    for form, graph in graphs.items()}
        input_name = sessions["before"].get_inputs()[0].name
        outputs = {form: sessions[form].run(None, {input_name: batch_images[:8]}) for form in FORMS}
        differences = {form: {"map": float(np.abs(outputs[form][0] - outputs["before"][0]).max()),
                              "score": float(np.abs(outputs[form][1] - outputs["before"][1]).max())}
                       for form in FORMS}
        for batch in (1, 8):
            turns = {form: [] for form in sessions}
            feeds = [batch_images[i:i + batch] for i in range(0, len(batch_images) - batch + 1, batch)]
            calls = max(1, images_per_turn // batch)
            for round_index in range(rounds):
                for form in rotated(list(sessions), round_index):
                    session, next_feed = sessions[form], itertools.cycle(feeds).__next__
                    turn = timed_turn(lambda: session.run(None, {input_name: next_feed()}), calls=calls)
                    turns[form].append(calls * batch / sum(turn))
            before = turns["before"]
            results[f"{model_name} b{batch}"] = {
                "img_per_s": {form: statistics.median(t) for form, t in turns.items()},
                "x_before": {form: statistics.median(a / b for a, b in zip(t, before)) for form, t in turns.items()},
                # as benchmarks/vs_anomalib.py: 1 - full graph img/s / the graph cut at its taps img/s, per round
                "scoring_share": {form: statistics.median(1 - a / b for a, b in zip(turns[form], turns["cut at taps"]))
                                  for form in FORMS} if "cut at taps" in turns else None,
                "turns": turns, "max_difference_to_before": differences}
            print(model_name, batch, {k: round(v, 3) for k, v in results[f"{model_name} b{batch}"]["x_before"].items()},
                  flush=True)
    return results


def report(payload: dict) -> str:
    lines = [f"# How the scoring body is written, measured ({payload['date']})", "",
             f"Made by `benchmarks/scoring_lowering.py`: {payload['environment'].get('cpu', 'CPU')}, onnxruntime "
             f"{payload['environment'].get('onnxruntime', {}).get('version', '?')}, 2 intra-op threads, {payload['rounds']} interleaved rounds "
             f"(an untimed run to start each turn, rotating order: `edgekd/bench/timing.py`) of {payload['images_per_turn']} real `{payload['category']}` test images per turn. Same exported models, "
             "only the `edgekd::MultiScaleFeatureDiff` function body differs. Ratios are medians of per-round ratios; "
             "the scoring share is 1 - (img/s of the graph / img/s of the same graph cut at its feature taps).", "",
             "Forms: **before** (stack + ReduceSum combine, Resize upsample, ReduceSum channel sums), **reducesum** "
             "(Add chain, phase upsample by DepthToSpace, ReduceSum channel sums), **convolution** (Add chain, phase "
             "upsample, 1x1 convolutions of ones for the channel sums), **exported** (what `edgekd export` writes now: "
             "convolution after float features; after DequantizeLinear reducesum with the squares as Pow).", "",
             "| model | batch | x before: reducesum | convolution | exported | scoring share: before | exported | cut at taps x before |",
             "|---|---|---|---|---|---|---|---|"]
    for key, row in payload["results"].items():
        model, batch = key.rsplit(" b", 1)
        x, share = row["x_before"], row["scoring_share"]
        shares = f"{100 * share['before']:.1f}% | {100 * share['exported']:.1f}% | {x['cut at taps']:.3f}" if share \
            else "- | - | - (its scoring's outputs feed the patch memory's join: no cut)"
        lines.append(f"| {model} | {batch} | {x['reducesum']:.3f} | {x['convolution']:.3f} | {x['exported']:.3f} | "
                     f"{shares} |")
    worst = max(d["map"] for row in payload["results"].values() for d in row["max_difference_to_before"].values())
    worst_score = max(d["score"] for row in payload["results"].values() for d in row["max_difference_to_before"].values())
    lines += ["", f"Largest difference to the before form over all models and forms, 8 images: anomaly map "
              f"{worst:.2e}, image score {worst_score:.2e} (float rounding: the same arithmetic in another order).", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stfpm", type=Path, required=True)
    parser.add_argument("--rd", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=REPO / "data" / "real")
    parser.add_argument("--category", default="cork")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "edgekd-scoring-lowering")
    parser.add_argument("--results", type=Path, default=folder_of("scoring lowering"))
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--images-per-turn", type=int, default=32)
    args = parser.parse_args()
    os.environ.setdefault("EDGEKD_OFFLINE", "1")
    for path, what in ((args.stfpm, "--stfpm"), (args.rd, "--rd")):
        if not path.is_file():
            print(f"error: {what} {path} does not exist", file=sys.stderr)
            return 2
    args.work.mkdir(parents=True, exist_ok=True)
    models = {**export(args.stfpm, "stfpm", args.work, args.data, args.category),
              **export(args.rd, "rd", args.work, args.data, args.category)}
    batch_images = images(args.data, args.category, 64)
    payload = {"date": time.strftime("%Y-%m-%d %H:%M"), "environment": environment_info(), "category": args.category,
               "rounds": args.rounds, "images_per_turn": args.images_per_turn,
               "checkpoints": {"stfpm": str(args.stfpm), "rd": str(args.rd)},
               "results": measure(models, batch_images, args.rounds, args.images_per_turn)}
    write_results(args.results, "scoring_lowering", payload, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

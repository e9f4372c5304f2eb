#!/usr/bin/env python
"""Accuracy on the real-texture benchmark (benchmarks/real_textures.py), edgekd beside anomalib's peers.

Trains one detector per category with a config, evaluates it on the category's test split, and from the same
checkpoint also evaluates its branches apart (distillation map only, patch memory only, other memory weights), so
one run says what each part contributes. anomalib's STFPM and PatchCore figures (../shared/peers/anomalib/run.py
result.json files) go beside ours when --peer-runs holds them. Torch CPU throughput of the distillation-only and
the full detector is taken in alternating turns in the same run.

    python benchmarks/real_texture_accuracy.py --data data/real --name real_textures_rd_lite0
"""

from __future__ import annotations

import argparse
import sys
import contextlib
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from edgekd.atomic import write_bytes_atomic
from edgekd.bench.timing import rotated, timed_turn
from edgekd.config import load_config
from edgekd.data.layouts import load_dataset
from edgekd.data.images import to_model_input
from edgekd.data.loading import load_images
from edgekd.data.real_textures import parse_categories
from edgekd.evaluate import evaluate
from edgekd.machine import machine_info
from edgekd.models.patch_memory import BALANCES, branch_scales, normal_maxima
from edgekd.runtime.torch_backend import TorchRuntime
from edgekd.data.splits import split_normals
from edgekd.train import normal_views, train
sys.path.insert(0, str(Path(__file__).resolve().parent))  # studies.py, however this is loaded
from studies import folder_of  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"image_auroc": 0.95, "pixel_auroc": 0.97, "aupro": 0.92}
METRICS = ("image_auroc", "pixel_auroc", "aupro")
# The defect types of the benchmark before issue 32 added faint stains, hue shifts and faded patches: figures on
# these alone compare with earlier runs.
EARLIER_TYPES = ("hole", "crack", "scratch", "stain", "colour_shift", "foreign", "contamination")


def earlier_types_metrics(evaluation, test_samples) -> dict:
    """Image AUROC and AUPRO on the normal test images and the earlier defect types only."""
    from edgekd.metrics import compute_metrics
    chosen = np.array([s.label == 0 or s.defect in EARLIER_TYPES for s in test_samples])
    metrics = compute_metrics(evaluation.labels[chosen], evaluation.scores[chosen], evaluation.masks[chosen],
                              evaluation.maps[chosen], None)
    return {"image_auroc": metrics["image_auroc"], "aupro": metrics["aupro"]}


@contextlib.contextmanager
def branch_setting(model, memory_weight: float | None = None, distill_off: bool = False, memory_off: bool = False,
                   score: str | None = None, scales: torch.Tensor | None = None, colour_off: bool = False):
    """Temporarily weight the branches of a detector with a patch memory, or score images another way (an
    ablation of one checkpoint)."""
    saved = (model.memory_weight, model.patch_memory, model.patch_memory.branch_scales.clone()
             if model.patch_memory is not None else None, model.scorer.config, getattr(model, "colour", None))
    try:
        if score is not None:
            model.scorer.config = dataclasses.replace(model.scorer.config, score=score)
        if memory_weight is not None:
            model.memory_weight = memory_weight
        if scales is not None:
            model.patch_memory.branch_scales.copy_(scales)
        if distill_off:
            model.patch_memory.branch_scales[0] = math.inf  # distill_map / inf = 0
        if memory_off:
            model.patch_memory = None
        if colour_off:
            model.colour = None
        yield
    finally:
        model.memory_weight, model.patch_memory, model.scorer.config = saved[0], saved[1], saved[3]
        if hasattr(model, "colour"):
            model.colour = saved[4]
        if saved[2] is not None:
            model.patch_memory.branch_scales.copy_(saved[2])


def variants(model, maxima: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
    """The default and its ablations; with the held-out maxima also the other way to balance the branches."""
    if getattr(model, "patch_memory", None) is None:
        return {"default": {}}
    others = {f"memory weight {w:g}": {"memory_weight": w} for w in (0.5, 1.0, 2.0, 4.0) if w != model.memory_weight}
    if maxima is not None:
        other = next(b for b in BALANCES if b != model.memory_balance)
        weight = 2.0 if other == "maximum" else 1.0  # each rule with the weight it was tuned with
        others[f"balance {other}, weight {weight:g}"] = {"scales": branch_scales(*maxima, other), "memory_weight": weight}
    ablations = {"distill only": {"memory_off": True}, "memory only": {"distill_off": True}, **others,
                 "top-100 image score": {"score": "topk"},
                 "memory only, top-100 image score": {"distill_off": True, "score": "topk"}}
    if getattr(model, "colour", None) is None:
        return {"default": {}, **ablations}
    # The colour branch is put in the units of the default's feature map; beside another map it would not be, so
    # the ablations of the feature branches leave it out.
    return {"default": {}, "no colour branch": {"colour_off": True},
            **{name: {**setting, "colour_off": True} for name, setting in ablations.items()}}


def held_out_maxima(model, config: dict, data: Path, category: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Branch maxima on the same held-out normal images training calibrated on."""
    settings = config["train"]
    dataset = load_dataset(data, category, seed=settings["seed"])
    _, val_idx = split_normals(len(dataset.train), settings["val_fraction"], settings["seed"])
    images = load_images([dataset.train[i] for i in val_idx], model.input_size)

    def batches():
        for start in range(0, len(images), 8):
            yield torch.from_numpy(to_model_input(images[start:start + 8]))
    return normal_maxima(model, batches)


def add_colour_branch(checkpoint: Path, config: dict, data: Path, category: str, out: Path) -> Path:
    """--reuse with --from-runs: a checkpoint trained without the colour branch gets it, fitted exactly as training
    fits it (the training images and their camera-augmented copies, the held-out images for the scale), with its
    thresholds re-calibrated on the held-out images; written to `out`."""
    from edgekd.calibration import ThresholdRule, score_statistics, thresholds_from_normal
    from edgekd.checkpoint import read_checkpoint, save_checkpoint
    from edgekd.models.colour_deviation import fit_colour
    from edgekd.models.rd import colour_branch
    payload = read_checkpoint(checkpoint)
    runtime = TorchRuntime.from_checkpoint(checkpoint, device="cpu")
    model, settings = runtime.model, config["train"]
    colour_options = {key: value for key, value in config["model_options"].items() if key.startswith("colour_")}
    model.colour = colour_branch(model.input_size, **colour_options)
    gate = float(colour_options.get("colour_gate", 0.0))
    dataset = load_dataset(data, category, seed=settings["seed"])
    fit_idx, val_idx = split_normals(len(dataset.train), settings["val_fraction"], settings["seed"])
    fit_images = load_images([dataset.train[i] for i in fit_idx], model.input_size)
    calib = load_images([dataset.train[i] for i in val_idx], model.input_size)
    views = normal_views(fit_images, settings.get("augment", "none"), settings["seed"])

    def batches(images):
        return lambda: (torch.from_numpy(to_model_input(images[s:s + 8])) for s in range(0, len(images), 8))
    model.eval()
    normal = {**payload["training"].get("normal_fit", {}),
              **fit_colour(model, batches(views), batches(calib), gate or None)}
    calibrated = TorchRuntime(model, device="cpu").infer(calib, 8)
    merged = {**payload["config"], "model_options": {**payload["config"]["model_options"], **colour_options}}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, model, merged, score_stats=score_statistics(calibrated.scores),
                    thresholds=thresholds_from_normal(calibrated.scores, calibrated.maps,
                                                      ThresholdRule.from_config(merged["threshold"])),
                    training={**payload["training"], "normal_fit": normal})
    return out


def refit_scales(model, config: dict, maxima: tuple[torch.Tensor, torch.Tensor]) -> None:
    """--reuse --refit-scales: the checkpoint's networks and memory, its branches balanced by the config's rule and
    weight (the only step of training that rule changes)."""
    options = config.get("model_options", {})
    model.memory_balance = options.get("memory_balance", "spread")
    model.memory_weight = float(options.get("memory_weight", 1.0))
    model.patch_memory.branch_scales.copy_(branch_scales(*maxima, model.memory_balance))


def throughput(model, images: np.ndarray, rounds: int = 3, batch: int = 8) -> dict:
    """img/s of each variant that changes the work done, in rotating turns (edgekd/bench/timing.py)."""
    runtime = TorchRuntime(model, device="cpu")
    timed = {"default": {}} | ({"distill only": {"memory_off": True}} if getattr(model, "patch_memory", None) else {}) \
        | ({"no colour branch": {"colour_off": True}} if getattr(model, "colour", None) is not None else {})
    seconds = {name: [] for name in timed}
    for round_index in range(rounds):
        for name in rotated(list(timed), round_index):
            with branch_setting(model, **timed[name]):
                seconds[name] += timed_turn(lambda: runtime.infer(images, batch), calls=1)
    return {name: round(len(images) / float(np.median(s)), 1) for name, s in seconds.items()}


def peer_rows(peer_runs: Path | None, peer_json: Path | None = None) -> dict:
    """The peers' figures from their run folders, or from an earlier results JSON (whose runs are not on this
    machine any more: the peers are deterministic given the data's seed)."""
    if peer_json is not None:
        return {(p["model"], p["category"]): {k: p[k] for k in METRICS} for p in json.loads(peer_json.read_text())["peers"]}
    rows = {}
    for path in sorted(peer_runs.glob("*/result.json")) if peer_runs and peer_runs.is_dir() else []:
        result = json.loads(path.read_text())
        rows[(result["model"], result["category"])] = {"image_auroc": result["image_auroc"],
                                                      "pixel_auroc": result["pixel_auroc"],
                                                      "aupro": result["pixel_aupro"]}
    return rows


def fmt(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def report(rows: list[dict], peers: dict, config_name: str, machine: dict, started: str,
           refit_scales: bool = False) -> str:
    names = list(rows[0]["variants"])
    peer_models = sorted({m for m, _ in peers})
    lines = [f"# Real-texture benchmark: `{config_name}` beside anomalib\n",
             f"Measured {started} on {machine['cpu']} ({machine['cores']} cores, torch {machine['torch']}). "
             "Data: `python benchmarks/real_textures.py` (seed 0; 108 training images after the 10% held out for "
             "calibration, 40 normal and 8 defective test images of each defect type per category). Values in %; "
             "anomalib 2.7 with the same Lite0 teacher, its own metrics (../shared/peers/anomalib).\n"]
    if refit_scales:
        lines.append("Checkpoints reused from an earlier training run with the same networks and memory; only the "
                     "branch balance was refitted on the held-out images by this config's rule (`--refit-scales`).\n")
    if "no colour branch" in names:
        lines.append("The columns after 'no colour branch' are ablations of the feature branches and leave the colour "
                     "branch out: it is fitted to the default's map and would not be in another map's units.\n")
    for metric in METRICS:
        header = ["category"] + [f"edgekd {n}" for n in names] + [f"anomalib {m}" for m in peer_models]
        lines.append(f"\n## {metric.replace('_', ' ')}\n\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
        columns = {n: [] for n in names} | {m: [] for m in peer_models}
        for row in rows:
            cells = [row["category"]]
            for n in names:
                columns[n].append(row["variants"][n][metric])
                cells.append(fmt(row["variants"][n][metric]))
            for m in peer_models:
                value = peers.get((m, row["category"]), {}).get(metric)
                columns[m].append(np.nan if value is None else value)
                cells.append(fmt(value))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("| **mean** | " + " | ".join(
            fmt(float(np.nanmean(v))) + ("" if not np.isnan(v).any() else f" ({int((~np.isnan(v)).sum())} of {len(v)})")
            for v in map(np.array, columns.values())) + " |")
    types = sorted({t for row in rows for t in row["variants"][names[0]].get("image_auroc_by_type", {})})
    lines.append(f"\n## image AUROC by defect type (edgekd {names[0]})\n\n| category | " + " | ".join(types)
                 + " |\n|" + "---|" * (len(types) + 1))
    for row in rows:
        by_type = row["variants"][names[0]].get("image_auroc_by_type", {})
        lines.append(f"| {row['category']} | " + " | ".join(fmt(by_type.get(t)) for t in types) + " |")
    if "earlier_types" in rows[0]["variants"][names[0]]:
        lines.append(f"\n## On the earlier seven defect types only ({', '.join(EARLIER_TYPES)})\n\n| category | "
                     + " | ".join(f"{n}: image AUROC | {n}: AUPRO" for n in names) + " |\n|"
                     + "---|" * (2 * len(names) + 1))
        for row in rows:
            cells = [fmt(row["variants"][n]["earlier_types"][k]) for n in names for k in ("image_auroc", "aupro")]
            lines.append(f"| {row['category']} | " + " | ".join(cells) + " |")
    lines.append("\n## Cost (torch, CPU, batch 8, img/s, alternating turns in this run)\n\n| category | "
                 + " | ".join(rows[0]["throughput"]) + " | train s |\n|" + "---|" * (len(rows[0]["throughput"]) + 2))
    for row in rows:
        lines.append(f"| {row['category']} | " + " | ".join(str(v) for v in row["throughput"].values())
                     + f" | {row['train_seconds']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "data" / "real")
    parser.add_argument("--categories", default="all")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "rd_lite0.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "real")
    parser.add_argument("--peer-runs", type=Path, default=Path("/tmp/anomalib-peer/runs"))
    parser.add_argument("--peer-json", type=Path, default=None, help="Take the peers' figures from this earlier "
                        "results JSON instead of --peer-runs.")
    parser.add_argument("--results", type=Path, default=folder_of("real-texture accuracy"))
    parser.add_argument("--name", default="real_textures_rd_lite0")
    parser.add_argument("--reuse", action="store_true", help="Evaluate existing checkpoints instead of training.")
    parser.add_argument("--from-runs", default=None, help="With --reuse: take the checkpoints of this earlier run "
                        "name, add the config's colour branch (fitted as training fits it) and write them under --name.")
    parser.add_argument("--variants", type=lambda text: text.split(","), default=None,
                        help="Comma-separated variant names to evaluate (default: all).")
    parser.add_argument("--refit-scales", action="store_true", help="With --reuse: balance the branches by the "
                        "config's memory_balance and memory_weight instead of the checkpoint's.")
    parser.add_argument("--report-only", action="store_true", help="Rewrite the report from its JSON, with the peer "
                        "results there are now.")
    args = parser.parse_args()
    if args.report_only:
        payload = json.loads((args.results / f"{args.name}.json").read_text())
        peers = peer_rows(args.peer_runs, args.peer_json)
        payload["peers"] = [{"model": m, "category": c, **v} for (m, c), v in sorted(peers.items())]
        write_bytes_atomic(args.results / f"{args.name}.json", json.dumps(payload, indent=2, default=float).encode())
        config_name = str(args.config.relative_to(REPO) if args.config.is_relative_to(REPO) else args.config)
        text = report(payload["rows"], peers, config_name, payload["machine"], payload["date"],
                      payload.get("refit_scales", False))
        write_bytes_atomic(args.results / f"{args.name}.md", text.encode())
        print(text)
        return

    config = load_config(args.config, args.overrides)
    started = time.strftime("%Y-%m-%d %H:%M")
    rows = []
    for category in parse_categories(args.categories):
        run = args.runs / args.name / category
        checkpoint = run / "model.ckpt"
        train_seconds = json.loads((run / "train.json").read_text())["seconds"] if args.reuse and not args.from_runs \
            else None
        if not args.reuse:
            result = train(config, args.data, category, run, overwrite=True)
            train_seconds = round(result.seconds, 1)
            write_bytes_atomic(run / "train.json", json.dumps({"seconds": train_seconds}).encode())
        if args.from_runs:
            source = args.runs / args.from_runs / category
            add_colour_branch(source / "model.ckpt", config, args.data, category, checkpoint)
            write_bytes_atomic(run / "train.json", (source / "train.json").read_bytes())
            train_seconds = json.loads((run / "train.json").read_text())["seconds"]
        runtime = TorchRuntime.from_checkpoint(checkpoint, device="cpu")
        model = runtime.model
        maxima = held_out_maxima(model, config, args.data, category) if getattr(model, "patch_memory", None) else None
        if args.refit_scales and maxima is not None:
            refit_scales(model, config, maxima)
        measured = {}
        for name, setting in variants(model, maxima).items():
            if args.variants and name not in args.variants:
                continue
            with branch_setting(runtime.model, **setting):
                evaluation = evaluate(runtime, args.data, category, run / "eval", category)
            row = evaluation.row
            measured[name] = {**{k: row[k] for k in METRICS}, "image_auroc_by_type": row["image_auroc_by_type"],
                              "earlier_types": earlier_types_metrics(evaluation, load_dataset(args.data, category).test)}
            print(category, name, " ".join(f"{k} {fmt(measured[name][k])}" for k in METRICS), flush=True)
        sample = load_images(load_dataset(args.data, category).test[:32], runtime.model.input_size)
        rows.append({"category": category, "variants": measured, "throughput": throughput(runtime.model, sample),
                     "train_seconds": train_seconds})

    peers = peer_rows(args.peer_runs, args.peer_json)
    machine = machine_info()
    means = {n: {k: float(np.mean([r["variants"][n][k] for r in rows])) for k in METRICS} for n in rows[0]["variants"]}
    payload = {"benchmark": args.name, "date": started, "machine": machine, "config": config, "targets": TARGETS,
               "reused_checkpoints": args.reuse, "refit_scales": args.refit_scales,
               "mean": means, "rows": rows,
               "peers": [{"model": m, "category": c, **v} for (m, c), v in sorted(peers.items())]}
    args.results.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(args.results / f"{args.name}.json", json.dumps(payload, indent=2, default=float).encode())
    text = report(rows, peers, str(args.config.relative_to(REPO) if args.config.is_relative_to(REPO) else args.config),
                  machine, started, args.refit_scales)
    write_bytes_atomic(args.results / f"{args.name}.md", text.encode())
    print(text)


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    main()

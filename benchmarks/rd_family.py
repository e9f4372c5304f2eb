"""Model families side by side on structural and logical anomalies: accuracy, parameters, CPU throughput.

    python benchmarks/rd_family.py                                  # rd, afkd, logicrd, dskd: washer + tray + board
    python benchmarks/rd_family.py --models rd,mthf,vitkd,memkd --name other_designs
    python benchmarks/rd_family.py --categories tray --epochs 6     # quicker
    python benchmarks/rd_family.py --data data/real --categories grass,cork,pcb --name family_real
                                                  # the real-texture benchmark (benchmarks/real_textures.py)
    python benchmarks/rd_family.py --models afkd,afkd@model_options.fusion_weights=level
                                                  # a variant: the family's config with overrides after '@'

vitkd has no ViT weights offline: it is trained here with a random ViT-Ti/16 teacher (the mechanics, not what
ImageNet features give) and timed as ViT-B/16, the paper's architecture. mthf uses the Lite0/1/2 groups.

For every model and category: train with configs/<model>_lite0.yaml (at --size, --epochs), evaluate on the test
split (image AUROC, pixel AUROC, AUPRO; for the LOCO-layout assemblies also image AUROC on the logical and the
structural anomalies alone), and count parameters. In the same run, CPU throughput: each model exported to FP32
ONNX at --speed-size (the deployment size; speed does not depend on the weights) and timed in onnxruntime at
batch --batch, best of --repeats. Expectations to check, not to force: logicrd beats rd on logical anomalies and
runs faster than dskd.

Writes benchmarks/results/<--name>.{json,md,png} (default rd_family).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgekd.atomic import write_bytes_atomic
from edgekd.bench.timing import timed_turn
from edgekd.machine import machine_info
sys.path.insert(0, str(Path(__file__).resolve().parent))  # studies.py, however this is loaded
from studies import folder_of  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = folder_of("RD family")  # this study's folder (benchmarks/studies.py)
MODELS = ("rd", "afkd", "logicrd", "dskd")
# config file, overrides for the accuracy runs, overrides for the throughput model
SETUP = {name: (f"{name}_lite0.yaml", [], []) for name in ("rd", "afkd", "logicrd", "dskd", "mthf", "memkd")}
SETUP["vitkd"] = ("vitkd_vit_b16.yaml", ["teacher=vit_ti_16", "teacher_weights=random"], ["teacher_weights=random"])


def variant(model_name: str) -> tuple[str, list[str]]:
    """'family@key=value@key=value' -> (family, overrides): a variant of the family's benchmark config."""
    family, *overrides = model_name.split("@")
    if family not in SETUP:
        raise SystemExit(f"unknown model '{family}' in --models: choose from {', '.join(SETUP)}")
    return family, overrides


def accuracy(model_name: str, category: str, args) -> dict:
    from edgekd.config import load_config
    from edgekd.errors import EdgekdError
    from edgekd.evaluate import evaluate
    from edgekd.runtime.torch_backend import TorchRuntime
    from edgekd.train import train
    family, variation = variant(model_name)
    config_file, overrides, _ = SETUP[family]
    cfg = load_config(REPO / "configs" / config_file,
                      [f"input_size={args.size}", f"train.epochs={args.epochs}", "train.batch_size=8", *overrides,
                       *variation])
    out = args.work / model_name.replace("@", "+").replace("=", "-") / category
    checkpoint = out / "model.ckpt"
    if args.retrain or not checkpoint.is_file():  # a finished run in --work is reused (e.g. after a crash)
        try:
            train(cfg, args.data, category, out)
        except EdgekdError as exc:  # e.g. a variant that diverges: recorded, the other runs go on
            print(f"    failed: {exc}", flush=True)
            return {"model": model_name, "category": category, "error": str(exc),
                    **dict.fromkeys(("image_auroc", "pixel_auroc", "aupro", "image_auroc_logical",
                                     "image_auroc_structural", "train_seconds", "final_loss"), float("nan"))}
    runtime = TorchRuntime.from_checkpoint(checkpoint, device="cpu")
    training = runtime.payload["training"]
    row = evaluate(runtime, args.data, category, out, f"{model_name}/{category}").row
    by_type = row.get("image_auroc_by_type", {})
    return {"model": model_name, "category": category, "image_auroc": row["image_auroc"],
            "pixel_auroc": row["pixel_auroc"], "aupro": row["aupro"],
            "image_auroc_logical": by_type.get("logical_anomalies"),
            "image_auroc_structural": by_type.get("structural_anomalies"),
            "train_seconds": round(training["seconds"], 1), "final_loss": training["final_loss"]}


def parameters(model_name: str, size: int) -> tuple[object, dict]:
    from edgekd.checkpoint import build_model
    from edgekd.config import load_config
    family, variation = variant(model_name)
    config_file, _, overrides = SETUP[family]
    cfg = load_config(REPO / "configs" / config_file, [f"input_size={size}", *overrides, *variation])
    model = build_model(cfg).eval()
    student = sum(p.numel() for p in model.student_parameters())
    return model, {"student_params_m": round(student / 1e6, 3),
                   "total_params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3)}


def throughput(model, batch: int, repeats: int) -> float:
    import onnxruntime as ort
    from edgekd.export.onnx_export import export_graphs
    with tempfile.TemporaryDirectory() as folder:
        path = export_graphs(model, None, Path(folder), "speed", "single")["detector"]
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    frames = np.random.default_rng(0).random((batch, 3, *model.input_size), np.float32)
    return batch / min(timed_turn(lambda: session.run(None, {"images": frames}), calls=4 * repeats))


def write_report(report: dict, out: Path) -> None:
    rows, speed = report["rows"], report["speed"]
    fmt = lambda v: "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{100 * v:.1f}"  # noqa: E731
    data = report.get("data", "synthetic structural and logical anomalies")
    lines = [f"# {', '.join(s['model'] for s in speed)} on {data} ({report['machine']['cpu']} "
             f"x{report['machine']['cores']})", "",
             f"Accuracy: trained {report['epochs']} epochs at {report['size']}x{report['size']} (values in %). "
             f"Throughput: FP32 ONNX in onnxruntime at {report['speed_size']}x{report['speed_size']}, batch "
             f"{report['batch']}, this CPU.", "",
             "| model | category | image AUROC | pixel AUROC | AUPRO | image AUROC logical | image AUROC structural |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['category']} | {fmt(r['image_auroc'])} | {fmt(r['pixel_auroc'])} | {fmt(r['aupro'])} | "
              f"{fmt(r['image_auroc_logical'])} | {fmt(r['image_auroc_structural'])} |" for r in rows]
    lines += [f"- {r['model']} on {r['category']}: {r['error']}" for r in rows if r.get("error")]
    lines += ["", "| model | student params (M) | total params (M) | CPU images/s |", "|---|---|---|---|"]
    lines += [f"| {s['model']} | {s['student_params_m']} | {s['total_params_m']} | {s['cpu_images_per_s']:.1f} |"
              for s in speed]
    checks = {k: v for k, v in report["checks"].items() if v is not None}
    if "vitkd" in [s["model"] for s in speed]:
        lines += ["", "vitkd: trained with a random ViT-Ti/16 teacher (no ViT weights offline); timed as ViT-B/16."]
    if checks:
        lines += ["", f"- logicrd beats rd on logical anomalies (mean image AUROC over the assemblies): "
                  f"{checks.get('logicrd_beats_rd_logical')}", f"- logicrd runs faster than dskd: {checks.get('logicrd_faster_than_dskd')}"]
    write_bytes_atomic(out / f"{report['name']}.md", ("\n".join(lines) + "\n").encode())
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing (pip install 'edgekd[bench]'): no plot written", file=sys.stderr)
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    models = [s["model"] for s in speed]
    x = np.arange(len(models))
    for offset, key, label in ((-0.2, "image_auroc_logical", "logical"), (0.2, "image_auroc_structural", "structural")):
        values = [np.nanmean([r[key] for r in rows if r["model"] == m and r[key] is not None] or [np.nan]) for m in models]
        left.bar(x + offset, values, 0.4, label=label)
    left.set_xticks(x, models)
    left.set_ylim(0.4, 1.0)
    left.set_ylabel("image AUROC (assemblies)")
    left.legend(loc="lower right")
    right.bar(x, [s["cpu_images_per_s"] for s in speed], color="#4477aa")
    right.set_xticks(x, models)
    right.set_ylabel(f"images/s, FP32 onnxruntime, {report['speed_size']}px")
    fig.tight_layout()
    fig.savefig(out / f"{report['name']}.png", dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--categories", default="washer,tray,board")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "edgekd-family" / "synth")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "edgekd-family" / "runs")
    parser.add_argument("--size", type=int, default=128, help="training/evaluation size (small for a CPU)")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--n-train", type=int, default=96)
    parser.add_argument("--speed-size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--retrain", action="store_true", help="train again even where --work has a finished run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="rd_family", help="file stem of the results")
    args = parser.parse_args()
    from edgekd.data import real_textures, synth
    real = set(real_textures.parse_categories(args.categories)) if all(
        name in real_textures.CATEGORIES for name in args.categories.split(",")) else None
    categories = sorted(real, key=list(real_textures.CATEGORIES).index) if real else synth.parse_categories(args.categories)
    models = args.models.split(",")
    missing = [c for c in categories if not (args.data / c).is_dir()]
    if missing and real:
        raise SystemExit(f"{args.data} lacks {', '.join(missing)}: run python benchmarks/real_textures.py --out {args.data}")
    if missing:
        print(f"synthesising {', '.join(missing)} into {args.data}", flush=True)
        synth.synthesize(args.data, missing, seed=0, size=max(args.size, 128), n_train=args.n_train, n_test_good=24,
                   n_per_defect=6)
    rows = []
    for model_name in models:
        for category in categories:
            print(f"[{len(rows) + 1}/{len(models) * len(categories)}] training {model_name} on {category}", flush=True)
            rows.append(accuracy(model_name, category, args))
            r = rows[-1]
            print(f"    image AUROC {r['image_auroc']:.3f} (logical {r['image_auroc_logical']}, structural "
                  f"{r['image_auroc_structural']}), pixel {r['pixel_auroc']:.3f}, AUPRO {r['aupro']:.3f}", flush=True)
    speed = []
    for model_name in models:  # after training, so nothing else competes for the cores
        model, counts = parameters(model_name, args.speed_size)
        speed.append({"model": model_name, **counts, "cpu_images_per_s": throughput(model, args.batch, args.repeats)})
        print(f"{model_name:8s} {counts['student_params_m']:.2f} M student params, "
              f"{speed[-1]['cpu_images_per_s']:.1f} images/s", flush=True)

    def mean_logical(name):
        values = [r["image_auroc_logical"] for r in rows if r["model"] == name and r["image_auroc_logical"] is not None]
        return float(np.mean(values)) if values else None
    fps = {s["model"]: s["cpu_images_per_s"] for s in speed}
    checks = {"logicrd_beats_rd_logical": None if mean_logical("logicrd") is None or mean_logical("rd") is None
              else bool(mean_logical("logicrd") > mean_logical("rd")),
              "logicrd_faster_than_dskd": bool(fps["logicrd"] > fps["dskd"]) if {"logicrd", "dskd"} <= set(fps) else None}
    data = "the real-texture benchmark" if real else "synthetic structural and logical anomalies"
    report = {"name": args.name, "data": data, "machine": machine_info(), "size": args.size, "epochs": args.epochs, "speed_size": args.speed_size,
              "batch": args.batch, "n_train": args.n_train, "rows": rows, "speed": speed, "checks": checks}
    args.out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(args.out / f"{args.name}.json", json.dumps(report, indent=2, default=float).encode())
    write_report(report, args.out)
    print(f"wrote {args.out / (args.name + '.md')}; checks: {checks}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

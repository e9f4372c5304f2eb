"""Quality benchmark: RD with the EfficientNet-Lite0 teacher at 256x256 on every synthetic category.

Trains one detector per category with configs/rd_lite0.yaml, evaluates it on the category's test split and
records image AUROC, pixel AUROC, AUPRO, training time and the machine in benchmarks/results/.
Targets (issue #2): mean image AUROC >= 0.98, pixel AUROC >= 0.96, AUPRO >= 0.90.

    python benchmarks/quality_rd.py                       # all categories, ~30 min on 2 CPU cores
    python benchmarks/quality_rd.py --categories wood,chip --epochs 10
"""

from __future__ import annotations

import argparse
import sys
import json
import time
from pathlib import Path

import cv2

from edgekd.config import load_config
from edgekd.atomic import write_bytes_atomic
from edgekd.data.synth import parse_categories, synthesize
from edgekd.evaluate import evaluate, markdown_table, mean_row
from edgekd.runtime.torch_backend import TorchRuntime
from edgekd.machine import machine_info
from edgekd.train import train
sys.path.insert(0, str(Path(__file__).resolve().parent))  # studies.py, however this is loaded
from studies import folder_of  # noqa: E402

TARGETS = {"image_auroc": 0.98, "pixel_auroc": 0.96, "aupro": 0.90}
REPO = Path(__file__).resolve().parents[1]


def bar_chart(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    names = [r["category"] for r in rows] + ["mean"]
    mean = mean_row(rows)
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.27
    for i, (key, label) in enumerate([("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO")]):
        values = [100 * r[key] for r in rows] + [100 * mean[key]]
        ax.bar(np.arange(len(names)) + (i - 1) * width, values, width, label=label)
        ax.axhline(100 * TARGETS[key], color=f"C{i}", linestyle=":", linewidth=1)
    ax.set_xticks(np.arange(len(names)), names)
    ax.set_ylim(min(80, min(100 * r[k] for r in rows for k in TARGETS) - 2), 100.5)
    ax.set_ylabel("%")
    ax.set_title("RD + EfficientNet-Lite0 on edgekd synthetic data (dotted: targets)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "data" / "synth")
    parser.add_argument("--categories", default="wood,fabric,metal,tile,granite,washer,chip")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "rd_lite0.yaml")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "benchmark")
    parser.add_argument("--results", type=Path, default=folder_of("RD quality (synthetic)"))
    parser.add_argument("--name", default="quality_rd_lite0")
    args = parser.parse_args()

    categories = parse_categories(args.categories)
    missing = [c for c in categories if not (args.data / c).is_dir()]
    if missing:
        synthesize(args.data, missing, seed=0)
    overrides = [f"train.epochs={args.epochs}"] if args.epochs else []
    config = load_config(args.config, overrides)
    rows = []
    args.results.mkdir(parents=True, exist_ok=True)
    for category in categories:
        result = train(config, args.data, category, args.runs / category, overwrite=True)
        started = time.time()
        evaluation = evaluate(TorchRuntime.from_checkpoint(result.checkpoint), args.data, category,
                              args.runs / category / "eval", category)
        row = {**evaluation.row, "train_seconds": round(result.seconds, 1), "eval_seconds": round(time.time() - started, 1),
               "epochs": result.epochs}
        montage = cv2.imread(row.pop("montage"))
        small = cv2.resize(montage, (montage.shape[1] // 2, montage.shape[0] // 2), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(args.results / f"{args.name}_montage_{category}.png"), small)
        rows.append(row)
        print(markdown_table([row]), flush=True)

    mean = mean_row(rows)
    report = {"benchmark": args.name, "date": time.strftime("%Y-%m-%d"), "machine": machine_info(),
              "config": config, "targets": TARGETS, "mean": mean,
              "targets_met": {k: mean[k] >= v for k, v in TARGETS.items()}, "rows": rows,
              "total_train_seconds": round(sum(r["train_seconds"] for r in rows), 1)}
    write_bytes_atomic(args.results / f"{args.name}.json", json.dumps(report, indent=2, default=float).encode())
    m = report["machine"]
    text = (f"# {args.name}\n\nRD with the ImageNet EfficientNet-Lite0 teacher, 256x256, {config['train']['epochs']} epochs, "
            f"`{args.config.relative_to(REPO) if args.config.is_relative_to(REPO) else args.config}`.\n"
            f"Measured {report['date']} on {m['cpu']} ({m['cores']} cores, torch {m['torch']}, {m['torch_threads']} threads).\n\n"
            + markdown_table(rows) + "\n| category | train s | eval s |\n|---|---|---|\n"
            + "".join(f"| {r['category']} | {r['train_seconds']} | {r['eval_seconds']} |\n" for r in rows)
            + "\nTargets: mean image AUROC >= 98, pixel AUROC >= 96, AUPRO >= 90 -> "
            + ", ".join(f"{k} {'met' if ok else 'NOT met'}" for k, ok in report["targets_met"].items()) + "\n")
    write_bytes_atomic(args.results / f"{args.name}.md", text.encode())
    bar_chart(rows, args.results / f"{args.name}.png")
    print(text)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Before/after tables for the paper-fidelity changes, from benchmarks/rd_family.py runs.

Each family is trained (rd_family.py: 128x128, 12 epochs, Lite0 teacher, or a random ViT-Ti teacher for vitkd)
once with the code before the changes and once after, with the variants that decide each open choice, on the
synthetic assemblies (logical and structural anomalies) and on the real-texture benchmark. This script only
collects those runs' JSON files into one page beside what the papers themselves report:

    python benchmarks/rd_family.py --models rd,afkd,... --name family_synth_before     # on the earlier commit
    python benchmarks/rd_family.py --models afkd,afkd@... --name family_synth_after     # on this one
    python benchmarks/paper_fidelity.py --before family_synth_before,family_real_before \\
        --after family_synth_after,family_real_after,family_synth_mthf_loss,family_real_mthf_loss

Writes benchmarks/results/paper-fidelity/paper_fidelity_figures.md.
"""

from __future__ import annotations

import argparse
import sys
import json
import math
from pathlib import Path

from edgekd.atomic import write_bytes_atomic
sys.path.insert(0, str(Path(__file__).resolve().parent))  # studies.py, however this is loaded
from studies import folder_of  # noqa: E402

RESULTS = folder_of("paper fidelity")  # this study's folder (benchmarks/studies.py)
# What the papers report, on data that cannot be had offline (MVTec AD / LOCO) with weights that cannot either.
PAPERS = [
    ("rd", "RD4AD (CVPR 2022), MVTec AD", "image AUROC 98.5, pixel AUROC 97.8, AUPRO 93.9 (WideResNet50-2)"),
    ("afkd", "000 abstract, MVTec AD", "image AUROC 99.0, pixel AUROC 97.9, AUPRO 94.8"),
    ("logicrd", "001 abstract, MVTec LOCO", "image AUROC 83.8 at 55 FPS; +7 over RD; 1.7x DSKD's speed"),
    ("mthf", "002 table, MVTec AD", "pixel AUROC 98.65 mean over 15 categories, CV 1.02"),
    ("vitkd", "003 tables", "MVTec image AUROC 90.4 mean; CIFAR-10 96.3 (ViT-B/16, ImageNet weights)"),
    ("memkd", "004 patent claims", "no figures"),
]
METRICS = ("image_auroc", "pixel_auroc", "aupro", "image_auroc_logical", "image_auroc_structural")
HEADERS = ("image AUROC", "pixel AUROC", "AUPRO", "logical", "structural")


def load_rows(names: str, stage: str) -> list[dict]:
    rows = []
    for name in filter(None, names.split(",")):
        report = json.loads((RESULTS / f"{name}.json").read_text())
        rows += [{**row, "stage": stage, "data": report.get("data", "synthetic"), "machine": report["machine"]}
                 for row in report["rows"]]
    return rows


def fmt(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def family_of(model: str) -> str:
    return model.split("@")[0]


def table(rows: list[dict], family: str) -> list[str]:
    mine = [r for r in rows if family_of(r["model"]) == family]
    if not mine:
        return []
    lines = ["| variant | code | category | " + " | ".join(HEADERS) + " | final loss |",
             "|---|---|---|" + "---|" * (len(HEADERS) + 1)]
    categories = list(dict.fromkeys(r["category"] for r in mine))
    variants = list(dict.fromkeys((r["model"], r["stage"]) for r in mine))
    for category in categories:
        for model, stage in variants:
            for r in (r for r in mine if r["category"] == category and r["model"] == model and r["stage"] == stage):
                name = model.replace(f"{family}@", "").replace("model_options.", "") if "@" in model else "default"
                loss = "diverged" if r.get("error") else f"{r['final_loss']:.4g}"
                lines.append(f"| {name} | {stage} | {category} | " + " | ".join(fmt(r.get(m)) for m in METRICS)
                             + f" | {loss} |")
    means = []
    for model, stage in variants:
        chosen = [r for r in mine if r["model"] == model and r["stage"] == stage]
        values = [r["image_auroc"] for r in chosen if not math.isnan(r["image_auroc"])]
        if values:
            name = model.replace(f"{family}@", "").replace("model_options.", "") if "@" in model else "default"
            means.append(f"{name} ({stage}): {100 * sum(values) / len(values):.1f} over {len(values)}")
    return lines + ["", "Mean image AUROC: " + "; ".join(means) + "."]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="rd_family result names (comma-separated) of the earlier code")
    parser.add_argument("--after", required=True, help="rd_family result names of this code, variants included")
    parser.add_argument("--out", type=Path, default=RESULTS / "paper_fidelity_figures.md")
    args = parser.parse_args()
    rows = load_rows(args.before, "before") + load_rows(args.after, "after")
    machine = rows[0]["machine"]
    lines = ["# Paper fidelity: every changed family before and after, with the variants behind each choice", "",
             f"From `benchmarks/rd_family.py` (128x128, 12 epochs, batch 8, Lite0 teacher; vitkd with a random ViT-Ti "
             f"teacher: no ViT weights offline). {machine['cpu']} x{machine['cores']}; before and after ran side by "
             f"side on one machine. Values in %; 'logical'/'structural' are image AUROC on the assemblies' two "
             f"anomaly kinds. Synthetic assemblies: washer, tray, board; real textures: benchmarks/real_textures.py.",
             "", "## What the papers report (data and weights not available offline, so not comparable here)", "",
             "| model | source | reported |", "|---|---|---|"]
    lines += [f"| {m} | {s} | {r} |" for m, s, r in PAPERS]
    for family in ("rd", "afkd", "logicrd", "mthf", "vitkd", "memkd"):
        body = table(rows, family)
        if body:
            lines += ["", f"## {family}", "", *body]
    write_bytes_atomic(args.out, ("\n".join(lines) + "\n").encode())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

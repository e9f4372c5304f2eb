#!/usr/bin/env python
"""Mask fidelity on the real-texture benchmark: the masks `edgekd run` draws, before and after region cores.

For each category's checkpoint: the thresholds are set again from the held-out normal images exactly as training
sets them (edgekd/calibration.py thresholds_from_normal, which now also stores the map's normal level); the test
split is scored once, and its masks are made two ways: the map above the pixel threshold (every artifact before
region cores) and Thresholds.mask with the normal level (each region cut to its core). Dice, IoU, the area ratio,
region recall and precision and false regions per normal image for both (edgekd/mask_fidelity.py), per defect type
too, with a PNG per category: image | mask before | mask after, the true outline in green.

    python benchmarks/mask_fidelity.py --runs runs/real/real32_final_a --runs runs/real/real32_others \
        --categories gravel,grass,pcb,package,brick,cork,fibre_paper
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from edgekd.atomic import write_bytes_atomic
from edgekd.calibration import ThresholdRule, Thresholds, thresholds_from_normal
from edgekd.checkpoint import read_checkpoint
from edgekd.data.images import write_image_atomic
from edgekd.data.layouts import load_dataset
from edgekd.data.loading import load_images, load_images_and_masks
from edgekd.data.real_textures import parse_categories
from edgekd.data.splits import split_normals
from edgekd.machine import machine_info
from edgekd.mask_fidelity import SUMMARY_KEYS, image_fidelity, summarise
from edgekd.metrics import aupro, image_auroc, pixel_auroc
from edgekd.runtime.torch_backend import TorchRuntime
from edgekd.viz import outlined
sys.path.insert(0, str(Path(__file__).resolve().parent))
from studies import folder_of  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FORMS = ("plain", "cores")  # the map above the pixel threshold; Thresholds.mask with the normal level


def category_masks(checkpoint: Path, data: Path, category: str, pictures: Path) -> dict:
    runtime = TorchRuntime.from_checkpoint(checkpoint, device="cpu")
    config = read_checkpoint(checkpoint)["config"]
    settings = config["train"]
    dataset = load_dataset(data, category, seed=settings["seed"])
    _, held_idx = split_normals(len(dataset.train), settings["val_fraction"], settings["seed"])
    held = runtime.infer(load_images([dataset.train[i] for i in held_idx], runtime.input_size), 8)
    found = thresholds_from_normal(held.scores, held.maps, ThresholdRule.from_config(config["threshold"]))
    images, masks = load_images_and_masks(dataset.test, runtime.input_size)
    test = runtime.infer(images, 8)
    labels = np.array([s.label for s in dataset.test])
    types = [s.defect for s in dataset.test]
    deciders = {"plain": Thresholds(found["image"], found["pixel"]),
                "cores": Thresholds(found["image"], found["pixel"], found["background"])}
    row = {"category": category, "thresholds": found, "image_auroc": image_auroc(labels, test.scores),
           "pixel_auroc": pixel_auroc(masks, test.maps), "aupro": aupro(masks, test.maps)}
    predicted = {}
    for form, decide in deciders.items():
        predicted[form] = np.stack([decide.mask(amap).astype(bool) for amap in test.maps])
        per_image = [image_fidelity(p, t) for p, t in zip(predicted[form], masks)]
        summary = summarise(per_image, labels)
        summary["dice_median_by_type"] = {kind: float(np.median([r["dice"] for r, k in zip(per_image, types)
                                                                 if k == kind and "dice" in r]))
                                          for kind in sorted({k for k, label in zip(types, labels) if label == 1})}
        row[form] = summary
    row["montage"] = str(montage(images, masks, predicted, labels, types, pictures / f"masks_{category}.png"))
    return row


def montage(images, masks, predicted, labels, types, path: Path, tile: int = 160) -> Path:
    """One defect image of each type (its first): image | before | after, the true outline green."""
    rows = []
    for kind in sorted({t for t, label in zip(types, labels) if label == 1}):
        i = next(i for i, (t, label) in enumerate(zip(types, labels)) if label == 1 and t == kind)
        cells = [cv2.resize(images[i], (tile, tile), interpolation=cv2.INTER_AREA)]
        cells += [outlined(predicted[form][i], masks[i], tile) for form in FORMS]
        row = np.hstack(cells)
        cv2.putText(row, kind, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 0), 1, cv2.LINE_AA)
        rows.append(row)
    header = np.zeros((22, tile * 3, 3), np.uint8)
    for k, text in enumerate(("image", "mask before (threshold)", "after (region cores)")):
        cv2.putText(header, text, (k * tile + 4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
    write_image_atomic(path, np.vstack([header, *rows]))
    return path


def fmt(value, digits: int = 2) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def peer_lines(rows: list[dict], peers: dict[str, list[dict]]) -> list[str]:
    """anomalib's masks through the same rule (benchmarks/peer_masks.py), beside ours, per category."""
    if not peers:
        return []
    lines = ["", "## Beside anomalib (its maps through edgekd's threshold rule: benchmarks/peer_masks.py)\n",
             "| category | model | image AUROC | Dice median before -> after | area ratio median before -> after | "
             "region recall before -> after | false regions / normal image before -> after |",
             "|---|---|---|---|---|---|---|"]
    ours = {r["category"]: r for r in rows}
    for category in ours:
        for name, model_rows in [("edgekd default", [ours[category]])] + sorted(peers.items()):
            r = next((m for m in model_rows if m["category"] == category), None)
            if r is None:
                continue
            b, a = r["plain"], r["cores"]
            lines.append(f"| {category} | {name} | {100 * r['image_auroc']:.1f} | {fmt(b['dice_median'])} -> "
                         f"{fmt(a['dice_median'])} | {fmt(b['area_ratio_median'])} -> {fmt(a['area_ratio_median'])} | "
                         f"{fmt(b['region_recall'])} -> {fmt(a['region_recall'])} | "
                         f"{fmt(b['false_regions_per_normal_image'])} -> {fmt(a['false_regions_per_normal_image'])} |")
    return lines


def report(rows: list[dict], machine: dict, started: str, runs: str, peers: dict | None = None) -> str:
    lines = [f"# Mask fidelity: before and after region cores ({runs})\n",
             f"Measured {started} on {machine.get('cpu')} ({machine.get('cores')} cores). Thresholds from the "
             "held-out normal images as training sets them; masks at that pixel threshold (before) and cut to each "
             "region's core above the map's normal level (after, edgekd/calibration.py PEAK_FRACTION). Image "
             "AUROC, pixel AUROC and AUPRO come from the map and do not change.\n",
             "| category | image AUROC | pixel AUROC | AUPRO | Dice median before -> after | area ratio median "
             "before -> after | region recall before -> after | false regions / normal image before -> after |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b, a = r["plain"], r["cores"]
        lines.append(f"| {r['category']} | {100 * r['image_auroc']:.1f} | {100 * r['pixel_auroc']:.1f} | "
                     f"{100 * r['aupro']:.1f} | {fmt(b['dice_median'])} -> {fmt(a['dice_median'])} | "
                     f"{fmt(b['area_ratio_median'])} -> {fmt(a['area_ratio_median'])} | {fmt(b['region_recall'])} -> "
                     f"{fmt(a['region_recall'])} | {fmt(b['false_regions_per_normal_image'])} -> "
                     f"{fmt(a['false_regions_per_normal_image'])} |")
    if rows:
        mean = {form: {k: float(np.nanmean([r[form][k] for r in rows])) for k in SUMMARY_KEYS} for form in FORMS}
        lines.append(f"| **mean** | | | | {fmt(mean['plain']['dice_median'])} -> {fmt(mean['cores']['dice_median'])} | "
                     f"{fmt(mean['plain']['area_ratio_median'])} -> {fmt(mean['cores']['area_ratio_median'])} | "
                     f"{fmt(mean['plain']['region_recall'])} -> {fmt(mean['cores']['region_recall'])} | "
                     f"{fmt(mean['plain']['false_regions_per_normal_image'])} -> "
                     f"{fmt(mean['cores']['false_regions_per_normal_image'])} |")
        kinds = sorted({k for r in rows for k in r["cores"]["dice_median_by_type"]})
        lines += ["", "## Median Dice by defect type, before -> after\n", "| category | " + " | ".join(kinds) + " |",
                  "|---|" + "---|" * len(kinds)]
        for r in rows:
            cells = [f"{fmt(r['plain']['dice_median_by_type'].get(k))} -> {fmt(r['cores']['dice_median_by_type'].get(k))}"
                     for k in kinds]
            lines.append(f"| {r['category']} | " + " | ".join(cells) + " |")
        lines += ["", "Pictures: " + ", ".join(f"`{Path(r['montage']).name}`" for r in rows)]
    lines += peer_lines(rows, peers or {})
    return "\n".join(lines) + "\n"


def load_peers(folder: Path) -> dict[str, list[dict]]:
    """The peers measured so far: peer_masks_<model>.json in the study's folder."""
    return {json.loads(path.read_text())["model"]: json.loads(path.read_text())["rows"]
            for path in sorted(folder.glob("peer_masks_*.json"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, action="append", required=True,
                        help="Folder of <category>/model.ckpt; again for more (the first holding a category is used)")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "real")
    parser.add_argument("--categories", default="all")
    parser.add_argument("--results", type=Path, default=folder_of("mask fidelity"))
    parser.add_argument("--name", default="mask_fidelity")
    parser.add_argument("--report-only", action="store_true", help="Rewrite the report from its JSON, with the peers "
                        "measured since (benchmarks/peer_masks.py).")
    args = parser.parse_args()
    if args.report_only:
        payload = json.loads((args.results / f"{args.name}.json").read_text())
        text = report(payload["rows"], payload["machine"], payload["date"], payload["runs"], load_peers(args.results))
        write_bytes_atomic(args.results / f"{args.name}.md", text.encode())
        print(text)
        return
    started = time.strftime("%Y-%m-%d %H:%M")
    rows = []
    for category in parse_categories(args.categories):
        checkpoint = next((runs / category / "model.ckpt" for runs in args.runs
                           if (runs / category / "model.ckpt").is_file()), None)
        if checkpoint is None:
            sys.exit(f"no {category}/model.ckpt under {', '.join(map(str, args.runs))}: train it first "
                     "(benchmarks/real_texture_accuracy.py)")
        rows.append(category_masks(checkpoint, args.data, category, args.results))
        print(category, {form: {k: round(rows[-1][form][k], 3) for k in ("dice_median", "area_ratio_median",
                                                                           "region_recall")} for form in FORMS},
              flush=True)
    machine = machine_info()
    args.results.mkdir(parents=True, exist_ok=True)
    runs = ", ".join(map(str, args.runs))
    payload = {"benchmark": args.name, "date": started, "machine": machine, "runs": runs, "rows": rows}
    write_bytes_atomic(args.results / f"{args.name}.json", json.dumps(payload, indent=2, default=float).encode())
    text = report(rows, machine, started, runs, load_peers(args.results))
    write_bytes_atomic(args.results / f"{args.name}.md", text.encode())
    print(text)


if __name__ == "__main__":
    main()

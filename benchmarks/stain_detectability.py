#!/usr/bin/env python
"""How detectable are faint stains and faded patches at all, on each real surface? An upper bound, by an oracle.

The oracle knows where the defect is: it measures the defect's own region against a ring around it (centre minus
surround, so the surface's slow light changes cancel), and compares that with the same region and ring on normal
images of the same surface. A detector that must also find the place can only do worse. The statistic matches
each type: mean log-luminance (darker inside) for `faint_stain`, log high-pass energy (less contrast inside) for
`faded`. Samples are rendered by the benchmark's own generator (edgekd/data/real_textures.py), the defect-free
image of each sample beside it, so the report also gives the defect's true strength against the surface's own
variation (its spread over the normal images) in the same statistic.

This is what issue 32's target of 90 image AUROC for these types on grey natural textures is measured against.

    python benchmarks/stain_detectability.py --categories gravel,grass,brick,cork,fibre_paper --samples 24
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from edgekd.data import real_textures
from edgekd.data.real_textures import parse_categories, render_sample
from edgekd.machine import machine_info
from edgekd.metrics import image_auroc

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the modules beside this script, however it is loaded
from results_files import write_results  # noqa: E402
from studies import folder_of  # noqa: E402

TYPES = ("faint_stain", "faded")
RING = (9, 21)  # the surround: from 4 to 10 px outside the region, beyond most of the soft edge
HIGH_PASS_SIGMA = 2.0  # faded patches lose their fine detail: energy above this scale


def _log_luminance(image: np.ndarray) -> np.ndarray:
    rgb = image.astype(np.float32) / 255
    return np.log(rgb @ np.array([0.299, 0.587, 0.114], np.float32) + 0.02)


def _ring(mask: np.ndarray) -> np.ndarray:
    u8 = mask.astype(np.uint8)
    inner, outer = (cv2.dilate(u8, np.ones((k, k), np.uint8)).astype(bool) for k in RING)
    return outer & ~inner


def contrast(image: np.ndarray, mask: np.ndarray, kind: str) -> float:
    """Centre against surround in the statistic that matches the defect type; larger = more like the defect."""
    log_lum = _log_luminance(image)
    ring = _ring(mask)
    if kind == "faint_stain":
        return float(log_lum[ring].mean() - log_lum[mask].mean())
    detail = log_lum - cv2.GaussianBlur(log_lum, (0, 0), HIGH_PASS_SIGMA)
    return float(np.log(detail[ring].std() + 1e-4) - np.log(detail[mask].std() + 1e-4))


def _clean(category: str, kind: str, index: int, seed: int, size: int) -> np.ndarray:
    """The same sample before its defect was painted on (the generator draws the surface first)."""
    rng = real_textures.sample_rng(seed, category, f"test/{kind}", index)
    return real_textures._to_uint8(real_textures.CATEGORIES[category].render(rng, "test", size))


def measure(category: str, kind: str, samples: int, normals: int, seed: int, size: int) -> dict:
    goods = [render_sample(category, "test", i, seed, size)[0] for i in range(normals)]
    aurocs, strengths = [], []
    for index in range(samples):
        image, mask = render_sample(category, "test", index, seed, size, kind)
        normal = np.array([contrast(g, mask, kind) for g in goods])
        found = contrast(image, mask, kind)
        aurocs.append(image_auroc(np.r_[1, np.zeros(normals)], np.r_[found, normal]))
        spread = max(float(normal.std()), 1e-6)
        strengths.append((found - contrast(_clean(category, kind, index, seed, size), mask, kind)) / spread)
    aurocs, strengths = np.array(aurocs), np.array(strengths)
    return {"category": category, "type": kind, "samples": samples, "normals": normals,
            "oracle_auroc": float(aurocs.mean()), "found_at_99": float((aurocs >= 0.99).mean()),
            "strength_median": float(np.median(strengths)), "strength_p90": float(np.quantile(strengths, 0.9))}


def report(payload: dict) -> str:
    lines = ["# Faint stains and faded patches: how detectable they are at their own place", "",
             f"Measured {payload['date']} on {payload['machine']['cpu']} ({payload['machine']['cores']} cores) by "
             "`benchmarks/stain_detectability.py`. For each defect sample the oracle measures its own region against "
             "a ring around it, and ranks that among the same region and ring on the normal test images (AUROC of "
             "one defect image against the normals, averaged over samples). `found at 99` is the share of samples "
             "whose region stands out from every normal image's. Strength: how much the defect moved the statistic, "
             "in spreads of the statistic over normal images (1 = the surface's own variation).", "",
             "| category | type | oracle AUROC | found at 99 | strength (median) | strength (p90) |",
             "|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        lines.append(f"| {r['category']} | {r['type']} | {100 * r['oracle_auroc']:.1f} | "
                     f"{100 * r['found_at_99']:.0f}% | {r['strength_median']:.2f} | {r['strength_p90']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--categories", default="gravel,grass,brick,cork,fibre_paper")
    parser.add_argument("--samples", type=int, default=24, help="defect samples per category and type")
    parser.add_argument("--normals", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0, help="the benchmark's seed (data/real uses 0)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--out", type=Path, default=folder_of("real-texture accuracy"))
    parser.add_argument("--name", default="stain_detectability")
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M")
    rows = []
    for category in parse_categories(args.categories):
        for kind in TYPES:
            rows.append(measure(category, kind, args.samples, args.normals, args.seed, args.size))
            print(category, kind, f"oracle {100 * rows[-1]['oracle_auroc']:.1f}", flush=True)
    payload = {"benchmark": "stain_detectability", "date": started, "machine": machine_info(), "rows": rows}
    write_results(args.out, args.name, payload, report)


if __name__ == "__main__":
    main()

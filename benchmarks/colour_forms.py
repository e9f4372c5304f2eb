#!/usr/bin/env python
"""The colour branch alone, in its two forms, on the real-texture benchmark: how far a camera moves it, and how
well its image maximum separates each defect type from normal images.

No network is trained: the branch (edgekd/models/colour_deviation.py) is fitted as training fits it (per-position
median and spread on the training images, brightness by the form's rule) and scored on the test split. The camera
shift is the gate's own measure (camera-augmented copies of the normal test images, in robust spreads of their
clean maxima); the gate keeps the branch at or under 2.0. This is what decided the log form (issue 32): a camera's
gains cancel in logs, so the branch can stay on grey textures, where stains and casts are its clearest case.

    python benchmarks/colour_forms.py --data data/real --categories gravel,grass,brick,cork,fibre_paper,pcb,package
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from edgekd.data.images import to_model_input
from edgekd.data.layouts import load_dataset
from edgekd.data.loading import load_images
from edgekd.data.real_textures import parse_categories
from edgekd.machine import machine_info
from edgekd.metrics import image_auroc
from edgekd.models.colour_deviation import CAMERA_VIEWS, FORMS, ColourDeviation, _camera_views, camera_shift

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the modules beside this script, however it is loaded
from results_files import write_results  # noqa: E402
from studies import folder_of  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GATE = 2.0  # configs/rd_lite0.yaml's colour_gate


class _Fit:
    """What fit_colour needs of a detector, without one: the branch, and a flat map (the scales are not used)."""

    def __init__(self, colour: ColourDeviation):
        self.colour = colour

    def feature_map(self, batch: torch.Tensor) -> torch.Tensor:
        return torch.ones(batch.shape[0], 1, 8, 8)


def measure(data: Path, category: str, form: str, size: int) -> dict:
    from edgekd.models.colour_deviation import fit_colour
    dataset = load_dataset(data, category)
    as_batch = lambda images: torch.from_numpy(to_model_input(images))
    train = as_batch(load_images(dataset.train, (size, size)))
    test = dataset.test
    images = as_batch(load_images(test, (size, size)))
    colour = ColourDeviation((size, size), 0.0, 1.0, form)
    good = images[[s.label == 0 for s in test]]
    fit_colour(_Fit(colour), lambda: iter([train]), lambda: iter([good]))
    with torch.no_grad():
        maxima = colour(images).flatten(1).amax(1).numpy()
        rng = np.random.default_rng([0, 2**30])
        camera = torch.cat([colour(_camera_views(good, rng)).flatten(1).amax(1) for _ in range(CAMERA_VIEWS)]).numpy()
    labels = np.array([s.label for s in test])
    normal = labels == 0
    by_type = {kind: image_auroc(labels[normal | chosen], maxima[normal | chosen])
               for kind in sorted({s.defect for s in test if s.label}) for chosen in
               [np.array([s.defect == kind for s in test])]}
    shift = camera_shift(maxima[normal], camera)
    return {"category": category, "form": form, "camera_shift": shift, "kept": bool(shift <= GATE),
            "brightness": colour.counts_brightness, "image_auroc_by_type": by_type}


def report(payload: dict) -> str:
    rows = payload["rows"]
    types = sorted({t for r in rows for t in r["image_auroc_by_type"]})
    lines = ["# The colour branch alone, linear and log forms", "",
             f"Measured {payload['date']} on {payload['machine']['cpu']} ({payload['machine']['cores']} cores) by "
             "`benchmarks/colour_forms.py`: the branch fitted on each category's training images (no network), "
             "its image maximum against the normal test images per defect type (image AUROC, %), and the gate's "
             f"camera shift (normal spreads; kept at or under {GATE:g}). A branch the gate leaves out scores nothing.",
             "", "| category | form | camera shift | kept | brightness | " + " | ".join(types) + " |",
             "|" + "---|" * (len(types) + 5)]
    for r in rows:
        cells = [f"{100 * r['image_auroc_by_type'].get(t, float('nan')):.1f}" for t in types]
        lines.append(f"| {r['category']} | {r['form']} | {r['camera_shift']:.1f} | {'yes' if r['kept'] else 'no'} | "
                     f"{'yes' if r['brightness'] else 'no'} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "data" / "real")
    parser.add_argument("--categories", default="all")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--out", type=Path, default=folder_of("real-texture accuracy"))
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M")
    rows = []
    for category in parse_categories(args.categories):
        for form in FORMS:
            rows.append(measure(args.data, category, form, args.size))
            print(category, form, f"shift {rows[-1]['camera_shift']:.1f}", flush=True)
    payload = {"benchmark": "colour_forms", "date": started, "machine": machine_info(), "gate": GATE, "rows": rows}
    write_results(args.out, "colour_forms", payload, report)


if __name__ == "__main__":
    main()

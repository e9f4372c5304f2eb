#!/usr/bin/env python
"""Generate the real-texture benchmark (edgekd/data/real_textures.py) in MVTec AD layout, plus a preview montage.

    python benchmarks/real_textures.py --out data/real [--categories all] [--seed 0]

The images are derived from third-party sources (scikit-image, Debian mypaint-data-extras and opencv-doc): they are
generated on each machine and never committed. Every accuracy decision is made on this set, not on data/synth.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from edgekd.data.images import read_rgb, write_image_atomic
from edgekd.data.real_textures import DEFECTS, generate, parse_categories
from edgekd.errors import EdgekdError
from edgekd.progress import make_progress


def preview(root: Path, categories: list[str], out: Path, tile: int = 128) -> None:
    """One row per category: two normal test images, then one image of each defect with its mask outlined."""
    import cv2
    rows = []
    for category in categories:
        cells = [read_rgb(root / category / "test/good" / f"{i:03d}.png") for i in range(2)]
        for defect in DEFECTS:
            image = read_rgb(root / category / "test" / defect / "000.png")
            mask = cv2.imread(str(root / category / "ground_truth" / defect / "000_mask.png"), cv2.IMREAD_GRAYSCALE)
            contours, _ = cv2.findContours((mask > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(image, contours, -1, (255, 0, 0), 1)
            cells.append(image)
        cells = [cv2.resize(c, (tile, tile), interpolation=cv2.INTER_AREA) for c in cells]
        label = np.full((tile, 96, 3), 255, np.uint8)
        cv2.putText(label, category[:11], (2, tile // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
        rows.append(np.hstack([label, *cells]))
    write_image_atomic(out, np.vstack(rows))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("data/real"))
    ap.add_argument("--categories", default="all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--train", type=int, default=120)
    ap.add_argument("--test-good", type=int, default=40)
    ap.add_argument("--per-defect", type=int, default=8)
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args()
    try:
        names = parse_categories(args.categories)
        started = time.time()
        with make_progress() as progress:
            generate(args.out, names, args.seed, args.size, args.train, args.test_good, args.per_defect,
                     args.overwrite, progress)
        preview(args.out, names, args.out / "preview.png")
    except EdgekdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(names)} categories to {args.out} in {time.time() - started:.0f}s; preview {args.out / 'preview.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

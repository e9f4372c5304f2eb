#!/usr/bin/env python
"""anomalib's masks measured as ours are: PatchCore (or STFPM) maps through edgekd's threshold rule.

anomalib has no threshold from normal images alone, so its maps go through ours: the peer is trained on the same 90%
of the training images edgekd fits on, scores the same held-out 10% and the test split, and the thresholds come
from the held-out maps by edgekd/calibration.py (pixel threshold and normal level). Its masks are then measured
plain (above the pixel threshold) and cut to region cores, with edgekd/mask_fidelity.py.

Three steps in one file: this venv writes the split (which images train, which are held out, which are tested),
the anomalib venv (../shared/peers/anomalib/setup.sh) trains the peer and writes its maps (`--peer-step`), and this
venv measures them.

    python benchmarks/peer_masks.py --model patchcore --categories gravel,grass,pcb,package
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PEER_PYTHON = Path("/tmp/anomalib-peer/venv/bin/python")
PEER_HARNESS = REPO.parent / "shared" / "peers" / "anomalib"


def write_split(data: Path, category: str, path: Path) -> None:
    """The images of each part of the run, as edgekd's training splits them (edgekd/data/splits.py)."""
    from edgekd.data.layouts import load_dataset
    from edgekd.data.splits import split_normals
    dataset = load_dataset(data, category, seed=0)
    fit, held = split_normals(len(dataset.train), 0.1, 0)
    path.write_text(json.dumps({"fit": [str(dataset.train[i].path) for i in fit],
                                "held_out": [str(dataset.train[i].path) for i in held],
                                "test": [str(s.path) for s in dataset.test]}))


def peer_step(split_file: Path, model_name: str, out: Path, threads: int) -> None:
    """In the anomalib venv: train on the fit images, write the maps and scores of the held-out and test images."""
    import numpy as np
    import torch
    from PIL import Image
    sys.path.insert(0, str(PEER_HARNESS))
    os.environ.setdefault("HF_HOME", "/tmp/anomalib-peer/hf-home")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TQDM_DISABLE"] = "1"  # the coreset progress bar: thousands of lines in a log
    torch.set_num_threads(threads)
    from anomalib.data import Folder
    from anomalib.engine import Engine
    from anomalib.models import Patchcore, Stfpm
    from anomalib.post_processing import PostProcessor
    from run import BACKBONE, DEFAULT_EPOCHS, LAYERS
    split = json.loads(split_file.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        good = Path(tmp) / "train" / "good"
        good.mkdir(parents=True)
        for i, path in enumerate(split["fit"]):
            (good / f"{i:04d}{Path(path).suffix}").symlink_to(path)
        post = PostProcessor(enable_normalization=False, enable_thresholding=False)
        common = dict(post_processor=post, evaluator=False, visualizer=False)
        model = (Stfpm(backbone=BACKBONE, layers=LAYERS["stfpm"], **common) if model_name == "stfpm" else
                 Patchcore(backbone=BACKBONE, layers=LAYERS["patchcore"], coreset_sampling_ratio=0.01, num_neighbors=9,
                           **common))
        datamodule = Folder(name="peer", root=tmp, normal_dir="train/good", train_batch_size=32, eval_batch_size=32,
                            num_workers=0, test_split_mode="none", val_split_mode="none")
        engine = Engine(default_root_dir=Path(tmp) / "work", accelerator="cpu", devices=1,
                        max_epochs=DEFAULT_EPOCHS[model_name], logger=False, limit_val_batches=0,
                        num_sanity_val_steps=0, enable_progress_bar=False)
        engine.fit(model=model, datamodule=datamodule)
    model.eval()

    def score(paths):
        maps, scores = [], []
        for start in range(0, len(paths), 16):
            batch = torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB").resize((256, 256)),
                                                             np.float32) / 255.0).permute(2, 0, 1)
                                 for p in paths[start:start + 16]])
            with torch.inference_mode():
                result = model(batch)
            maps.append(result.anomaly_map.reshape(len(batch), 256, 256).float().numpy())
            scores.append(result.pred_score.reshape(-1).float().numpy())
        return np.concatenate(maps), np.concatenate(scores)
    held_maps, held_scores = score(split["held_out"])
    test_maps, test_scores = score(split["test"])
    np.savez_compressed(out, held_maps=held_maps, held_scores=held_scores, test_maps=test_maps.astype(np.float16),
                        test_scores=test_scores)


def measure(data: Path, category: str, maps_file: Path) -> dict:
    """This venv: edgekd's thresholds from the peer's held-out maps, its masks both ways."""
    import numpy as np
    from edgekd.calibration import ThresholdRule, Thresholds, thresholds_from_normal
    from edgekd.data.layouts import load_dataset
    from edgekd.data.loading import load_images_and_masks
    from edgekd.mask_fidelity import image_fidelity, summarise
    from edgekd.metrics import aupro, image_auroc, pixel_auroc
    peer = np.load(maps_file)
    found = thresholds_from_normal(peer["held_scores"], peer["held_maps"], ThresholdRule())
    dataset = load_dataset(data, category)
    _, masks = load_images_and_masks(dataset.test, (256, 256))
    labels = np.array([s.label for s in dataset.test])
    maps = peer["test_maps"].astype(np.float32)
    row = {"category": category, "thresholds": found, "image_auroc": image_auroc(labels, peer["test_scores"]),
           "pixel_auroc": pixel_auroc(masks, maps), "aupro": aupro(masks, maps)}
    for form, decide in (("plain", Thresholds(found["image"], found["pixel"])),
                         ("cores", Thresholds(found["image"], found["pixel"], found["background"]))):
        row[form] = summarise([image_fidelity(decide.mask(m).astype(bool), t) for m, t in zip(maps, masks)], labels)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("patchcore", "stfpm"), default="patchcore")
    parser.add_argument("--categories", default="gravel,grass,pcb,package,brick,cork,fibre_paper")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "real")
    parser.add_argument("--work", type=Path, default=Path("/tmp/anomalib-peer/masks"))
    parser.add_argument("--peer-python", type=Path, default=PEER_PYTHON)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="JSON of the measured rows (default: the mask "
                        "fidelity study's peer_masks_<model>.json)")
    parser.add_argument("--peer-step", nargs=2, metavar=("SPLIT", "MAPS"), type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer_step:
        peer_step(args.peer_step[0], args.model, args.peer_step[1], args.threads)
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from studies import folder_of
    from edgekd.atomic import write_bytes_atomic
    from edgekd.machine import machine_info
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for category in args.categories.split(","):
        split, maps = args.work / f"{category}_split.json", args.work / f"{args.model}_{category}.npz"
        if not maps.exists():
            write_split(args.data, category, split)
            subprocess.run([str(args.peer_python), __file__, "--model", args.model, "--threads", str(args.threads),
                            "--peer-step", str(split), str(maps)], check=True)
        rows.append(measure(args.data, category, maps))
        print(category, {form: round(rows[-1][form]["dice_median"], 3) for form in ("plain", "cores")}, flush=True)
    out = args.out or folder_of("mask fidelity") / f"peer_masks_{args.model}.json"
    write_bytes_atomic(out, json.dumps({"benchmark": f"peer_masks_{args.model}", "date": time.strftime("%Y-%m-%d %H:%M"),
                                        "machine": machine_info(), "model": f"anomalib 2.7 {args.model}",
                                        "rows": rows}, indent=2, default=float).encode())
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Dataset layouts on disk -> lists of samples. Supported: MVTec AD, MVTec LOCO and a plain folder layout.

MVTec AD:   <root>/<category>/train/good, test/<type>/*.png, ground_truth/<type>/<name>_mask.png
MVTec LOCO: like MVTec AD, but ground_truth/<type>/<name>/*.png holds several masks per image
Folder:     <root>/normal/*.png, <root>/anomalous/*.png, optional <root>/masks/<name>[_mask].png
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekd.data.images import list_images
from edgekd.errors import EdgekdError

_EXPECTED = ("expected MVTec AD/LOCO (<category>/train/good, <category>/test/<type>) "
             "or a folder with normal/ and anomalous/")


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # 0 normal, 1 anomalous
    defect: str = "good"
    masks: tuple[Path, ...] = field(default_factory=tuple)


@dataclass
class Dataset:
    root: Path
    category: str
    layout: str
    train: list[Sample]
    test: list[Sample]


def _mvtec_masks(gt_dir: Path, image: Path) -> tuple[tuple[Path, ...], str]:
    single = gt_dir / f"{image.stem}_mask.png"
    if single.is_file():
        return (single,), "mvtec_ad"
    folder = gt_dir / image.stem
    if folder.is_dir():
        return tuple(list_images(folder)), "mvtec_loco"
    return (), "mvtec_ad"


def _load_mvtec(base: Path, category: str) -> Dataset:
    good = base / "train" / "good"
    if not good.is_dir():
        raise EdgekdError(f"{base} has no train/good folder: {_EXPECTED}")
    test_dir = base / "test"
    if not test_dir.is_dir():
        raise EdgekdError(f"{base} has no test folder: {_EXPECTED}")
    train = [Sample(p, 0) for p in list_images(good)]
    test, layout = [], "mvtec_ad"
    for defect_dir in sorted(d for d in test_dir.iterdir() if d.is_dir()):
        for image in list_images(defect_dir):
            if defect_dir.name == "good":
                test.append(Sample(image, 0))
                continue
            masks, kind = _mvtec_masks(base / "ground_truth" / defect_dir.name, image)
            if not masks:
                raise EdgekdError(f"no ground-truth mask for {image}: expected "
                                  f"{base / 'ground_truth' / defect_dir.name / (image.stem + '_mask.png')}")
            layout = kind if kind == "mvtec_loco" else layout
            test.append(Sample(image, 1, defect_dir.name, masks))
    return Dataset(base, category, layout, train, test)


def _load_folder(base: Path, category: str, seed: int, test_fraction: float) -> Dataset:
    normals = list_images(base / "normal")
    anomalous_dir = base / "anomalous"
    anomalous = list_images(anomalous_dir) if anomalous_dir.is_dir() else []
    # Normal images are split so the test set has both classes; the split is fixed by the seed.
    order = np.random.default_rng(seed).permutation(len(normals))
    n_test = int(round(len(normals) * test_fraction)) if anomalous else 0
    test_idx = set(order[:n_test].tolist())
    train = [Sample(p, 0) for i, p in enumerate(normals) if i not in test_idx]
    test = [Sample(p, 0) for i, p in enumerate(normals) if i in test_idx]
    masks_dir = base / "masks"
    for image in anomalous:
        candidates = [masks_dir / f"{image.stem}_mask.png", masks_dir / f"{image.stem}.png"]
        masks = tuple(c for c in candidates if c.is_file())[:1]
        test.append(Sample(image, 1, "anomalous", masks))
    return Dataset(base, category, "folder", train, test)


def load_dataset(root: str | Path, category: str | None = None, seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise EdgekdError(f"dataset folder {root} does not exist: create it with 'edgekd data synth {root}' or fix --data")
    is_dataset = lambda folder: (folder / "train").is_dir() or (folder / "normal").is_dir()
    if category and not (root / category).is_dir() and root.name == category and is_dataset(root):
        base = root  # --data already points at the category folder
    else:
        base = root / category if category else root
    if category and not base.is_dir():
        found = sorted(d.name for d in root.iterdir() if d.is_dir() and is_dataset(d))
        hint = f"categories here: {', '.join(found)}" if found else _EXPECTED
        raise EdgekdError(f"category '{category}' not found in {root}: {hint}")
    if (base / "train").is_dir():
        dataset = _load_mvtec(base, category or base.name)
    elif (base / "normal").is_dir():
        dataset = _load_folder(base, category or base.name, seed, test_fraction)
    else:
        found = sorted(d.name for d in base.iterdir() if d.is_dir() and is_dataset(d))
        if found:
            raise EdgekdError(f"{base} holds several categories ({', '.join(found)}): pick one with --category")
        raise EdgekdError(f"{base} is not a dataset: {_EXPECTED}")
    if not dataset.train:
        raise EdgekdError(f"{base} has no normal training images: add images to its train/good (or normal/) folder")
    return dataset

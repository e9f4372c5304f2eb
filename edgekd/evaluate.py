"""`edgekd eval`: metrics on a dataset's test split, a results table (JSON + Markdown) and a PNG montage."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
import numpy as np

from edgekd.atomic import write_bytes_atomic
from edgekd.calibration import Thresholds
from edgekd.data.images import write_image_atomic
from edgekd.data.layouts import Dataset, load_dataset
from edgekd.data.loading import load_images_and_masks
from edgekd.mask_fidelity import mask_fidelity
from edgekd.runtime.base import Runtime
from edgekd.metrics import compute_metrics, image_auroc
from edgekd.viz import montage

METRIC_COLUMNS = ("image_auroc", "pixel_auroc", "aupro", "image_f1_max")


def auroc_by_type(dataset: Dataset, labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Image AUROC of the normal test images against each anomaly type alone (MVTec LOCO reports logical and
    structural anomalies apart this way)."""
    types = sorted({s.defect for s in dataset.test if s.label == 1})
    normal = labels == 0
    result = {}
    for kind in types:
        chosen = normal | np.array([s.defect == kind for s in dataset.test])
        result[kind] = image_auroc(labels[chosen], scores[chosen])
    return result


def dice_by_type(dataset: Dataset, per_image: list[dict]) -> dict[str, float]:
    """Median Dice of each defect type's images: which defects the masks outline well."""
    result = {}
    for kind in sorted({s.defect for s in dataset.test if s.label == 1}):
        values = [r["dice"] for s, r in zip(dataset.test, per_image) if s.defect == kind and "dice" in r]
        result[kind] = float(np.median(values)) if values else math.nan
    return result


def _montage_rows(dataset: Dataset, labels: np.ndarray, scores: np.ndarray, limit: int = 10) -> list[int]:
    """Two normal images and the highest- and lowest-scoring image of each defect type."""
    rows = [int(i) for i in np.flatnonzero(labels == 0)[:2]]
    defects = sorted({s.defect for s in dataset.test if s.label == 1})
    for defect in defects:
        idx = [i for i, s in enumerate(dataset.test) if s.defect == defect]
        rows.append(int(max(idx, key=lambda i: scores[i])))
    return rows[:limit]


@dataclass
class Evaluation:
    row: dict  # metrics and metadata for the results table
    labels: np.ndarray
    scores: np.ndarray
    masks: np.ndarray
    maps: np.ndarray


def one_class_note(labels: np.ndarray, category: str) -> str | None:
    """Why AUROC, AUPRO and F1 are n/a: they compare defective with normal images, and one kind is missing."""
    if labels.size and labels.min() == labels.max():
        kind = "defective" if labels.max() == 0 else "normal"
        return f"the test split of {category} has no {kind} images, so AUROC, AUPRO and F1 cannot be measured"
    return None


def evaluate(runtime: Runtime, data: str | Path, category: str | None, out: Path, name: str, progress=None,
             batch_size: int = 16) -> Evaluation:
    """Any artifact (checkpoint, ONNX, engine) through its runtime: the same metrics for all of them."""
    dataset = load_dataset(data, category)
    images, masks = load_images_and_masks(dataset.test, runtime.input_size, progress, f"load {dataset.category}")
    prediction = runtime.infer(images, batch_size, progress, "evaluate")
    maps, scores = prediction.maps, prediction.scores
    labels = np.array([s.label for s in dataset.test])
    thresholds = runtime.thresholds
    with warnings.catch_warnings():  # one class only: the metrics are NaN, and the note below says why
        warnings.simplefilter("ignore", RuntimeWarning)
        metrics = compute_metrics(labels, scores, masks, maps, thresholds.get("image"))
    row = {"name": name, "category": dataset.category, "layout": dataset.layout, **metrics,
           "image_auroc_by_type": auroc_by_type(dataset, labels, scores)}
    if missing := one_class_note(labels, dataset.category):
        row["note"] = missing
    per_image = None
    decide = Thresholds.for_masks(thresholds)
    if decide is not None:  # the masks `edgekd run` draws, with the artifact's own thresholds
        row["masks"], per_image = mask_fidelity(maps, masks, labels, decide)
        row["masks"]["dice_median_by_type"] = dice_by_type(dataset, per_image)
    else:  # no pixel threshold to draw masks with: the montage shows the hottest 1% of pixels
        decide = Thresholds(math.inf, float(np.percentile(maps, 99)))

    picks = _montage_rows(dataset, labels, scores)
    vmin, vmax = float(np.percentile(maps, 1)), float(maps.max())
    titles = [f"{dataset.test[i].defect} {scores[i]:.3f}"
              + (f" Dice {per_image[i]['dice']:.2f}" if per_image and "dice" in per_image[i] else "") for i in picks]
    picture = montage(images[picks], maps[picks], decide.masks(maps[picks]), masks[picks], titles, vmin, vmax)
    montage_path = out / f"montage_{dataset.category}.png"
    write_image_atomic(montage_path, picture)
    row["montage"] = str(montage_path)
    return Evaluation(row, labels, scores, masks, maps)


def _fmt(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def mean_row(rows: list[dict]) -> dict:
    with warnings.catch_warnings():  # a metric that is n/a in every row stays n/a
        warnings.simplefilter("ignore", RuntimeWarning)
        return {k: float(np.nanmean([r[k] for r in rows])) if rows else math.nan for k in METRIC_COLUMNS}


def markdown_table(rows: list[dict]) -> str:
    header = "| category | image AUROC | pixel AUROC | AUPRO | image F1-max |\n|---|---|---|---|---|\n"
    lines = [f"| {r['category']} | " + " | ".join(_fmt(r[k]) for k in METRIC_COLUMNS) + " |" for r in rows]
    if len(rows) > 1:
        lines.append("| **mean** | " + " | ".join(_fmt(v) for v in mean_row(rows).values()) + " |")
    table = header + "\n".join(lines) + "\n"
    masked = [r for r in rows if r.get("masks")]
    if masked:
        table += "\n" + mask_table(masked)
    loco = [r for r in rows if r.get("layout") == "mvtec_loco" and r.get("image_auroc_by_type")]
    if loco:  # MVTec LOCO's split: how the logical and the structural anomalies are found
        table += "\n| category | image AUROC logical | image AUROC structural |\n|---|---|---|\n"
        table += "\n".join(f"| {r['category']} | {_fmt(r['image_auroc_by_type'].get('logical_anomalies'))} | "
                           f"{_fmt(r['image_auroc_by_type'].get('structural_anomalies'))} |" for r in loco) + "\n"
    return table


def _plain(value, digits: int = 2) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def mask_table(rows: list[dict]) -> str:
    """Mask fidelity at each artifact's pixel threshold (edgekd/mask_fidelity.py)."""
    lines = ["| category | Dice median | Dice mean | IoU median | area ratio median (q25-q75) | region recall | "
             "region precision | false regions per normal image |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["masks"]
        lines.append(f"| {r['category']} | {_plain(m['dice_median'])} | {_plain(m['dice_mean'])} | "
                     f"{_plain(m['iou_median'])} | {_plain(m['area_ratio_median'])} ({_plain(m['area_ratio_q25'])}-"
                     f"{_plain(m['area_ratio_q75'])}) | {_plain(m['region_recall'])} | {_plain(m['region_precision'])}"
                     f" | {_plain(m['false_regions_per_normal_image'])} |")
    return "Masks at each model's own pixel threshold (what `edgekd run` outlines):\n\n" + "\n".join(lines) + "\n"


def write_results(rows: list[dict], out: Path, extra: dict | None = None) -> tuple[Path, Path]:
    payload = {"rows": rows, "mean": mean_row(rows), **(extra or {})}
    json_path, md_path = out / "results.json", out / "results.md"
    write_bytes_atomic(json_path, json.dumps(payload, indent=2, default=float).encode())
    write_bytes_atomic(md_path, ("# edgekd evaluation (values in %)\n\n" + markdown_table(rows)).encode())
    return json_path, md_path

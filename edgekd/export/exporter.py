"""`edgekd export`: checkpoint -> ONNX (FP32, FP16 or INT8; single graph or teacher/student split), verified
against PyTorch on real images and, for reduced precision, gated on test-split accuracy before it is kept."""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from edgekd.artifacts import describe_checkpoint, exported_stem, stamped_fields, write_sidecar
from edgekd.sidecar import Sidecar
from edgekd.calibration import ThresholdRule, score_statistics, thresholds_from_normal
from edgekd.checkpoint import load_checkpoint
from edgekd.data.images import to_model_input
from edgekd.data.layouts import Dataset, load_dataset
from edgekd.data.loading import load_images, load_images_and_masks
from edgekd.data.splits import split_normals
from edgekd.errors import EdgekdError
from edgekd.metrics import compute_metrics
from edgekd.export.onnx_export import FUSED_OP_FORMS, OPSET, export_graphs, set_mask_threshold, set_metadata
from edgekd.export.parity import ParityReport, compare
from edgekd.export.quantize import INT8_TARGETS, STEM_MODES, quantize_int8
from edgekd.outputs import check_output_folder
from edgekd.runtime.onnx_backend import OnnxRuntime
from edgekd.runtime.torch_backend import TorchRuntime

PRECISIONS = ("fp32", "fp16", "int8")
LAYOUTS = ("single", "split")
GATED_METRICS = ("image_auroc", "pixel_auroc", "aupro")


@dataclass
class ExportResult:
    artifact: Path  # the file to hand to eval/predict/build-engine (the detector, or the student of a split)
    files: list[Path]
    parity: ParityReport
    deltas: dict = field(default_factory=dict)  # metric -> points lost versus FP32 (positive = worse)
    refused: bool = False
    data: Path | None = None  # the dataset folder the checks ran on
    int8_stems: dict = field(default_factory=dict)  # INT8: where the stems ran, and the tries that failed first


def default_name(checkpoint: Path) -> str:
    """runs/wood/model.ckpt -> 'wood'; anything else -> the file's stem."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent.name if checkpoint.stem == "model" and checkpoint.parent.name else checkpoint.stem


def dataset_for(payload: dict, data: str | Path | None, category: str | None) -> Dataset:
    """--data when given, else the data the checkpoint was trained on, if it is still on this machine."""
    if data is not None:
        return load_dataset(data, category)
    training = payload.get("training", {})
    if training.get("data") and Path(training["data"]).is_dir():
        return load_dataset(training["data"], training.get("category_arg"))
    if training.get("dataset") and Path(training["dataset"]).is_dir():  # the category folder itself
        return load_dataset(training["dataset"])
    raise EdgekdError("checking the export needs real images and the checkpoint's training data is not here: "
                      "pass --data (and --category)")


def _pick_parity_images(dataset: Dataset, limit: int) -> list:
    """Up to `limit` test images, normal and defective alike, spread across the split."""
    test = dataset.test
    step = max(1, len(test) // limit)
    return test[::step][:limit]


def _calibration_images(dataset: Dataset, count: int, size: tuple[int, int]) -> np.ndarray:
    order = np.random.default_rng(0).permutation(len(dataset.train))[:count]
    return to_model_input(load_images([dataset.train[i] for i in sorted(order)], size))


def _quantize_graphs(graphs: dict[str, Path], calibration: np.ndarray, folder: Path, stem: str, method: str,
                     target: str, float_stems: bool) -> dict[str, Path]:
    if "detector" in graphs:
        return {"detector": quantize_int8(graphs["detector"], folder / f"{stem}.onnx", {"images": calibration}, method,
                                          target=target, float_stems=float_stems)}
    # The student graph is calibrated on what it really receives: the FP32 teacher's features.
    import onnxruntime as ort
    teacher = ort.InferenceSession(str(graphs["teacher"]), providers=["CPUExecutionProvider"])
    names = [o.name for o in teacher.get_outputs()]
    runs = [teacher.run(names, {"images": calibration[i:i + 8]}) for i in range(0, len(calibration), 8)]
    feats = {name: np.concatenate(parts) for name, parts in zip(names, zip(*runs))}
    student_inputs = {i.name for i in ort.InferenceSession(str(graphs["student"]), providers=["CPUExecutionProvider"]).get_inputs()}
    student_feeds = {k: v for k, v in {"images": calibration, **feats}.items() if k in student_inputs}
    return {"teacher": quantize_int8(graphs["teacher"], folder / f"{stem}.teacher.onnx", {"images": calibration}, method,
                                     target=target, float_stems=float_stems),
            "student": quantize_int8(graphs["student"], folder / f"{stem}.student.onnx", student_feeds, method,
                                     target=target, float_stems=float_stems)}


def recalibrate(runtime, dataset: Dataset, payload: dict) -> tuple[dict, dict]:
    """Thresholds and score statistics of `runtime` on the held-out normal images training calibrated on."""
    settings = payload["config"]["train"]
    _, held_out = split_normals(len(dataset.train), settings["val_fraction"], settings["seed"])
    chosen = [dataset.train[i] for i in (held_out if len(held_out) else range(len(dataset.train)))]
    prediction = runtime.infer(load_images(chosen, runtime.input_size))
    rule = ThresholdRule.from_config(payload["config"].get("threshold"))
    return thresholds_from_normal(prediction.scores, prediction.maps, rule), score_statistics(prediction.scores)


def _accuracy_drop(reference, candidate, dataset: Dataset, precision: str, progress) -> dict:
    """Metrics of both on the test split and the points each gated metric lost (positive = worse)."""
    images, masks = load_images_and_masks(dataset.test, reference.input_size, progress, "accuracy check")
    labels = np.array([s.label for s in dataset.test])
    ref_pred, got_pred = reference.infer(images), candidate.infer(images)
    ref = compute_metrics(labels, ref_pred.scores, masks, ref_pred.maps)
    got = compute_metrics(labels, got_pred.scores, masks, got_pred.maps)
    return {"fp32": {k: ref[k] for k in GATED_METRICS}, precision: {k: got[k] for k in GATED_METRICS},
            "drop_points": {k: round(100 * (ref[k] - got[k]), 3) for k in GATED_METRICS},
            "test_images": int(len(labels))}


STAGING_PREFIX = ".export-"


def remove_dead_staging(out_dir: Path) -> None:
    """Staging folders of exports that were killed (their process is gone); a running export's stays."""
    for folder in out_dir.glob(f"{STAGING_PREFIX}*"):
        pid = folder.name[len(STAGING_PREFIX):].split("-", 1)[0]
        if folder.is_dir() and not (pid.isdigit() and _alive(int(pid))):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    return True


def _stamp(graphs: dict[str, Path], info: Sidecar) -> None:
    """The same description in each graph's own metadata and in its sidecar (runtimes compare the two)."""
    for role, path in graphs.items():
        set_metadata(path, {"edgekd_version": info.edgekd_version, "role": role,
                            "normalization": info.input.normalization, **stamped_fields(info)})
        write_sidecar(path, info.replace(role=role))


def _publish(graphs: dict[str, Path], info: Sidecar, staging: Path, out_dir: Path) -> list[Path]:
    """Stamp metadata and sidecars, then move every file out of staging: all of an export appears, or none."""
    _stamp(graphs, info)
    final = []
    for path in sorted(staging.iterdir()):
        path.replace(out_dir / path.name)
        final.append(out_dir / path.name)
    return final


def export_checkpoint(checkpoint: str | Path, precision: str = "fp32", layout: str = "single",
                      out_dir: str | Path = "export", name: str | None = None, data: str | Path | None = None,
                      category: str | None = None, calib_images: int = 64, max_drop: float = 1.0, force: bool = False,
                      parity_images: int = 16, calibration_method: str = "minmax", fused_op: str = "function",
                      int8_for: str = "tensorrt", int8_stems: str = "auto", progress=None) -> ExportResult:
    if precision not in PRECISIONS:
        raise EdgekdError(f"precision '{precision}' is unknown: use one of {', '.join(PRECISIONS)}")
    if layout not in LAYOUTS:
        raise EdgekdError(f"layout '{layout}' is unknown: use one of {', '.join(LAYOUTS)}")
    if int8_for not in INT8_TARGETS:
        raise EdgekdError(f"--int8-for '{int8_for}' is unknown: use one of {', '.join(INT8_TARGETS)}")
    if fused_op not in FUSED_OP_FORMS:
        raise EdgekdError(f"--fused-op '{fused_op}' is unknown: use one of {', '.join(FUSED_OP_FORMS)}")
    if int8_stems not in STEM_MODES:
        raise EdgekdError(f"--int8-stems '{int8_stems}' is unknown: use one of {', '.join(STEM_MODES)}")
    if int8_for != "tensorrt" and precision != "int8":
        raise EdgekdError(f"--int8-for {int8_for} applies to --precision int8 only, and this export is {precision}: "
                          "drop --int8-for or export int8")
    checkpoint = Path(checkpoint)
    out_dir = check_output_folder(out_dir, "--out")
    model, payload = load_checkpoint(checkpoint)
    dataset = dataset_for(payload, data, category)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_dead_staging(out_dir)
    stem = exported_stem(name or default_name(checkpoint), precision, int8_for)
    pixel_threshold = (payload.get("thresholds") or {}).get("pixel")
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=out_dir))
    try:
        if precision == "int8":
            (staging / "fp32").mkdir()
            fp32 = export_graphs(model, pixel_threshold, staging / "fp32", stem, layout, fused_op)
            calibration = _calibration_images(dataset, calib_images, model.input_size)
            tries = ("int8", "float") if int8_stems == "auto" else (int8_stems,)
        else:
            exported = copy.deepcopy(model).networks_to(torch.float16) if precision == "fp16" else model
            graphs = export_graphs(exported, pixel_threshold, staging, stem, layout, fused_op)
            tries = (None,)

        described = describe_checkpoint(payload, checkpoint).replace(
            kind="onnx", precision=precision, layout=layout, opset=OPSET, fused_op=fused_op,
            int8_for=int8_for if precision == "int8" else None,
            outputs=["anomaly_map", "score"] + (["mask"] if pixel_threshold is not None else []))
        failed_tries = []
        reference = TorchRuntime(model, device="cpu")
        parity_images_loaded = load_images(_pick_parity_images(dataset, parity_images), model.input_size)
        for attempt, stems in enumerate(tries):
            last = attempt == len(tries) - 1
            if stems is not None:
                graphs = _quantize_graphs(fp32, calibration, staging, stem, calibration_method, int8_for,
                                          float_stems=stems == "float")
            info = copy.deepcopy(described)
            if stems is not None:
                info.int8_stems = {"mode": int8_stems, "used": stems, "failed_first": failed_tries}
            if layout == "split":
                info.graphs = {role: path.name for role, path in graphs.items()}
            _stamp(graphs, info)
            artifact = graphs.get("detector", graphs.get("student"))
            candidate = OnnxRuntime(artifact)
            parity = compare(reference, candidate, parity_images_loaded, precision)
            info.parity = parity.to_dict()
            if not parity.passed:
                if not last:  # INT8 stems out of tolerance: try again with them in float
                    failed_tries.append({"stems": stems, "failed": f"parity ({parity.summary()})"})
                    continue
                raise EdgekdError(f"{precision} export of {checkpoint} failed parity against PyTorch "
                                  f"({parity.summary()}; limits {parity.limits}): nothing was written")

            deltas, refused = {}, False
            if precision != "fp32":
                # Reduced precision shifts the score scale a little (INT8 more): thresholds from FP32 would be
                # wrong, so calibrate again on the held-out normal images that training calibrated on.
                thresholds, stats = recalibrate(candidate, dataset, payload)
                info.thresholds_fp32, info.thresholds = info.thresholds, thresholds
                info.score_stats_fp32, info.score_stats = info.score_stats, stats
                candidate.thresholds = thresholds
                if "mask" in info.outputs:
                    set_mask_threshold(artifact, thresholds["pixel"])
                info.accuracy = {**_accuracy_drop(reference, candidate, dataset, precision, progress),
                                 "max_drop": max_drop}
                deltas = info.accuracy["drop_points"]
                refused = any(d > max_drop for d in deltas.values() if np.isfinite(d))
                if refused and not last:
                    failed_tries.append({"stems": stems, "failed": "accuracy gate", "drop_points": deltas})
                    continue
                if refused and not force:
                    worst = max(deltas, key=lambda k: deltas[k])
                    raise EdgekdError(f"{precision} export refused: {worst} drops {deltas[worst]:.2f} points versus "
                                      f"FP32 (limit --max-drop {max_drop}; all drops {deltas}): pass --force to keep "
                                      "it anyway")
            break
        shutil.rmtree(staging / "fp32", ignore_errors=True)
        info.forced = bool(refused and force)
        final = _publish(graphs, info, staging, out_dir)
        return ExportResult(out_dir / artifact.name, final, parity, deltas, refused, dataset.root,
                            info.int8_stems or {})
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()  # a refused or failed export leaves no empty folder behind

"""The sidecar JSON next to every exported artifact (ONNX graph, TensorRT engine): THE schema of what a
runtime needs to know about a model that left PyTorch, read back with clear errors."""

from __future__ import annotations

import json
import time
from pathlib import Path

from edgekd import __version__
from edgekd.backbones.weights import sha256_of
from edgekd.atomic import write_bytes_atomic
from edgekd.errors import EdgekdError

SIDECAR_FORMAT = "edgekd-artifact"
SIDECAR_VERSION = 1
INPUT_NAME = "images"
OUTPUT_NAMES = ("anomaly_map", "score", "mask")


def sidecar_path(artifact: str | Path) -> Path:
    return Path(artifact).with_suffix(".json")


def describe_checkpoint(payload: dict, checkpoint: str | Path) -> dict:
    """The fields every artifact made from this checkpoint shares."""
    h, w = payload["input_size"]
    return {
        "format": SIDECAR_FORMAT, "format_version": SIDECAR_VERSION, "edgekd_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "model": payload["model"],
        "teacher": payload["teacher"]["name"],
        "input": {"name": INPUT_NAME, "shape": ["batch", 3, h, w], "dtype": "float32", "color": "RGB",
                  "range": [0.0, 1.0], "layout": "NCHW", "normalization": {**payload["normalization"], "in_graph": True}},
        "input_size": [h, w],
        "thresholds": payload.get("thresholds"), "score_stats": payload.get("score_stats"),
        "scoring": payload["config"]["scoring"],
        "source_checkpoint": {"path": str(checkpoint), "sha256": sha256_of(checkpoint)},
        "category": payload.get("training", {}).get("category"),
        "dataset": payload.get("training", {}).get("dataset"),
    }


def write_sidecar(artifact: str | Path, info: dict) -> Path:
    path = sidecar_path(artifact)
    write_bytes_atomic(path, json.dumps(info, indent=2, default=float).encode())
    return path


def read_sidecar(artifact: str | Path) -> dict:
    path = sidecar_path(artifact)
    if not path.is_file():
        raise EdgekdError(f"{artifact} has no sidecar {path}: re-export it with 'edgekd export' (the sidecar holds "
                          "its input size, normalisation and thresholds)")
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EdgekdError(f"sidecar {path} is not valid JSON ({exc.__class__.__name__}): re-export the artifact") from None
    if not isinstance(info, dict) or info.get("format") != SIDECAR_FORMAT:
        raise EdgekdError(f"{path} is not an edgekd sidecar: re-export the artifact with 'edgekd export'")
    if info.get("format_version", 0) > SIDECAR_VERSION:
        raise EdgekdError(f"sidecar {path} is newer than this edgekd ({__version__}) understands: upgrade edgekd")
    return info

"""The checkpoint: everything needed to rebuild and run a detector, written atomically, read defensively."""

from __future__ import annotations

import io
import pickle
import re
import time
from pathlib import Path

import numpy as np
import torch

from edgekd import __version__
from edgekd.backbones import build_teacher
from edgekd.atomic import write_bytes_atomic
from edgekd.errors import EdgekdError
from edgekd.models import AnomalyModel, model_class
from edgekd.scoring import ScoringConfig

FORMAT = "edgekd-checkpoint"
FORMAT_VERSION = 1


def build_model(config: dict, pretrained_teacher: bool = True) -> AnomalyModel:
    """A detector from a config: the registry picks the family, the teacher comes from the backbone table."""
    cls = model_class(config["model"])  # unknown names fail here, before any weights are read
    size = config["input_size"]
    size = (size, size) if isinstance(size, int) else tuple(size)
    teacher = build_teacher(config["teacher"], config.get("teacher_weights"), pretrained=pretrained_teacher,
                            input_size=size)
    try:
        model = cls(teacher, size, ScoringConfig.from_dict(config["scoring"]), **config.get("model_options", {}))
    except (TypeError, ValueError, RuntimeError) as exc:  # e.g. a width of 0 or a string where a number goes
        raise EdgekdError(f"model_options for '{config['model']}' are invalid: {str(exc).splitlines()[0]}") from None
    model.check_fixed_weights()
    return model


def save_checkpoint(path: str | Path, model: AnomalyModel, config: dict, **extra) -> Path:
    payload = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "edgekd_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "model": config["model"], "model_revision": model.revision,
        "config": config,
        "teacher": {"name": model.teacher.name, "weights_sha256": model.teacher.weights_sha256},
        "input_size": list(model.input_size),
        "normalization": {"color": "RGB", "scale": 1 / 255, "mean": list(model.teacher.mean), "std": list(model.teacher.std)},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }
    _write_payload(path, payload)
    return Path(path)


def _plain(value, where: str = "checkpoint"):
    """The payload as tensors and plain values only, what read_checkpoint's safe loader accepts (numpy numbers
    become Python ones); anything else is a bug caught at save time, not a checkpoint nobody can read."""
    if isinstance(value, dict):
        return type(value)((k, _plain(v, f"{where}.{k}")) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v, where) for v in value)
    if value is None or isinstance(value, (str, bool, int, float, torch.Tensor)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{where} holds a {type(value).__name__}, which checkpoints do not store")


def _write_payload(path: str | Path, payload: dict) -> None:
    buffer = io.BytesIO()
    torch.save(_plain(payload), buffer)
    write_bytes_atomic(path, buffer.getvalue())


def read_checkpoint(path: str | Path, resume: bool = False) -> dict:
    """resume=True reads a training run's last.ckpt (what --resume continues from); everything else wants the
    finished model.ckpt and says so when handed a resume checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise EdgekdError(f"checkpoint {path} does not exist: train one with 'edgekd train' or fix the path")
    try:
        # weights_only: tensors and plain values only; a pickle that would import or call anything is refused
        # before it runs (a checkpoint is data, never code)
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        needs = re.search(r"GLOBAL ([\w.]+)|global ([\w.]+)", str(exc))
        what = next((g for g in needs.groups() if g), "code") if needs else "code"
        raise EdgekdError(f"checkpoint {path} refused: loading it would run {what}, and edgekd loads only tensors and "
                          "plain values (a checkpoint from 'edgekd train' never needs more): do not use this file; "
                          "re-train or get the model from its source") from None
    except Exception as exc:
        raise EdgekdError(f"checkpoint {path} is truncated or corrupt ({exc.__class__.__name__}): "
                          "copy it again or re-run 'edgekd train'") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise EdgekdError(f"{path} is not an edgekd checkpoint: pass the model.ckpt written by 'edgekd train'")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise EdgekdError(f"checkpoint {path} has format version {payload['format_version']}, newer than this "
                          f"edgekd ({__version__}) reads: upgrade edgekd")
    _check_revision(payload, path)
    if not resume and "optimizer" in payload and "training" not in payload:
        raise EdgekdError(f"{path} is a resume checkpoint (epoch {payload.get('epoch')}, what 'edgekd train --resume' "
                          f"continues from), not a finished model: use {path.with_name('model.ckpt')}")
    return payload


def _check_revision(payload: dict, path: Path) -> None:
    """A checkpoint of a family whose method has changed since it was trained cannot be read the new way."""
    try:
        cls = model_class(payload.get("model", ""))
    except EdgekdError:
        return  # an unknown family fails with its own message when the model is built
    stored = payload.get("model_revision", 1)
    if stored != cls.revision:
        raise EdgekdError(f"checkpoint {path} holds a '{cls.family}' model of revision {stored}; this edgekd "
                          f"({__version__}) builds revision {cls.revision} ({cls.revision_note}): re-train it with "
                          "'edgekd train'")


def load_checkpoint(path: str | Path) -> tuple[AnomalyModel, dict]:
    payload = read_checkpoint(path)
    model = build_model(payload["config"], pretrained_teacher=False)
    try:
        result = model.load_state_dict(payload["state_dict"], strict=False)
        bad = (result.missing_keys + result.unexpected_keys)[:3]
    except RuntimeError as exc:  # same names, different shapes
        bad = [line.strip() for line in str(exc).splitlines()[1:2]]
    if bad:
        raise EdgekdError(f"checkpoint {path} does not match model '{payload['model']}' of this edgekd "
                          f"(mismatched tensors {', '.join(bad)}): re-train with this version")
    return model.eval(), payload


def update_checkpoint(path: str | Path, **fields) -> None:
    """Rewrite selected top-level fields (e.g. thresholds) of a checkpoint, atomically."""
    payload = read_checkpoint(path)
    payload.update(fields)
    _write_payload(path, payload)

"""Run configuration: YAML file + `--set key.sub=value` overrides, validated against the defaults below."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from edgekd.errors import EdgekdError

DEFAULTS: dict = {
    "model": "rd",
    "teacher": "efficientnet_lite0",
    "teacher_weights": None,  # explicit weights file; otherwise the offline wheel / torch hub cache
    "input_size": 256,
    "model_options": {},  # family-specific constructor arguments
    "scoring": {"combine": "add", "weights": None, "sigma": 4.0, "score": "max", "topk": 100, "eps": 1e-8},
    "train": {
        "epochs": 30, "batch_size": 16, "optimizer": "adam", "lr": 0.005, "betas": [0.5, 0.999], "momentum": 0.9,
        "weight_decay": 0.0, "warmup_epochs": 0.0, "grad_clip": None,
        "augment": "none",  # none, or camera: codec, blur, noise and light drift (edgekd/data/augment.py)
        "val_fraction": 0.1, "seed": 0, "device": "auto", "amp": True, "feature_cache_gb": 4.0,
    },
    "threshold": {"method": "robust", "quantile": 0.99, "margin": 3.0},
}
_FREE_FORM = {"model_options"}  # validated by the model family itself


def _merge(base: dict, update: dict, path: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        where = f"{path}{key}"
        if key not in base and path.rstrip(".") not in _FREE_FORM:
            raise EdgekdError(f"unknown config key '{where}': valid keys here are {', '.join(base)}")
        if isinstance(base.get(key), dict) and key not in _FREE_FORM:
            if not isinstance(value, dict):
                raise EdgekdError(f"config key '{where}' must be a mapping")
            out[key] = _merge(base[key], value, where + ".")
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[list[str], object]:
    if "=" not in text:
        raise EdgekdError(f"override '{text}' is not KEY=VALUE (e.g. --set train.epochs=5)")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> dict:
    config = copy.deepcopy(DEFAULTS)
    if path:
        path = Path(path)
        if not path.is_file():
            raise EdgekdError(f"config file {path} does not exist: see configs/ for examples")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise EdgekdError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(loaded, dict):
            raise EdgekdError(f"config file {path} must be a YAML mapping at the top level")
        config = _merge(config, loaded)
    for text in overrides or []:
        keys, value = parse_override(text)
        nested: dict = value
        for key in reversed(keys):
            nested = {key: nested}
        config = _merge(config, nested)
    return config

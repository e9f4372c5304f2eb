"""The edgekd facts a Triton model carries as config parameters: one definition, written by `edgekd
export-triton` and `edgekd serve`, read back by `edgekd run --server`."""

from __future__ import annotations

import json

REQUIRED = ("edgekd_input_size", "edgekd_image_threshold", "edgekd_pixel_threshold")


def model_parameters(model: str, input_size, thresholds: dict | None, **extra: str) -> dict[str, str]:
    """Triton parameters (all strings) for an edgekd model; `extra` adds edgekd_<key> entries."""
    thresholds = thresholds or {}
    return {"edgekd_model": str(model), "edgekd_input_size": json.dumps([int(s) for s in input_size]),
            "edgekd_image_threshold": json.dumps(thresholds.get("image")),
            "edgekd_pixel_threshold": json.dumps(thresholds.get("pixel")),
            **{f"edgekd_{key}": value for key, value in extra.items()}}


def read_parameters(params: dict[str, str]) -> dict:
    """Model, input size and thresholds from the parameters; callers check REQUIRED first."""
    return {"model": params.get("edgekd_model"), "input_size": json.loads(params["edgekd_input_size"]),
            "thresholds": {"image": json.loads(params["edgekd_image_threshold"]),
                           "pixel": json.loads(params["edgekd_pixel_threshold"])}}

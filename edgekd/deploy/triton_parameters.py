"""The edgekd facts a Triton model carries as config parameters: one definition, written by `edgekd
export-triton` and `edgekd serve`, read back by `edgekd run --server`."""

from __future__ import annotations

import json
import re

from edgekd.calibration import check_thresholds
from edgekd.errors import EdgekdError
from edgekd.sidecar import Sidecar

REQUIRED = ("edgekd_input_size", "edgekd_image_threshold", "edgekd_pixel_threshold")


def model_parameters(model: str, input_size, thresholds: dict | None, **extra: str) -> dict[str, str]:
    """Triton parameters (all strings) for an edgekd model; `extra` adds edgekd_<key> entries. Thresholds are
    checked finite here, where they are written: a stock server compares with them as they are."""
    thresholds = check_thresholds(thresholds, str(model))
    return {"edgekd_model": str(model), "edgekd_input_size": json.dumps([int(s) for s in input_size]),
            "edgekd_image_threshold": json.dumps(thresholds.get("image")),
            "edgekd_pixel_threshold": json.dumps(thresholds.get("pixel")),
            **{f"edgekd_{key}": value for key, value in extra.items()}}


def read_parameters(params: dict[str, str]) -> Sidecar:
    """Model, input size and thresholds from the parameters, as a served model's description; callers check
    REQUIRED first."""
    return Sidecar(model=params.get("edgekd_model"), input_size=tuple(json.loads(params["edgekd_input_size"])),
                   kind="triton", thresholds={"image": json.loads(params["edgekd_image_threshold"]),
                                              "pixel": json.loads(params["edgekd_pixel_threshold"])})


# A model name is a folder of the repository and a quoted string in config.pbtxt: letters, digits, '_' and '-' only
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def check_model_name(name: str, option: str = "--name") -> str:
    if not MODEL_NAME.fullmatch(name or ""):
        raise EdgekdError(f"{option} {name!r} is not a Triton model name: use 1-64 letters, digits, '_' and '-', "
                          "starting with a letter or digit (it becomes a folder of the repository)")
    return name


# The API key of a Triton started with restricted APIs (`edgekd serve --api-key-file`): the header it checks.
API_KEY_HEADER = "edgekd-api-key"


def api_key_headers(scheme: str, api_key: str | None) -> dict[str, str] | None:
    """What a client sends: Triton's gRPC endpoint reads the key from 'triton-grpc-protocol-<header>' metadata."""
    if not api_key:
        return None
    return {(f"triton-grpc-protocol-{API_KEY_HEADER}" if scheme == "grpc" else API_KEY_HEADER): api_key}

"""The sidecar: what a runtime needs to know about a model that left PyTorch (input, normalisation, thresholds, how
it was made), as one typed record with a schema version. `Sidecar.from_dict` is the one place a sidecar's JSON is
validated; every reader gets attributes, never raw keys. Runtimes describe the model they run with the same record
(a checkpoint's or a Triton model's description has the same shape, with fewer fields filled).

Schema versions: 1 (every sidecar written since the first export). A field added later gets a default here, so an
older sidecar loads; a sidecar from a newer edgekd is refused with the fix (upgrade). Keys this version does not know
are kept in `extra` and written back, so a rewrite (calibrate) never drops what a newer minor writer added."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

from edgekd import __version__
from edgekd.errors import EdgekdError

SIDECAR_FORMAT = "edgekd-artifact"
SCHEMA_VERSION = 1
INPUT_NAME = "images"
PRECISIONS = ("fp32", "fp16", "int8")
LAYOUTS = ("single", "split")
ROLES = ("detector", "teacher", "student")


@dataclass
class InputSpec:
    """The graph's input: RGB in [0, 1], NCHW; normalisation happens inside the graph."""
    shape: list
    normalization: dict
    name: str = INPUT_NAME
    dtype: str = "float32"
    color: str = "RGB"
    range: list = field(default_factory=lambda: [0.0, 1.0])
    layout: str = "NCHW"


@dataclass
class Sidecar:
    model: str | None  # the family (rd, afkd, ...); None only for a server's model that does not say
    input_size: tuple[int, int]
    kind: str = "onnx"  # checkpoint, onnx, engine (edgekd/artifact_kinds.py)
    format_version: int = SCHEMA_VERSION
    edgekd_version: str = __version__
    created: str = ""
    teacher: str | None = None
    input: InputSpec | None = None
    thresholds: dict | None = None  # {"image", "pixel", ...}: checked on every use (calibration.check_thresholds)
    score_stats: dict | None = None
    scoring: dict | None = None
    source_checkpoint: dict | None = None  # {"path", "sha256"}
    category: str | None = None
    dataset: str | None = None
    precision: str = "fp32"
    layout: str = "single"
    role: str = "detector"
    # how the ONNX graph was made
    opset: int | None = None
    fused_op: str | None = None
    int8_for: str | None = None
    outputs: list | None = None
    graphs: dict | None = None  # split layout: role -> file name beside this one
    int8_stems: dict | None = None
    parity: dict | None = None
    accuracy: dict | None = None
    forced: bool = False
    thresholds_fp32: dict | None = None
    score_stats_fp32: dict | None = None
    thresholds_history: list = field(default_factory=list)
    # how the engine was built
    engine_sha256: str | None = None
    onnx: dict | None = None  # {"path", "sha256"} of the graph it was built from
    tensorrt: dict | None = None  # {"flavour", "version", "strongly_typed"}
    built_on_gpu: dict | None = None
    dla_core: int | None = None
    profile: dict | None = None
    network: dict | None = None
    build_seconds: float | None = None
    workspace_gb: float | None = None
    timing_cache: str | None = None
    extra: dict = field(default_factory=dict)  # keys a newer minor writer added: kept, never read
    artifact: str | None = field(default=None, compare=False)  # where it was read from (not written)

    @property
    def label(self) -> str:
        return self.artifact or "this model"

    @property
    def source_sha256(self) -> str | None:
        return (self.source_checkpoint or {}).get("sha256")

    @property
    def max_batch(self) -> int | None:
        """An engine's largest batch (its optimisation profile); None for a graph with a dynamic batch."""
        batch = (self.profile or {}).get("batch", {})
        return int(batch["max"]) if "max" in batch else None

    @property
    def is_single_graph(self) -> bool:
        return self.layout == "single" and self.role == "detector"

    def replace(self, **changes) -> "Sidecar":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """The JSON written beside the artifact (the format key first, as readers outside edgekd expect)."""
        out = {"format": SIDECAR_FORMAT}
        for item in dataclasses.fields(self):
            if item.name in ("extra", "artifact"):
                continue
            value = getattr(self, item.name)
            out[item.name] = dataclasses.asdict(value) if isinstance(value, InputSpec) else value
        out["input_size"] = list(self.input_size)
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, raw: object, where: str, fix: str) -> "Sidecar":
        """Validate a sidecar's JSON: one line naming the first thing wrong and `fix`."""
        if not isinstance(raw, dict) or raw.get("format") != SIDECAR_FORMAT:
            raise EdgekdError(f"{where} is not an edgekd sidecar: {fix}")
        version = raw.get("format_version", 1)
        if not isinstance(version, int) or version < 1:
            raise EdgekdError(f"sidecar {where} has format_version {version!r}, which no edgekd writes: {fix}")
        if version > SCHEMA_VERSION:
            raise EdgekdError(f"sidecar {where} is schema {version}, newer than this edgekd ({__version__}, schema "
                              f"{SCHEMA_VERSION}) understands: upgrade edgekd")
        known = {item.name for item in dataclasses.fields(cls)} - {"extra", "artifact"}
        values = {key: value for key, value in raw.items() if key in known}
        extra = {key: value for key, value in raw.items() if key not in known and key != "format"}
        for key in ("model", "input_size", "input"):
            if key not in values:
                raise EdgekdError(f"sidecar {where} lacks '{key}', which every edgekd sidecar has: {fix}")
        for key, value in values.items():
            _check_field(key, value, where, fix)
        size = values["input_size"]
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
            raise EdgekdError(f"sidecar {where} has input_size {size!r}, not [height, width]: {fix}")
        try:
            spec = InputSpec(**values["input"])
        except TypeError:
            raise EdgekdError(f"sidecar {where} has an 'input' that is not the graph's input description: "
                              f"{fix}") from None
        if values.get("layout") == "split" and not values.get("graphs"):
            raise EdgekdError(f"sidecar {where} describes a split export without its 'graphs': {fix}")
        return cls(**{**values, "input": spec, "input_size": tuple(size)}, extra=extra)


# The JSON type of each field that has one to check (None is allowed for every optional field).
_TYPES = {"model": str, "teacher": str, "kind": str, "edgekd_version": str, "created": str, "input": dict,
          "thresholds": dict, "score_stats": dict, "scoring": dict, "source_checkpoint": dict, "category": str,
          "dataset": str, "precision": str, "layout": str, "role": str, "opset": int, "fused_op": str,
          "int8_for": str, "outputs": list, "graphs": dict, "int8_stems": dict, "parity": dict, "accuracy": dict,
          "forced": bool, "thresholds_fp32": dict, "score_stats_fp32": dict, "thresholds_history": list,
          "engine_sha256": str, "onnx": dict, "tensorrt": dict, "built_on_gpu": dict, "dla_core": int,
          "profile": dict, "network": dict, "build_seconds": (int, float), "workspace_gb": (int, float),
          "timing_cache": str}
_CHOICES = {"precision": PRECISIONS, "layout": LAYOUTS, "role": ROLES}


def _check_field(key: str, value: object, where: str, fix: str) -> None:
    expected = _TYPES.get(key)
    if value is None or expected is None:
        return
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise EdgekdError(f"sidecar {where} has {key} {value!r} of the wrong type: {fix}")
    if key in _CHOICES and value not in _CHOICES[key]:
        raise EdgekdError(f"sidecar {where} has {key} '{value}', not one of {', '.join(_CHOICES[key])}: {fix}")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")

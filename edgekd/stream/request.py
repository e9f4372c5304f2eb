"""`edgekd run` as one request: every option of the command line, also readable from a YAML line file
(`edgekd run --config line.yaml`, what the Jetson service runs). Command-line flags override the file; every value
passes the same validator as a training config (edgekd/config.py)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path

from edgekd.config import Rule, check_value, read_yaml_file
from edgekd.errors import EdgekdError
from edgekd.sinks.spooled import EVERY
from edgekd.stream.parts import TRIGGERS


@dataclass(frozen=True)
class RunRequest:
    model: str | None = None  # an artifact, or with `server` the model's name there
    bundle: Path | None = None
    server: str | None = None
    server_key_file: Path | None = None
    camera: int | None = None
    source: str | None = None
    backend: str | None = None
    device: str = "auto"
    show: bool = False
    save_video: Path | None = None
    save_masks: Path | None = None
    jsonl: Path | None = None
    threshold: float | None = None
    pixel_threshold: float | None = None
    min_area: int = 0
    hysteresis: str = "1,1"
    mm_per_px: str | None = None  # a number or MMmm=PXpx: edgekd/region_sizes.py parses it
    reject_if: str | None = None  # a size rule: edgekd/stream/reject.py parses it
    batch: int = 8
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    realtime: bool = False
    loop: bool = False
    serve: str | None = None
    token_file: Path | None = None
    token: str | None = None
    max_frames: int | None = None
    stats_every: float = 5.0
    reconnect_timeout: float = 0.0
    truth: Path | None = None
    # line outputs (edgekd/sinks/mqtt.py, webhook.py) and the event store (edgekd/events/)
    mqtt: str | None = None
    mqtt_every: str = "frame"
    mqtt_qos: int = 1
    mqtt_ca: Path | None = None
    mqtt_cert: Path | None = None
    mqtt_key: Path | None = None
    mqtt_auth_file: Path | None = None
    opcua: str | None = None
    opcua_auth_file: Path | None = None
    webhook: str | None = None
    webhook_every: str = "defect"
    webhook_token_file: Path | None = None
    spool: Path = Path("edgekd-spool")
    spool_limit: int = 100_000
    events: Path | None = None
    events_keep_days: float | None = None
    events_max_mb: float | None = None
    max_latency_ms: float | None = None
    part_frames: int | None = None
    part_defects: int = 1
    part_trigger: str | None = None

    @classmethod
    def build(cls, line_file: Path | None, given: dict) -> "RunRequest":
        """The defaults, then the line file's values, then the options given on the command line."""
        values, where = {}, {}
        if line_file is not None:
            loaded = read_yaml_file(line_file, "line file", "write one with a key per 'edgekd run' option, e.g. "
                                               "'model: export/wood.fp16.onnx' and 'camera: 0'")
            for key, value in loaded.items():
                name = str(key).replace("-", "_")
                if name not in RULES:
                    raise EdgekdError(f"line file {line_file}: '{key}' is not an option of 'edgekd run': valid keys "
                                      f"are {', '.join(sorted(RULES))}")
                # YAML reads `serve: 8080`, `source: 0` or `mm_per_px: 0.05` as numbers; the option takes the text
                values[name] = str(value) if RULES[name].kind == "str" and type(value) in (int, float) else value
                where[name] = f"line file {line_file}: {name}="
        for name, value in given.items():
            if name in RULES:
                values[name] = str(value) if isinstance(value, Path) else value
                where[name] = f"--{name.replace('_', '-')} "
        return cls(**{name: _convert(name, _checked(name, value, where[name])) for name, value in values.items()})

    def replace(self, **changes) -> "RunRequest":
        return dataclasses.replace(self, **changes)


PATHS = frozenset({"bundle", "server_key_file", "save_video", "save_masks", "jsonl", "token_file", "truth", "mqtt_ca",
                   "mqtt_cert", "mqtt_key", "mqtt_auth_file", "webhook_token_file", "spool", "events",
                   "opcua_auth_file"})
RULES: dict[str, Rule] = {
    "model": Rule("str", nullable=True), "bundle": Rule("str", nullable=True), "server": Rule("str", nullable=True),
    "server_key_file": Rule("str", nullable=True), "camera": Rule("int", 0, 1 << 16, nullable=True),
    "source": Rule("str", nullable=True), "backend": Rule("str", choices=("torch", "onnxruntime", "tensorrt"),
                                                          nullable=True),
    "device": Rule("str"), "show": Rule("bool"), "save_video": Rule("str", nullable=True),
    "save_masks": Rule("str", nullable=True), "jsonl": Rule("str", nullable=True),
    "threshold": Rule("float", nullable=True), "pixel_threshold": Rule("float", nullable=True),
    "min_area": Rule("int", 0, 1 << 40), "hysteresis": Rule("str"), "batch": Rule("int", 1, 4096),
    "mm_per_px": Rule("str", nullable=True), "reject_if": Rule("str", nullable=True),
    # capture settings: run_stream says what a non-positive one means
    "width": Rule("int", nullable=True), "height": Rule("int", nullable=True), "fps": Rule("float", nullable=True), "realtime": Rule("bool"), "loop": Rule("bool"),
    "serve": Rule("str", nullable=True), "token_file": Rule("str", nullable=True), "token": Rule("str", nullable=True),
    "max_frames": Rule("int", 1, 1 << 62, nullable=True), "stats_every": Rule("float", 0, 86_400),
    "reconnect_timeout": Rule("float", 0, 1 << 30), "truth": Rule("str", nullable=True),
    "mqtt": Rule("str", nullable=True), "mqtt_every": Rule("str", choices=EVERY), "mqtt_qos": Rule("int", 0, 2),
    "mqtt_ca": Rule("str", nullable=True), "mqtt_cert": Rule("str", nullable=True),
    "mqtt_key": Rule("str", nullable=True),
    "mqtt_auth_file": Rule("str", nullable=True), "webhook": Rule("str", nullable=True),
    "opcua": Rule("str", nullable=True), "opcua_auth_file": Rule("str", nullable=True),
    "webhook_every": Rule("str", choices=EVERY), "webhook_token_file": Rule("str", nullable=True),
    "spool": Rule("str"), "spool_limit": Rule("int", 1, 1 << 40), "events": Rule("str", nullable=True),
    "events_keep_days": Rule("float", nullable=True), "events_max_mb": Rule("float", nullable=True),
    "max_latency_ms": Rule("float", 0, 3_600_000, nullable=True),
    "part_frames": Rule("int", 1, 1 << 30, nullable=True), "part_defects": Rule("int", 1, 1 << 30),
    "part_trigger": Rule("str", choices=TRIGGERS, nullable=True),
}
assert set(RULES) == {f.name for f in fields(RunRequest)}, "every run option has one rule"


def _checked(name: str, value, where: str):
    """The config validator's verdict, naming the value as the user gave it (an option, or a key of the file)."""
    try:
        return check_value(name, value, RULES[name])
    except EdgekdError as exc:
        raise EdgekdError(str(exc).replace(f"config value {name}=", where, 1)) from None


def _convert(name: str, value):
    if value is None:
        return None
    if name in PATHS:
        return Path(value)
    if name == "serve" and isinstance(value, int):
        return str(value)
    return value

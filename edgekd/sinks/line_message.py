"""THE message a line output sends about a frame (MQTT, webhook, the event store's rows): the frame's event as the
JSONL has it, plus which model judged it and which camera saw it. One definition, so a PLC, a webhook receiver and
`edgekd events` agree field by field with the JSONL."""

from __future__ import annotations

import json

from edgekd.sinks.base import Result


def line_message(result: Result, names: dict) -> dict:
    return {**result.event(), "model": names.get("model"), "camera": names.get("source")}


def encode(message: dict) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def is_part(message: dict) -> bool:
    """A part's verdict (edgekd/stream/parts.py Part.message) rather than a frame's."""
    return "first_frame" in message


def captured_at(payload: bytes) -> float | None:
    """The capture time (Unix seconds) of an encoded message, for the age it reaches its receiver at."""
    try:
        return float(json.loads(payload)["time"])
    except (ValueError, KeyError, TypeError):
        return None

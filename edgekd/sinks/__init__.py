"""The outputs of `edgekd run`, in one table: a new output is one Sink class plus one row here. Each row names the
`edgekd run` option (a RunRequest field) that asks for it, what is done before the model loads (its place checked,
a port bound: `prepare`, given the whole request, returns what `build` gets) and how it is built once the source is
open and the thresholds are known. A sink that lives above this package (the dashboard, which draws with Result and
annotate from here) is named by "module:function", imported when asked for, as artifact kinds name their runtimes."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgekd.named import resolve
from edgekd.outputs import check_output_file, check_output_folder
from edgekd.sinks.base import Region, Result, Sink, annotate
from edgekd.sinks.files import VIDEO_OUT_SUFFIXES, JsonlSink, MaskSink, VideoSink
from edgekd.sinks.window import WindowSink


@dataclass(frozen=True)
class SinkContext:
    """What a sink may need from the run it joins."""
    fps: float  # the source's frame rate (a video sink writes at it)
    stop: Callable[[str], None]  # ask the run to stop, with the reason
    thresholds: Any = None  # the run's Thresholds (edgekd/calibration.py)
    colour_range: tuple[float, float] = (0.0, 1.0)  # the heatmap's scale, so every picture matches the video
    stats: Callable[[], dict | None] = lambda: None  # the run's counters now
    names: dict = field(default_factory=dict)  # model, source, backend: what to call them
    log: Callable[[str], None] = lambda text: None
    parts: Any = None  # the run's PartGrouper (edgekd/stream/parts.py): a trigger output tells it a part starts


Ref = Callable | str  # a callable, or "module:function" for a sink above this package


@dataclass(frozen=True)
class SinkKind:
    option: str  # the RunRequest field (and `edgekd run --option`) that asks for this sink
    prepare: Ref  # (request) -> what build gets; before the model loads: checks its place, binds its port
    build: Ref  # (prepared, SinkContext) -> Sink


def _call(ref: Ref, *args):
    return (resolve(ref) if isinstance(ref, str) else ref)(*args)


SINKS: tuple[SinkKind, ...] = (
    SinkKind("jsonl", lambda r: check_output_file(r.jsonl, "--jsonl"), lambda path, _: JsonlSink(Path(path))),
    SinkKind("save_masks", lambda r: check_output_folder(r.save_masks, "--save-masks"),
             lambda path, _: MaskSink(Path(path))),
    SinkKind("save_video", lambda r: check_output_file(r.save_video, "--save-video", VIDEO_OUT_SUFFIXES),
             lambda path, run: VideoSink(Path(path), run.fps)),
    SinkKind("show", lambda r: WindowSink.check_display(),
             lambda _, run: WindowSink(lambda: run.stop("window closed"))),
    SinkKind("serve", "edgekd.dashboard.sink:prepare", "edgekd.dashboard.sink:build"),
    # the line's outputs: imported when asked for (paho-mqtt only then)
    SinkKind("mqtt", "edgekd.sinks.mqtt:prepare", "edgekd.sinks.mqtt:build"),
    SinkKind("webhook", "edgekd.sinks.webhook:prepare", "edgekd.sinks.webhook:build"),
    SinkKind("opcua", "edgekd.sinks.opcua:prepare", "edgekd.sinks.opcua:build"),
    SinkKind("events", "edgekd.events.sink:prepare", "edgekd.events.sink:build"),
)


def requested(request) -> list[SinkKind]:
    return [kind for kind in SINKS if getattr(request, kind.option) not in (None, False, "")]


def prepare_sinks(request, cleanup: ExitStack) -> list[tuple[SinkKind, Any]]:
    """Each requested sink's preparation, before the model loads; what holds a resource (a bound port) is closed by
    `cleanup` when the run ends or fails."""
    prepared = []
    for kind in requested(request):
        value = _call(kind.prepare, request)
        if hasattr(value, "close"):
            cleanup.callback(value.close)
        prepared.append((kind, value))
    return prepared


def build_sinks(prepared: list[tuple[SinkKind, Any]], context: SinkContext) -> list[Sink]:
    """Every prepared sink, built; if one cannot be, the ones already built are closed."""
    sinks: list[Sink] = []
    try:
        for kind, value in prepared:
            sinks.append(_call(kind.build, value, context))
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    return sinks


__all__ = ["SINKS", "Region", "Result", "Sink", "SinkContext", "SinkKind", "annotate", "build_sinks",
           "prepare_sinks", "VIDEO_OUT_SUFFIXES", "JsonlSink", "MaskSink", "VideoSink", "WindowSink"]

"""The outputs of `edgekd run`, in one table: a new output is one Sink class plus one row here. Each row names the
`edgekd run` option (a RunRequest field) that asks for it, the check of its place made before the model loads, and
how it is built once the source is open. The dashboard (`--serve`) is a sink too (edgekd/dashboard/board.py); it is
bound before the model loads and attached to the runner, so `edgekd run` wires it itself."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from edgekd.outputs import check_output_file, check_output_folder
from edgekd.sinks.base import Region, Result, Sink, annotate
from edgekd.sinks.files import VIDEO_OUT_SUFFIXES, JsonlSink, MaskSink, VideoSink
from edgekd.sinks.window import WindowSink


@dataclass(frozen=True)
class SinkContext:
    """What a sink may need from the run it joins."""
    fps: float  # the source's frame rate (a video sink writes at it)
    stop: Callable[[str], None]  # ask the run to stop, with the reason


@dataclass(frozen=True)
class SinkKind:
    option: str  # the RunRequest field (and `edgekd run --option`) that asks for this sink
    check: Callable[[Any], None]  # its place or its needs, checked before the model loads
    build: Callable[[Any, SinkContext], Sink]


SINKS: tuple[SinkKind, ...] = (
    SinkKind("jsonl", lambda path: check_output_file(path, "--jsonl"), lambda path, _: JsonlSink(Path(path))),
    SinkKind("save_masks", lambda path: check_output_folder(path, "--save-masks"), lambda path, _: MaskSink(Path(path))),
    SinkKind("save_video", lambda path: check_output_file(path, "--save-video", VIDEO_OUT_SUFFIXES),
             lambda path, run: VideoSink(Path(path), run.fps)),
    SinkKind("show", lambda _: WindowSink.check_display(), lambda _, run: WindowSink(lambda: run.stop("window closed"))),
)


def requested(request) -> list[tuple[SinkKind, Any]]:
    return [(kind, getattr(request, kind.option)) for kind in SINKS if getattr(request, kind.option)]


def check_sink_places(request) -> None:
    for kind, value in requested(request):
        kind.check(value)


def build_sinks(request, context: SinkContext) -> list[Sink]:
    """Every sink the request asks for; if one cannot be built, the ones already built are closed."""
    sinks: list[Sink] = []
    try:
        for kind, value in requested(request):
            sinks.append(kind.build(value, context))
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    return sinks


__all__ = ["SINKS", "Region", "Result", "Sink", "SinkContext", "SinkKind", "annotate", "build_sinks",
           "check_sink_places", "VIDEO_OUT_SUFFIXES", "JsonlSink", "MaskSink", "VideoSink", "WindowSink"]

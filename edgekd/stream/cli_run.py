"""`edgekd run` wiring: the source, the model, the sinks, signals, and the summary at the end."""

from __future__ import annotations

import json
import math
import signal
import sys
from contextlib import ExitStack
from pathlib import Path

from edgekd.errors import EdgekdError, RunIncomplete
from edgekd.outputs import check_output_file, check_output_folder
from edgekd.calibration import Thresholds
from edgekd.stream.detect import parse_hysteresis
from edgekd.stream.runner import RunOptions, Runner
from edgekd.stream.sinks import VIDEO_OUT_SUFFIXES, JsonlSink, MaskSink, VideoSink, WindowSink
from edgekd.stream.sources import CaptureSettings, open_source
from edgekd.stream.truth import FrameVerdicts, check_truth_matches, compare, describe, read_truth


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_stream(model: str | Path, camera: int | None, source: str | None, backend: str | None, device: str, show: bool,
               save_video: Path | None, save_masks: Path | None, jsonl: Path | None, threshold: float | None,
               min_area: int, hysteresis: str, batch: int, width: int | None, height: int | None, fps: float | None,
               max_frames: int | None, stats_every: float, reconnect_timeout: float, echo=print,
               truth: Path | None = None, server: str | None = None, serve: str | None = None,
               token: str | None = None, token_file: Path | None = None, realtime: bool = False,
               pixel_threshold: float | None = None, server_key: str | None = None) -> dict:
    from edgekd.runtime import open_runtime
    if (camera is None) == (source is None):
        raise EdgekdError("say where frames come from: exactly one of --camera N or --source (file, folder, URL, csi://N)")
    for option, value in (("--fps", fps), ("--width", width), ("--height", height)):
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise EdgekdError(f"{option} {value:g} is not a capture setting: give a positive number, or leave it out "
                              "to keep the source's own")
    if serve is None and (token is not None or token_file is not None):
        raise EdgekdError("--token and --token-file guard the dashboard: use them with --serve HOST:PORT")
    # Every output place is checked before the model loads (a bad path fails now, not at the first frame).
    if jsonl:
        check_output_file(jsonl, "--jsonl")
    if save_video:
        check_output_file(save_video, "--save-video", VIDEO_OUT_SUFFIXES)
    if save_masks:
        check_output_folder(save_masks, "--save-masks")
    truth_frames = read_truth(truth) if truth else None
    on_off = parse_hysteresis(hysteresis)
    if show:
        WindowSink.check_display()
    settings = CaptureSettings(width, height, fps)
    with ExitStack() as cleanup:
        # The dashboard binds now: a taken port fails before the model loads.
        dashboard = open_dashboard(serve, token, token_file) if serve is not None else None
        if dashboard is not None:
            cleanup.callback(dashboard.close)
        if server is not None:
            if backend:
                raise EdgekdError("--backend chooses a local runtime; with --server the server's runtime does the "
                                  "inference")
            from edgekd.runtime.triton_client import TritonClientRuntime
            runtime = TritonClientRuntime(server, str(model), api_key=server_key)
        else:
            runtime = open_runtime(Path(model), backend, device)
        try:
            thresholds = Thresholds.resolve(runtime.thresholds, threshold, pixel_threshold)
            stream = open_source(camera if camera is not None else source, settings, realtime)
        except BaseException:
            runtime.close()  # a TensorRT runtime holds GPU buffers
            raise
        if truth_frames is not None:
            try:
                warning = check_truth_matches(truth_frames, truth, str(source if camera is None else camera),
                                              stream.frame_count)
            except BaseException:
                stream.close()
                runtime.close()
                raise
            if warning:
                _log(warning)
        runner_ref: list[Runner] = []
        sinks = []
        try:
            if jsonl:
                sinks.append(JsonlSink(jsonl))
            if save_masks:
                sinks.append(MaskSink(save_masks))
            if save_video:
                sinks.append(VideoSink(save_video, stream.fps or settings.fps or 25.0))
            if show:
                sinks.append(WindowSink(lambda: runner_ref[0].stop("window closed")))
            verdicts = FrameVerdicts() if truth_frames is not None else None
            if verdicts:
                sinks.append(verdicts)
            if dashboard is not None:
                sinks.append(dashboard.board)
        except BaseException:
            for sink in sinks:
                sink.close()
            stream.close()
            runtime.close()
            raise
        options = RunOptions(thresholds, min_area, on_off, batch, max_frames, stats_every, reconnect_timeout)
        runner = Runner(stream, runtime, sinks, options, log=_log)
        runner_ref.append(runner)
        if dashboard is not None:
            dashboard.board.attach(thresholds, (runner.vmin, runner.vmax), lambda: runner.stats.snapshot(),
                                   {"model": str(model), "source": stream.description, "backend": runtime.backend})
            dashboard.start()
            guarded = " (open it once as /?token=YOUR_TOKEN; scripts send 'Authorization: Bearer YOUR_TOKEN')"
            _log(f"info: dashboard at {dashboard.url}" + (guarded if dashboard.gate.token else ""))

        def on_signal(number, _frame):
            if runner.stopping:  # a second Ctrl-C: stop waiting for in-flight frames
                raise KeyboardInterrupt
            _log(f"info: {signal.Signals(number).name}: finishing the frames in flight and closing the outputs")
            runner.stop(signal.Signals(number).name)

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        _log(f"info: {stream.description} -> {model} ({runtime.backend}), thresholds image {thresholds.image:.4g} "
             f"pixel {thresholds.pixel:.4g}; Ctrl-C stops")
        try:
            summary = runner.run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            runtime.close()
        if verdicts:
            summary["truth"] = compare(truth_frames, verdicts)
            _log(describe(summary["truth"]))
        echo(json.dumps({"source": stream.description, "model": str(model), "backend": runtime.backend, **summary}))
        if summary.get("lost"):
            outages = summary.get("server_outages_s") or []
            _log(f"warning: {summary['lost']} frames were lost while {runtime.label} was unavailable"
                 + (f" ({len(outages)} outage(s), longest {max(outages):.1f} s)" if outages else ""))
        if summary["lost_outputs"]:
            lost = summary["lost_outputs"][0]
            raise RunIncomplete(f"{lost['output']} failed ({lost['error']}), so the run's outputs are incomplete "
                                "(see lost_outputs in the summary): free space or fix the path and run again")
        if summary.get("lost"):
            raise RunIncomplete(f"{summary['lost']} of {summary['captured']} frames were never scored (the server was "
                                "unavailable): the outputs miss them; check the server and run again")
        unscored = summary.get("unscored", 0)
        if unscored:
            named = ", ".join(summary.get("corrupt_frames", [])[:5])
            raise RunIncomplete(f"{unscored} of the {stream.frame_count} frames of {stream.description} were never "
                                f"scored ({summary['corrupt']} unreadable{': ' + named if named else ''}; "
                                f"{summary.get('unread', 0)} past a damaged end): the outputs miss them")
        if summary["stopped_by"] and summary["stopped_by"].startswith("SIG"):
            raise RunIncomplete(f"stopped by {summary['stopped_by']} after {summary['processed']} frames: the outputs hold "
                                "those frames only", 128 + int(signal.Signals[summary["stopped_by"]]))
        return summary


def open_dashboard(serve: str, token: str | None, token_file: Path | None):
    """The dashboard of --serve, bound and ready to start; every problem with the address or token is raised here
    (an exposed address without a token by the Dashboard's own gate)."""
    from edgekd.dashboard.access import parse_serve_address, read_token
    from edgekd.dashboard.board import LiveBoard
    from edgekd.dashboard.server import Dashboard
    address = parse_serve_address(serve)
    token = read_token(token, token_file)
    board = LiveBoard()
    try:
        return Dashboard(address, token, board)
    except BaseException:
        board.close()
        raise

"""`edgekd run` wiring: the source, the model, the sinks, signals, and the summary at the end."""

from __future__ import annotations

import json
import math
import signal
import sys
from contextlib import ExitStack
from pathlib import Path

from edgekd.errors import EdgekdError, RunIncomplete
from edgekd.calibration import Thresholds
from edgekd.region_sizes import parse_scale
from edgekd.stream.detect import parse_hysteresis
from edgekd.stream.parts import PartGrouper, PartRule
from edgekd.stream.reject import RejectRule
from edgekd.stream.request import RunRequest
from edgekd.stream.runner import RunOptions, Runner
from edgekd.sinks import SinkContext, build_sinks, prepare_sinks
from edgekd.stream.sources import CaptureSettings, open_source
from edgekd.stream.truth import FrameVerdicts, check_truth_matches, compare, describe, read_truth
from edgekd.viz import colour_range


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _part_grouper(request: RunRequest) -> PartGrouper | None:
    """Parts by count or by the PLC's trigger (edgekd/stream/parts.py), checked before anything starts."""
    if request.part_frames is None and request.part_trigger is None:
        if request.part_defects != 1:
            raise EdgekdError("--part-defects counts defective frames of a part: give --part-frames N or --part-trigger")
        return None
    rule = PartRule(request.part_frames, request.part_defects, request.part_trigger).check()
    if rule.trigger == "mqtt" and not request.mqtt:
        raise EdgekdError("--part-trigger mqtt listens on the broker of --mqtt (topic PREFIX/trigger): give --mqtt")
    if rule.trigger == "opcua" and not request.opcua:
        raise EdgekdError("--part-trigger opcua listens on the PartTrigger node of --opcua: give --opcua")
    return PartGrouper(rule)


def run_stream(request: RunRequest, echo=print, server_key: str | None = None) -> dict:
    """One `edgekd run`: checks, the source, the runtime (local, or the server of `request.server`), the sinks, the
    runner, and the summary. `server_key`: the server's API key, read from request.server_key_file by the caller."""
    from edgekd.runtime import open_runtime
    if (request.camera is None) == (request.source is None):
        raise EdgekdError("say where frames come from: exactly one of --camera N or --source (file, folder, URL, csi://N)")
    for option, value in (("--fps", request.fps), ("--width", request.width), ("--height", request.height)):
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise EdgekdError(f"{option} {value:g} is not a capture setting: give a positive number, or leave it out "
                              "to keep the source's own")
    if request.max_latency_ms is not None and not request.max_latency_ms > 0:
        raise EdgekdError(f"--max-latency-ms {request.max_latency_ms:g} must be positive: the most milliseconds from "
                          "capture to verdict, e.g. 200")
    if request.serve is None and (request.token is not None or request.token_file is not None):
        raise EdgekdError("--token and --token-file guard the dashboard: use them with --serve HOST:PORT")
    # Every output place is checked before the model loads (a bad path fails now, not at the first frame).
    if request.loop and request.truth is not None:
        raise EdgekdError("--truth counts the frames of one pass of its video; --loop plays it again and again: use one")
    truth_frames = read_truth(request.truth) if request.truth else None
    on_off = parse_hysteresis(request.hysteresis)
    mm_per_px = parse_scale(request.mm_per_px)
    reject_rule = RejectRule.parse(request.reject_if, mm_per_px is not None) if request.reject_if else None
    parts = _part_grouper(request)
    settings = CaptureSettings(request.width, request.height, request.fps)
    with ExitStack() as cleanup:
        # Output places checked and the dashboard's port bound now: a bad path or a taken port fails before the
        # model loads.
        prepared = prepare_sinks(request, cleanup)
        if request.server is not None:
            if request.backend:
                raise EdgekdError("--backend chooses a local runtime; with --server the server's runtime does the "
                                  "inference")
            from edgekd.runtime.triton_client import TritonClientRuntime
            runtime = TritonClientRuntime(request.server, str(request.model), api_key=server_key)
        else:
            runtime = open_runtime(Path(request.model), request.backend, request.device)
        try:
            thresholds = Thresholds.resolve(runtime.thresholds, request.threshold, request.pixel_threshold)
            stream = open_source(request.camera if request.camera is not None else request.source, settings,
                                 request.realtime, request.loop)
        except BaseException:
            runtime.close()  # a TensorRT runtime holds GPU buffers
            raise
        if truth_frames is not None:
            try:
                warning = check_truth_matches(truth_frames, request.truth, str(request.source if request.camera is None else request.camera),
                                              stream.frame_count)
            except BaseException:
                stream.close()
                runtime.close()
                raise
            if warning:
                _log(warning)
        runner_ref: list[Runner] = []
        context = SinkContext(stream.fps or settings.fps or 25.0, lambda reason: runner_ref[0].stop(reason), thresholds,
                              colour_range(runtime.info.score_stats, thresholds.pixel),
                              lambda: {**runner_ref[0].stats.snapshot(), "outputs": runner_ref[0].outputs()}
                              if runner_ref else None,
                              {"model": str(request.model), "source": stream.description, "backend": runtime.backend},
                              _log, parts)
        try:
            sinks = build_sinks(prepared, context)
        except BaseException:
            stream.close()
            runtime.close()
            raise
        verdicts = FrameVerdicts() if truth_frames is not None else None
        if verdicts:
            sinks.append(verdicts)
        options = RunOptions(thresholds, request.min_area, on_off, request.batch, request.max_frames, request.stats_every,
                             request.reconnect_timeout, mm_per_px=mm_per_px, reject_rule=reject_rule,
                             max_latency_ms=request.max_latency_ms, parts=parts, names=context.names)
        runner = Runner(stream, runtime, sinks, options, log=_log)
        runner_ref.append(runner)

        def on_signal(number, _frame):
            if runner.stopping:  # a second Ctrl-C: stop waiting for in-flight frames
                raise KeyboardInterrupt
            _log(f"info: {signal.Signals(number).name}: finishing the frames in flight and closing the outputs")
            runner.stop(signal.Signals(number).name)

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        _log(f"info: {stream.description} -> {request.model} ({runtime.backend}), thresholds image {thresholds.image:.4g} "
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
        echo(json.dumps({"source": stream.description, "model": str(request.model), "backend": runtime.backend, **summary}))
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


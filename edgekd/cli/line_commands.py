"""On the line: `edgekd run` and `edgekd calibrate`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgekd.calibration import ThresholdRule
from edgekd.cli.common import (ARTIFACT_HELP, BACKEND, DEVICE, _echo, app)
from edgekd.errors import EdgekdError


@app.command(help="Stream frames through a model: live defect masks, events, video; camera, file, stream or folder.")
def run(ctx: typer.Context,
        config: Optional[Path] = typer.Option(None, "--config", help="A YAML line file: one key per option of this "
                                              "command (model, camera, jsonl, serve, ...); options given here override it."),
        model: Optional[str] = typer.Option(None, "--model", help=ARTIFACT_HELP + " With --server: the model's name there."),
        bundle: Optional[Path] = typer.Option(None, "--bundle", help="Run the model of an 'edgekd bundle' archive."),
        server: Optional[str] = typer.Option(None, help="A Triton server (grpc://HOST:8001 or http://HOST:8000, e.g. "
                                             "'edgekd serve') that does the inference; the rest runs here."),
        server_key_file: Optional[Path] = typer.Option(None, "--server-key-file", help="With --server: file whose "
                                                       "first line is the server's API key ('edgekd serve --api-key-file')."),
        camera: Optional[int] = typer.Option(None, help="Camera index (V4L2), e.g. 0."),
        source: Optional[str] = typer.Option(None, help="Video file, image folder, rtsp://..., http://..., csi://N "
                                             "(Jetson CSI camera) or gst:<GStreamer pipeline>."),
        backend: Optional[str] = BACKEND, device: str = DEVICE,
        show: bool = typer.Option(False, help="Show the annotated stream in a window (q or Esc quits)."),
        save_video: Optional[Path] = typer.Option(None, "--save-video", help="Write the annotated stream (.mp4 or .avi)."),
        save_masks: Optional[Path] = typer.Option(None, "--save-masks", help="Folder for a mask PNG of every defect frame."),
        jsonl: Optional[Path] = typer.Option(None, help="One JSON event per frame: index, time, score, verdict, regions."),
        threshold: Optional[float] = typer.Option(None, help="Override the image and pixel threshold of the model."),
        pixel_threshold: Optional[float] = typer.Option(None, "--pixel-threshold", help="Override the pixel threshold "
                                                        "alone (masks, regions)."),
        min_area: int = typer.Option(0, "--min-area", min=0, help="Ignore defect regions smaller than this (frame pixels)."),
        hysteresis: str = typer.Option("1,1", help="ON,OFF: defect frames in a row to raise the verdict, good frames to clear it."),
        mm_per_px: Optional[str] = typer.Option(None, "--mm-per-px", help="The frame's scale: millimetres per pixel "
                                                "(0.05) or a known width (40mm=800px). Regions then carry area_mm2, "
                                                "length_mm and width_mm."),
        reject_if: Optional[str] = typer.Option(None, "--reject-if", help="After the anomaly decision, reject a part "
                                                "when one of its regions meets this rule, e.g. 'area_mm2 > 0.5 or "
                                                "length_mm > 2' (sizes: area_mm2 length_mm width_mm area_px length_px "
                                                "width_px)."),
        batch: int = typer.Option(8, min=1, help="Largest micro-batch when frames back up."),
        width: Optional[int] = typer.Option(None, help="Capture width (cameras, CSI)."),
        height: Optional[int] = typer.Option(None, help="Capture height (cameras, CSI)."),
        fps: Optional[float] = typer.Option(None, help="Capture frame rate (cameras, CSI); with --realtime, the rate "
                                            "a file or folder is played at."),
        realtime: bool = typer.Option(False, "--realtime", help="Play a video file or image folder at its frame rate "
                                      "(or --fps), as a camera would deliver it."),
        loop: bool = typer.Option(False, "--loop", help="Play a video file or image folder again each time it ends, "
                                  "until stopped (with --realtime: a clip stands in for a camera)."),
        serve: Optional[str] = typer.Option(None, "--serve", help="Serve the operator dashboard at HOST:PORT (a port "
                                            "alone: 127.0.0.1). Anything but loopback needs --token-file."),
        token_file: Optional[Path] = typer.Option(None, "--token-file", help="File whose first line is the dashboard's "
                                                  "token; every request must carry it."),
        token: Optional[str] = typer.Option(None, "--token", help="The dashboard's token itself (visible in the "
                                            "process list: prefer --token-file)."),
        max_frames: Optional[int] = typer.Option(None, "--max-frames", min=1, help="Stop after this many frames."),
        stats_every: float = typer.Option(5.0, "--stats-every", min=0.0, help="Seconds between stats lines (0: none)."),
        reconnect_timeout: float = typer.Option(0.0, "--reconnect-timeout", min=0.0,
                                                help="Give up on a lost camera/stream after this many seconds (0: never)."),
        truth: Optional[Path] = typer.Option(None, help="Frame list of a test video ('edgekd data video' writes it): "
                                             "print detected vs true defect frames at the end."),
        mqtt: Optional[str] = typer.Option(None, help="Publish verdicts to an MQTT broker: mqtt://HOST:PORT/PREFIX "
                                           "(mqtts:// for TLS); PREFIX/verdict per frame, PREFIX/status retained."),
        mqtt_every: str = typer.Option("frame", "--mqtt-every", help="frame, change (of verdict) or defect."),
        mqtt_qos: int = typer.Option(1, "--mqtt-qos", min=0, max=2, help="MQTT quality of service."),
        mqtt_ca: Optional[Path] = typer.Option(None, "--mqtt-ca", help="CA certificate (PEM) for mqtts://."),
        mqtt_cert: Optional[Path] = typer.Option(None, "--mqtt-cert", help="Client certificate (PEM) for mqtts://."),
        mqtt_key: Optional[Path] = typer.Option(None, "--mqtt-key", help="The client certificate's private key."),
        mqtt_auth_file: Optional[Path] = typer.Option(None, "--mqtt-auth-file", help="File whose first line is "
                                                      "USER:PASSWORD for the broker."),
        opcua: Optional[str] = typer.Option(None, help="Serve the verdicts over OPC UA at opc.tcp://HOST:PORT (anonymous "
                                            "on loopback only; elsewhere --opcua-auth-file)."),
        opcua_auth_file: Optional[Path] = typer.Option(None, "--opcua-auth-file", help="File whose first line is "
                                                       "USER:PASSWORD, required of OPC UA clients."),
        webhook: Optional[str] = typer.Option(None, help="POST each defect verdict's JSON to this http(s):// URL."),
        webhook_every: str = typer.Option("defect", "--webhook-every", help="frame, change (of verdict) or defect."),
        webhook_token_file: Optional[Path] = typer.Option(None, "--webhook-token-file", help="File whose first line "
                                                          "is sent as a bearer token with each POST."),
        spool: Path = typer.Option(Path("edgekd-spool"), "--spool", help="Folder where MQTT and webhook messages "
                                   "wait while the receiver is away (sent in order when it is back)."),
        spool_limit: int = typer.Option(100_000, "--spool-limit", min=1, help="Most messages kept per output; "
                                        "beyond it the oldest are dropped, and counted."),
        events: Optional[Path] = typer.Option(None, help="Event store (SQLite): every defect frame with its picture "
                                              "and mask, and per-minute counts; read it with 'edgekd events'."),
        events_keep_days: Optional[float] = typer.Option(None, "--events-keep-days", help="Delete events older "
                                                         "than this."),
        events_max_mb: Optional[float] = typer.Option(None, "--events-max-mb", help="Delete the oldest events while "
                                                      "the store is larger than this."),
        max_latency_ms: Optional[float] = typer.Option(None, "--max-latency-ms", help="Latency budget from capture "
                                                       "to verdict: frames that cannot make it are dropped before "
                                                       "inference (counted as over_budget)."),
        part_frames: Optional[int] = typer.Option(None, "--part-frames", min=1, help="Group every N frames into a "
                                                  "part with one verdict (see --part-trigger)."),
        part_defects: int = typer.Option(1, "--part-defects", min=1, help="A part is defective when at least this "
                                         "many of its frames are."),
        part_trigger: Optional[str] = typer.Option(None, "--part-trigger", help="The PLC starts each part: mqtt "
                                                   "(a message on PREFIX/trigger, its text the part id) or opcua "
                                                   "(a write to the PartTrigger node).")):
    from edgekd.stream.cli_run import run_stream
    from edgekd.stream.request import RunRequest
    given = {name: value for name, value in ctx.params.items()
             if ctx.get_parameter_source(name).name not in ("DEFAULT", "DEFAULT_MAP")}
    request = RunRequest.build(config, given)
    if (request.model is None) == (request.bundle is None):
        raise EdgekdError("say which model: exactly one of --model ARTIFACT or --bundle ARCHIVE.tar.gz")
    if request.bundle is not None:
        if request.server is not None:
            raise EdgekdError("--bundle runs its model here; with --server the server holds the model")
        from edgekd.deploy.bundle import open_bundle
        request = request.replace(model=str(open_bundle(request.bundle, log=lambda line: typer.echo(line, err=True))))
    if request.server_key_file is not None and request.server is None:
        raise EdgekdError("--server-key-file goes with --server URL (the key of the Triton server that does the inference)")
    from edgekd.secret_files import read_token
    server_key = (read_token(None, request.server_key_file, "server API key", "--server-key-file")
                  if request.server_key_file else None)
    run_stream(request, echo=_echo, server_key=server_key)


@app.command(help="Set thresholds from good frames of your own camera or clip; writes them into the artifact.")
def calibrate(artifact: Path = typer.Argument(..., help=ARTIFACT_HELP),
              camera: Optional[int] = typer.Option(None, help="Camera index (V4L2), e.g. 0."),
              source: Optional[str] = typer.Option(None, help="A clip or image folder of GOOD parts, rtsp://..., "
                                                   "http://..., csi://N or gst:<pipeline>."),
              frames: int = typer.Option(300, "--frames", min=1, help="Good frames to score (fewer if the source ends)."),
              quantile: float = typer.Option(ThresholdRule.quantile, help="Rule: threshold = max(Q + margin*s, "
                                             "largest normal + s)."),
              margin: float = typer.Option(ThresholdRule.margin, help="Robust spreads (s = 1.4826 MAD) added above the quantile "
                                           "(training's held-out images get the same)."),
              plot: Optional[Path] = typer.Option(None, help="Histogram PNG (default <artifact>.calibration.png)."),
              dry_run: bool = typer.Option(False, "--dry-run", help="Report and plot, but leave the artifact as it is."),
              accept_outliers: bool = typer.Option(False, "--accept-outliers", help="Go on when many frames score far "
                                                   "above the rest or above an earlier calibration (they are still left "
                                                   "out of the rule and listed)."),
              width: Optional[int] = typer.Option(None, help="Capture width (cameras, CSI)."),
              height: Optional[int] = typer.Option(None, help="Capture height (cameras, CSI)."),
              fps: Optional[float] = typer.Option(None, help="Capture frame rate (cameras, CSI)."),
              backend: Optional[str] = BACKEND, device: str = DEVICE):
    from edgekd.calibrate import calibrate as run_calibration
    from edgekd.stream.sources import CaptureSettings
    if (camera is None) == (source is None):
        raise EdgekdError("say where the good frames come from: exactly one of --camera N or --source (clip, folder, URL)")
    if not artifact.is_file():
        raise EdgekdError(f"{artifact} does not exist: pass a model.ckpt, .onnx or .engine")
    rule = ThresholdRule.from_config({"quantile": quantile, "margin": margin})
    result = run_calibration(artifact, camera if camera is not None else source, frames, backend, device,
                             CaptureSettings(width, height, fps), rule, plot, dry_run,
                             log=lambda text: typer.echo(text, err=True), accept_outliers=accept_outliers)
    t, s = result.thresholds, result.thresholds["score_stats"]
    before = result.previous or {}
    _echo(f"scored {len(result.scores)} good frames (of {result.frames_read} read): score median {s['p50']:.4g}, "
          f"p99 {s['p99']:.4g}, max {s['max']:.4g}")
    _echo(f"image threshold {t['image']:.4g} (was {before.get('image', float('nan')):.4g}), pixel threshold "
          f"{t['pixel']:.4g} (was {before.get('pixel', float('nan')):.4g}); the image threshold sits "
          f"{t['image'] - s['max']:.4g} above the largest normal score ({result.headroom():.1f} robust spreads)")
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)
    if dry_run:
        _echo(f"dry run: {artifact} unchanged; histogram {result.plot}")
    else:
        _echo(f"wrote {', '.join(map(str, result.written))} (previous thresholds kept in thresholds_history); "
              f"histogram {result.plot}")


@app.command(help="List, filter and export the defect events an 'edgekd run --events DB' stored.")
def events(db: Path = typer.Argument(..., help="The event store (edgekd run --events DB)."),
           since: Optional[str] = typer.Option(None, help="From this time: 2026-12-08T10:30, 2026-12-08, or an age "
                                               "(15m, 2h, 7d)."),
           until: Optional[str] = typer.Option(None, help="Before this time (same forms)."),
           min_score: Optional[float] = typer.Option(None, "--min-score", help="Events scoring at least this."),
           camera: Optional[str] = typer.Option(None, help="Events of this camera (source) only."),
           limit: Optional[int] = typer.Option(None, min=1, help="At most this many (the oldest first)."),
           csv_out: Optional[Path] = typer.Option(None, "--csv", help="Write the selected events to this CSV file."),
           minutes: bool = typer.Option(False, "--minutes", help="List the per-minute counts instead."),
           parts: bool = typer.Option(False, "--parts", help="List the parts' verdicts instead (--part-frames, "
                                      "--part-trigger).")):
    from edgekd.events.query import iso, listing, parse_when, write_csv
    from edgekd.events.store import EventFilter, EventStore
    selection = EventFilter(parse_when(since, "--since"), parse_when(until, "--until"), min_score, camera, limit)
    store = EventStore(db, create=False)
    try:
        if parts:
            for part in store.parts(selection):
                _echo(f"{iso(part['time'])}  part {part['part']:>8}  frames {part['first_frame']}-{part['last_frame']}"
                      f"  defect frames {part['defect_frames']:>3}  {part['verdict']:6}  worst frame "
                      f"{part['worst_frame']} ({part['worst_score']:.4f})  {part['camera']}")
            return
        if minutes:
            for row in store.minutes(selection.since, camera):
                _echo(f"{iso(row['minute'] * 60)[:16]}  frames {row['frames']:>6}  defects {row['defects']:>6}  "
                      f"max {row['max_score']:.4f}  mean {row['mean_score']:.4f}  {row['camera']}")
            return
        rows = store.events(selection)
        if csv_out is not None:
            write_csv(csv_out, rows, store.files)
            _echo(f"wrote {len(rows)} events to {csv_out}")
            return
        for line in listing(rows):
            _echo(line)
        _echo(f"{len(rows)} events; pictures and masks in {store.files}")
    finally:
        store.close()

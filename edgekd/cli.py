"""The `edgekd` command line. Each command is a thin layer over one module; user errors print one line."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from edgekd.calibration import ThresholdRule
from edgekd.errors import EdgekdError, RunIncomplete

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Knowledge-distillation anomaly detection: data, training, evaluation and prediction.")
data_app = typer.Typer(no_args_is_help=True, help="Create and inspect datasets.")
app.add_typer(data_app, name="data", help="Create and inspect datasets (synthetic data, layout check).")

DEVICE = typer.Option("auto", "--device", help="auto, cpu or cuda[:N].")
BATCH = typer.Option(16, "--batch-size", min=1, help="Images per forward pass.")


def _echo(text: str) -> None:
    typer.echo(text)


def _show_version(value: bool) -> None:
    if value:
        from edgekd import __version__
        typer.echo(f"edgekd {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True,
                                       help="Print edgekd's version and exit.")) -> None:
    """Knowledge-distillation anomaly detection: data, training, evaluation and prediction."""


@data_app.command("synth", help="Generate the built-in synthetic industrial dataset (MVTec AD layout).")
def data_synth(root: Path = typer.Argument(..., help="Folder to write categories into."),
               categories: str = typer.Option("all", help="Comma-separated categories, 'logical' (the assemblies tray, board) or 'all'."),
               seed: int = typer.Option(0, help="Same seed, same images."),
               size: int = typer.Option(256, min=64, help="Image side in pixels."),
               train: int = typer.Option(160, "--train", min=2, help="Normal training images per category."),
               test_good: int = typer.Option(40, "--test-good", min=1, help="Normal test images per category."),
               per_defect: int = typer.Option(8, "--per-defect", min=1, help="Test images per defect type."),
               overwrite: bool = typer.Option(False, help="Replace categories that already exist.")):
    from edgekd.data.synth import parse_categories, synthesize
    from edgekd.outputs import check_output_folder
    from edgekd.progress import make_progress
    check_output_folder(root, "dataset folder")
    names = parse_categories(categories)
    with make_progress() as progress:
        written = synthesize(root, names, seed, size, train, test_good, per_defect, overwrite, progress)
    _echo(f"wrote {len(written)} categories to {root}: {', '.join(p.name for p in written)}")


@data_app.command("info", help="Check a dataset folder's layout and count its images.")
def data_info(root: Path = typer.Argument(..., help="Dataset root."),
              category: Optional[str] = typer.Option(None, help="Category sub-folder (MVTec layouts).")):
    from collections import Counter

    from edgekd.data.checks import check_files
    from edgekd.data.layouts import load_dataset
    from edgekd.progress import make_progress
    dataset = load_dataset(root, category)
    defects = Counter(s.defect for s in dataset.test)
    _echo(f"{dataset.root}: layout {dataset.layout}, {len(dataset.train)} normal training images, "
          f"{len(dataset.test)} test images ({', '.join(f'{k} {v}' for k, v in sorted(defects.items()))})")
    with make_progress() as progress:
        problems = check_files(dataset, progress)
    for problem in problems[:20]:
        typer.echo(f"problem: {problem}", err=True)
    if problems:
        raise EdgekdError(f"{len(problems)} file problem(s) in {dataset.root} (first: {problems[0]}): fix or remove "
                          "those files before training or evaluating")
    _echo("every image decodes and every mask matches its image")


@data_app.command("video", help="Make a production-line video from a dataset's test images, defects at chosen frames.")
def data_video(root: Path = typer.Argument(..., help="Dataset root."),
               out: Path = typer.Argument(..., help="Video file to write (.mp4); the frame list goes next to it as .json."),
               category: Optional[str] = typer.Option(None, help="Category sub-folder (MVTec layouts)."),
               frames: int = typer.Option(200, min=1, help="Number of frames."),
               defect_every: int = typer.Option(10, "--defect-every", min=0, help="A defective part every N frames (0: none)."),
               fps: float = typer.Option(25.0, min=1.0, help="Frame rate written into the file."),
               size: Optional[int] = typer.Option(None, min=16, help="Frame side in pixels (default: the images' size)."),
               seed: int = typer.Option(0, help="Order of the images."),
               normal_part: str = typer.Option("all", "--normal-part", help="Normal test images used: all, or the "
                                               "first or second half (a calibration clip and a line video that share "
                                               "no image).")):
    from edgekd.data.layouts import load_dataset
    from edgekd.data.video import write_line_video
    from edgekd.outputs import check_output_file
    from edgekd.sinks import VIDEO_OUT_SUFFIXES
    check_output_file(out, "video", VIDEO_OUT_SUFFIXES)
    defects = list(range(defect_every - 1, frames, defect_every)) if defect_every else []
    write_line_video(load_dataset(root, category), out, frames, defects, fps, size, seed, normal_part)
    _echo(f"wrote {out}: {frames} frames at {fps:g} fps, defects at {len(defects)} frames; frame list {Path(out).with_suffix('.json')}")


def overrides_for(set_: List[str], epochs: Optional[int], device: Optional[str], weights: Optional[Path]) -> list[str]:
    """`edgekd train`'s shortcut options as the config overrides they stand for."""
    return (list(set_) + ([f"train.epochs={epochs}"] if epochs else []) + ([f"train.device={device}"] if device else [])
            + ([f"teacher_weights={weights}"] if weights else []))


@app.command(help="Train a detector on normal images and write runs/<name>/model.ckpt.")
def train(config: Optional[Path] = typer.Option(None, help="YAML config (see configs/); default: configs/rd_lite0.yaml, "
                                                "the default detector."),
          data: Path = typer.Option(..., help="Dataset root (MVTec AD/LOCO or folder layout)."),
          category: Optional[str] = typer.Option(None, help="Category sub-folder, e.g. wood or bottle."),
          out: Optional[Path] = typer.Option(None, help="Run folder (default runs/<category>)."),
          set_: List[str] = typer.Option([], "--set", help="Override a config value: KEY=VALUE, e.g. train.epochs=5."),
          epochs: Optional[int] = typer.Option(None, min=1, help="Shortcut for --set train.epochs=N."),
          device: Optional[str] = typer.Option(None, help="Shortcut for --set train.device=..."),
          weights: Optional[Path] = typer.Option(None, help="Teacher weights file (default: offline wheel / hub cache)."),
          resume: bool = typer.Option(False, help="Continue from <out>/last.ckpt."),
          overwrite: bool = typer.Option(False, help="Replace a model.ckpt already in --out."),
          nproc_per_node: int = typer.Option(1, "--nproc-per-node", min=1, help="Training processes on this machine "
                                             "(one per GPU; DistributedDataParallel through torchrun)."),
          nnodes: int = typer.Option(1, "--nnodes", min=1, help="Machines taking part (run the same command on each)."),
          node_rank: int = typer.Option(0, "--node-rank", min=0, help="This machine's number among --nnodes."),
          master_addr: str = typer.Option("127.0.0.1", "--master-addr", help="Address of node 0 (several machines)."),
          master_port: int = typer.Option(29500, "--master-port", help="Port on node 0 for the rendezvous.")):
    from edgekd.config import training_config
    from edgekd.train import train as run_training
    if nproc_per_node > 1 or nnodes > 1:
        from edgekd.distributed import launch
        from edgekd.data.layouts import load_dataset
        training_config(config, overrides_for(set_, epochs, device, weights))  # bad input fails here, once, not per rank
        load_dataset(data, category)
        code = launch(sys.argv[1:], nproc_per_node, nnodes, node_rank, master_addr, master_port)
        if code:
            raise typer.Exit(code)
        return
    cfg = training_config(config, overrides_for(set_, epochs, device, weights))
    out = out or Path("runs") / (category or Path(data).name)
    result = run_training(cfg, data, category, out, resume, overwrite)
    if result is None:  # a rank other than 0 of a distributed run: rank 0 reports
        # Its process group is gone (edgekd.distributed.end_process_group) and it has nothing left to write: exit
        # without the interpreter's teardown, which has nothing to do here but could only add failure modes.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    t = result.thresholds
    resumed = f" (resumed after epoch {result.resumed_at})" if result.resumed_at else ""
    _echo(f"trained {cfg['model']} ({cfg['teacher']}) for {result.epochs_run} epochs{resumed} on {result.device} in "
          f"{result.seconds:.0f}s, final loss {result.final_loss:.4f}")
    _echo(f"thresholds from {t['n']} held-out normal images: image {t['image']:.4f}, pixel {t['pixel']:.4f}")
    for note in result.notes:
        _echo(f"note: {note}")
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)
    _echo(f"checkpoint: {result.checkpoint}\nnext: edgekd eval {result.checkpoint} --data {data}"
          + (f" --category {category}" if category else ""))


ARTIFACT_HELP = "A model.ckpt, an exported .onnx or a TensorRT .engine (backend picked from the file type)."
BACKEND = typer.Option(None, "--backend", help="Force torch, onnxruntime or tensorrt.")


@app.command("eval", help="Evaluate models: metrics table, JSON + Markdown results, PNG montage.")
def eval_(artifacts: List[Path] = typer.Argument(..., help=ARTIFACT_HELP + " One or more."),
          data: Path = typer.Option(..., help="Dataset root."),
          category: Optional[str] = typer.Option(None, help="Category (default: the one the model was trained on)."),
          out: Optional[Path] = typer.Option(None, help="Results folder (default <artifact folder>/eval)."),
          batch_size: int = BATCH, device: str = DEVICE, backend: Optional[str] = BACKEND,
          save_threshold: bool = typer.Option(False, help="Store F1-optimal thresholds from these labels in the checkpoint.")):
    import numpy

    from edgekd.artifact_kinds import CHECKPOINT
    from edgekd.calibrate import write_thresholds
    from edgekd.calibration import check_thresholds
    from edgekd.metrics import thresholds_from_labels
    from edgekd.data.layouts import load_dataset
    from edgekd.evaluate import evaluate, markdown_table, one_class_note, write_results
    from edgekd.outputs import check_output_folder
    from edgekd.progress import make_progress
    from edgekd.runtime import open_runtime
    out = check_output_folder(out or (artifacts[0].parent / "eval"), "--out")
    rows, saved = [], []
    with make_progress() as progress:
        for path in artifacts:
            with open_runtime(path, backend, device) as runtime:
                which = category or runtime.info.get("category")
                if save_threshold:
                    if runtime.backend != CHECKPOINT.backend:
                        raise EdgekdError(f"--save-threshold updates checkpoints, and {path} is not one: "
                                          "save into the model.ckpt, then export again")
                    labels = numpy.array([s.label for s in load_dataset(data, which).test])
                    if note := one_class_note(labels, which or str(data)):
                        raise EdgekdError(f"--save-threshold needs defective and normal test images, but {note}; "
                                          f"{path} keeps its thresholds (use 'edgekd calibrate' with good frames)")
                result = evaluate(runtime, data, which, out, str(path), progress, batch_size)
            rows.append({**result.row, "backend": runtime.backend, "precision": runtime.info.get("precision")})
            if save_threshold:
                found = thresholds_from_labels(result.labels, result.scores, result.masks, result.maps)
                check_thresholds(found, f"the F1-optimal thresholds found for {path}")
                write_thresholds(path, CHECKPOINT, found, f"edgekd eval --save-threshold on {data}")
                saved.append(path)
    json_path, md_path = write_results(rows, out)
    _echo(markdown_table(rows))
    for row in rows:
        if "note" in row:
            typer.echo(f"note: {row['note']}", err=True)
    _echo(f"results: {json_path}, {md_path}; montages: {', '.join(r['montage'] for r in rows)}")
    if saved:
        _echo("stored F1-optimal thresholds in " + ", ".join(map(str, saved))
              + " (the previous ones are kept in thresholds_history)")


@app.command(help="Score images with any model: a mask and an overlay per image.")
def predict(artifact: Path = typer.Argument(..., help=ARTIFACT_HELP),
            images: List[Path] = typer.Argument(..., help="Image files."),
            out: Path = typer.Option(Path("preds"), help="Output folder."),
            threshold: Optional[float] = typer.Option(None, help="Override the image and pixel threshold."),
            batch_size: int = BATCH, device: str = DEVICE, backend: Optional[str] = BACKEND):
    from edgekd.calibration import check_threshold_override
    from edgekd.outputs import check_output_folder
    from edgekd.predict import predict_images
    from edgekd.runtime import open_runtime
    check_output_folder(out, "--out")
    override = {"image": threshold, "pixel": threshold} if check_threshold_override(threshold) is not None else None
    with open_runtime(artifact, backend, device) as runtime:
        records, failures = predict_images(runtime, images, out, batch_size, override)
    for r in records:
        verdict = "ANOMALOUS" if r["anomalous"] else "normal"
        _echo(f"{r['image']}: score {r['score']:.4f} {verdict} ({r['defect_pixels']} defect pixels) -> {r['overlay']}")
        if "warning" in r:
            typer.echo(f"warning: {r['image']}: {r['warning']}", err=True)
    _echo(f"wrote masks, overlays and predictions.json to {out} ({runtime.backend})")
    if failures:
        raise EdgekdError(f"{len(failures)} of {len(images)} images could not be read (listed under 'failed' in "
                          f"{out / 'predictions.json'}), first: {failures[0]['error']}")


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
                                             "print detected vs true defect frames at the end.")):
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
    from edgekd.dashboard.access import read_token
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


@app.command(help="Export a checkpoint to ONNX (fp32, fp16, int8), verified against PyTorch.")
def export(checkpoint: Path = typer.Argument(..., help="model.ckpt"),
           precision: str = typer.Option("fp32", help="fp32, fp16 or int8."),
           layout: str = typer.Option("single", help="single graph, or split into teacher and student graphs."),
           out: Path = typer.Option(Path("export"), help="Output folder."),
           name: Optional[str] = typer.Option(None, help="File name stem (default: the run folder's name)."),
           data: Optional[Path] = typer.Option(None, help="Dataset for parity/accuracy checks (default: the training data)."),
           category: Optional[str] = typer.Option(None, help="Category of --data."),
           calib_images: int = typer.Option(64, "--calib-images", min=1, help="Normal images for INT8 calibration."),
           calibration: str = typer.Option("minmax", help="INT8 calibration: minmax, percentile or entropy."),
           int8_for: str = typer.Option("tensorrt", "--int8-for", help="INT8 Q/DQ form: 'tensorrt' (symmetric; what "
                                        "build-engine takes) or 'onnxruntime' (uint8 activations, fast on CPU; "
                                        "written as NAME.int8-ort.onnx)."),
           int8_stems: str = typer.Option("auto", "--int8-stems", help="INT8: the stem-to-stride-4 segments in 'int8', "
                                          "in 'float', or 'auto' (INT8, and float when that fails parity or --max-drop). With float stems the patch "
                                          "memory's product (INT8 for onnxruntime) stays float too."),
           max_drop: float = typer.Option(1.0, "--max-drop", help="Refuse fp16/int8 if a metric drops more points than this."),
           force: bool = typer.Option(False, help="Keep a reduced-precision export that fails the accuracy gate."),
           fused_op: str = typer.Option("function", "--fused-op", help="Scoring as one edgekd::MultiScaleFeatureDiff node "
                                        "with an ONNX function body ('function'), or as stock ONNX ops ('off').")):
    from edgekd.export.exporter import export_checkpoint
    from edgekd.progress import make_progress
    with make_progress() as progress:
        result = export_checkpoint(checkpoint, precision, layout, out, name, data, category, calib_images, max_drop,
                                   force, calibration_method=calibration, fused_op=fused_op, int8_for=int8_for,
                                   int8_stems=int8_stems, progress=progress)
    _echo(f"wrote {', '.join(str(p) for p in result.files)}")
    for failed in result.int8_stems.get("failed_first", []):
        _echo(f"INT8 with the stems in {failed['stems']} failed the {failed['failed']}: the stems stay in "
              f"{result.int8_stems['used']}")
    _echo(f"verified: {result.parity.summary()} -> within {precision} tolerance")
    if result.deltas:
        drops = ", ".join(f"{k} {v:+.2f}" for k, v in result.deltas.items())
        state = "ACCEPTED with --force despite" if result.refused else "within"
        _echo(f"verified: accuracy drop versus FP32 in points: {drops} ({state} --max-drop {max_drop})")
    then = f"edgekd build-engine {result.artifact}" if int8_for == "tensorrt" or precision != "int8" \
        else f"edgekd run --model {result.artifact} --camera 0"
    _echo(f"next: edgekd eval {result.artifact} --data {result.data}\n      {then}")


@app.command("build-engine", help="Build a TensorRT engine (raw plan + JSON sidecar) from a checkpoint or ONNX.")
def build_engine(source: Path = typer.Argument(..., help="model.ckpt (exported first) or an .onnx from 'edgekd export'."),
                 precision: str = typer.Option("fp16", help="fp32, fp16 or int8 (for a checkpoint; an .onnx keeps its own)."),
                 batch: str = typer.Option("1,4,8", help="Optimisation profile batch sizes MIN,OPT,MAX."),
                 out: Path = typer.Option(Path("engines"), help="Output folder."),
                 workspace_gb: float = typer.Option(2.0, "--workspace-gb", min=0.0625, help="Builder workspace limit."),
                 timing_cache: Optional[Path] = typer.Option(None, help="Timing cache file, reused between builds (default <out>/timing.cache)."),
                 dla_core: Optional[int] = typer.Option(None, min=0, help="Build for this DLA core (Jetson) with GPU fallback."),
                 tensorrt: Optional[str] = typer.Option(None, help="Force tensorrt or tensorrt_rtx."),
                 plugin: Optional[bool] = typer.Option(None, "--plugin/--no-plugin", help="Build the fused scoring op as "
                                                       "the edgekd CUDA plugin (default on full TensorRT) or from its "
                                                       "ONNX function body (default on TensorRT-RTX).")):
    from edgekd.pipeline import engine_from
    from edgekd.progress import make_progress
    with make_progress() as progress:
        result = engine_from(source, out, precision, batch, workspace_gb, timing_cache, dla_core, tensorrt,
                             progress=progress, plugin=plugin)
    shapes = lambda tensors: ", ".join(f"{t['name']} {t['shape']} {t['dtype']}" for t in tensors)
    _echo(f"built {result.engine} with {result.tensorrt} in {result.seconds:.1f}s"
          + (f" (and {', '.join(map(str, result.extra_engines))})" if result.extra_engines else ""))
    _echo(f"verified: inputs {shapes(result.inputs)}; outputs {shapes(result.outputs)}; "
          f"profile batch {result.profile['batch']}")
    _echo(f"sidecar: {result.sidecar}")
    _echo(f"next: edgekd predict {result.engine} IMAGE.png   (needs an NVIDIA GPU)\n"
          f"      trtexec --loadEngine={result.engine}   (TensorRT's own tool loads the plan as is)")


@app.command(help="What this machine has for edgekd, what is missing or wrong, and the fix for each.")
def doctor(artifact: Optional[Path] = typer.Option(None, "--model", help="Also check that 'edgekd run --model' can "
                                                   "open this artifact here; the exit code says so."),
           engines: Optional[Path] = typer.Option(None, help="A folder of engines: were they built by this TensorRT "
                                                  "for this GPU?"),
           as_json: bool = typer.Option(False, "--json", help="One JSON list instead of lines."),
           root: Path = typer.Option(Path("/"), "--root", hidden=True, help="Read system files under this tree (tests).")):
    import json as jsonlib
    from edgekd import doctor as checks_module
    checks = checks_module.diagnose(artifact, engines, root)
    typer.echo(jsonlib.dumps(checks_module.as_json(checks), indent=1) if as_json else checks_module.render(checks))
    code = checks_module.exit_code(checks, artifact)
    if code:
        raise typer.Exit(code)


@app.command(help="Serve artifacts from a real NVIDIA Triton Inference Server (HTTP, gRPC, Prometheus metrics).")
def serve(artifacts: List[Path] = typer.Argument(..., help="model.ckpt, .onnx or .engine files; each is one model, "
                                                "named by its file name up to the first dot."),
          http: int = typer.Option(8000, help="HTTP port (0: no HTTP endpoint)."),
          grpc: int = typer.Option(8001, help="gRPC port (0: none)."),
          metrics: int = typer.Option(8002, help="Prometheus metrics port (0: none); always on loopback unless "
                                      "--address is."),
          address: str = typer.Option("127.0.0.1", "--address", help="Where HTTP and gRPC listen. Anything but "
                                      "loopback needs --api-key-file."),
          api_key_file: Optional[Path] = typer.Option(None, "--api-key-file", help="File whose first line is the API "
                                                      "key every HTTP/gRPC request must carry (header edgekd-api-key)."),
          max_batch: int = typer.Option(16, "--max-batch", min=1, help="Largest batch the dynamic batcher forms."),
          instances: int = typer.Option(1, min=1, help="Model instances (processes) per model."),
          queue_delay_us: int = typer.Option(1000, "--queue-delay-us", min=0, help="How long the batcher waits to fill a batch."),
          device: str = typer.Option("auto", help="Device for torch/onnxruntime models: auto, cpu or cuda."),
          backend: Optional[str] = typer.Option(None, help="Force one runtime for every artifact."),
          drain_s: int = typer.Option(30, "--drain-s", min=1, help="On Ctrl-C/SIGTERM, how long in-flight requests may finish.")):
    import signal as signals
    import shutil as shutils
    from edgekd.dashboard.access import read_token
    from edgekd.serve.repository import describe, write_serving_repository
    from edgekd.serve.server import (TritonServer, check_ports_free, make_work_dir, serving_exposure,
                                     serving_ports)
    models = [describe(path, backend=backend) for path in artifacts]  # every artifact checked before the server starts
    ports = serving_ports(http, grpc, metrics)
    exposure = serving_exposure(address, read_token(None, api_key_file, "API key", "--api-key-file"))
    check_ports_free(exposure, ports)
    work = make_work_dir()
    server, started = None, False
    try:
        repository = write_serving_repository(models, work / "models", max_batch, instances, queue_delay_us, device)
        server = TritonServer(repository, ports, work, exit_timeout_s=drain_s, exposure=exposure)
        _echo(f"starting Triton with {', '.join(f'{m.name} ({m.backend})' for m in models)} ...")
        server.start([m.name for m in models])
        started = True
        stopping = []
        def stop(signum, frame):
            if stopping:  # a second Ctrl-C: do not wait for the drain
                server.process.kill()
                return
            stopping.append(signum)
            _echo(f"stopping: finishing in-flight requests (up to {drain_s}s)")
            server.request_stop()
        signals.signal(signals.SIGINT, stop)
        signals.signal(signals.SIGTERM, stop)
        endpoints = [f"{k} {host}:{v}" for k, v, host in (("HTTP", ports.http, exposure.address),
                                                           ("gRPC", ports.grpc, exposure.address),
                                                           ("metrics", ports.metrics, exposure.metrics_address)) if v]
        if exposure.api_key:
            endpoints[-1] += " (HTTP and gRPC need the API key)"
        _echo(f"serving on {', '.join(endpoints)}: " + "; ".join(
            f"{m.name}: image threshold {m.thresholds.get('image'):.4g}" for m in models))
        code = server.wait()
        if not stopping and code != 0:
            raise EdgekdError(f"tritonserver exited with code {code}: {server.failure_line()}")
        _echo("stopped")
    finally:
        if server is not None:
            server.stop()  # returns at once when it has exited; otherwise drains it (an error on our side)
        if started or server is None:
            shutils.rmtree(work, ignore_errors=True)  # a server that failed to start keeps its log for the reader


@app.command(help="Pack a model and what the line box needs (sidecar, calibration plot, plugin source, service unit) "
                  "into one archive for 'edgekd run --bundle'.")
def bundle(artifact: Path = typer.Argument(..., help="An .engine or .onnx (with its sidecar)."),
           out: Path = typer.Option(..., "--out", help="The archive to write (.tar.gz)."),
           overwrite: bool = typer.Option(False, help="Replace an existing archive.")):
    from edgekd.deploy.bundle import write_bundle
    written = write_bundle(artifact, out, overwrite=overwrite)
    _echo(f"wrote {written} ({written.stat().st_size / 2**20:.1f} MiB); on the box: edgekd run --bundle {written.name} "
          "--camera 0")


@app.command("export-triton", help="Write a Triton model repository (config.pbtxt, the model, a README) for a stock "
                                   "Triton container.")
def export_triton(artifact: Path = typer.Argument(..., help="An .engine (tensorrt_plan) or .onnx (onnxruntime_onnx)."),
                  repo: Path = typer.Option(..., "--repo", help="The model repository folder (created if missing)."),
                  platform: Optional[str] = typer.Option(None, help="tensorrt or onnxruntime (default: from the file)."),
                  name: Optional[str] = typer.Option(None, help="Model name (default: the file name up to its first dot)."),
                  max_batch: Optional[int] = typer.Option(None, "--max-batch", help="Batch limit (default: the engine "
                                                          "profile's maximum; 16 for ONNX)."),
                  instances: int = typer.Option(1, min=1, help="Model instances (instance_group count)."),
                  kind: str = typer.Option("gpu", help="gpu or cpu (cpu: onnxruntime only)."),
                  plugin: Optional[Path] = typer.Option(None, help="libedgekd_plugin.so, for engines built with the plugin."),
                  container: str = typer.Option("nvcr.io/nvidia/tritonserver:25.01-py3", help="Image named in the README."),
                  overwrite: bool = typer.Option(False, help="Replace a model of the same name.")):
    from edgekd.deploy.triton_repository import RepositoryOptions, default_name, write_repository
    if kind not in ("gpu", "cpu"):
        raise EdgekdError(f"--kind {kind!r} is unknown: use gpu or cpu")
    from edgekd.artifact_kinds import kind_by_suffix
    platform = platform or getattr(kind_by_suffix(artifact), "triton_platform", None) or "onnxruntime"
    options = RepositoryOptions(name=default_name(artifact) if name is None else name, platform=platform, max_batch=max_batch,
                                instances=instances, kind=f"KIND_{kind.upper()}", container=container, plugin=plugin)
    target = write_repository(artifact, repo, options, overwrite=overwrite)
    _echo(f"wrote {target} ({platform}); start it as {repo / 'README.md'} shows")


@app.command("export-deepstream", help="Write a DeepStream nvinfer config and a note on reading the outputs.")
def export_deepstream(artifact: Path = typer.Argument(..., help="An .engine (full TensorRT) or an .onnx."),
                      out: Path = typer.Option(..., "--out", help="Folder for the config, the model and the note."),
                      batch: Optional[int] = typer.Option(None, help="nvinfer batch-size (default: the engine's maximum)."),
                      plugin: Optional[Path] = typer.Option(None, help="libedgekd_plugin.so, for engines built with the plugin."),
                      overwrite: bool = typer.Option(False, help="Write into a non-empty folder.")):
    from edgekd.deploy.deepstream import write_deepstream
    config = write_deepstream(artifact, out, batch=batch, overwrite=overwrite, plugin=plugin)
    _echo(f"wrote {config} and {config.parent / 'README.md'} (how to read the map, score and mask)")


@app.command(help="Which detector, in which precision, on this device: FPS, latency and accuracy side by side, with "
                  "rd and dskd as reference rows.")
def benchmark(artifacts: List[Path] = typer.Argument(None, help="model.ckpt files (exported and built as each row "
                                                     "needs), or .onnx/.engine files run as they are."),
              families: Optional[str] = typer.Option(None, help="Families to compare, e.g. rd,dskd,logicrd (with "
                                                     "--train: train each one first; else: pick among ARTIFACTS)."),
              train_first: bool = typer.Option(False, "--train", help="Train one model per --families with its config."),
              data: Optional[Path] = typer.Option(None, help="Dataset for training and accuracy (default: each "
                                                  "checkpoint's own training data)."),
              category: Optional[str] = typer.Option(None, help="Category of --data."),
              epochs: Optional[int] = typer.Option(None, min=1, help="With --train: epochs per family."),
              set_: List[str] = typer.Option([], "--set", help="With --train: config override for every family."),
              configs: Optional[Path] = typer.Option(None, help="Folder of the families' configs (default: edgekd's "
                                                     "configs/)."),
              backends: str = typer.Option("onnxruntime", help="torch, onnxruntime, tensorrt (comma-separated)."),
              precisions: str = typer.Option("fp32,int8", help="fp32, fp16, int8 (comma-separated)."),
              batch: str = typer.Option("1,8", "--batch", help="Batch sizes, comma-separated."),
              rounds: int = typer.Option(5, min=1, help="Interleaved timing rounds (A B C A B C ...)."),
              turn_seconds: float = typer.Option(0.25, "--turn-seconds", min=0.01, help="Seconds per row per round."),
              out: Optional[Path] = typer.Option(None, help="Report folder (default bench/<date-time>)."),
              cache: Optional[Path] = typer.Option(None, help="Where exports and engines are kept between runs "
                                                   "(default <out>/../artifacts)."),
              compare: Optional[Path] = typer.Option(None, help="An earlier report.json: deltas and regressions."),
              source: Optional[str] = typer.Option(None, help="A video: also measure edgekd run decode-to-JSONL FPS."),
              skip_accuracy: bool = typer.Option(False, "--no-accuracy", help="Speed only."),
              max_drop: float = typer.Option(1.0, "--max-drop", help="Export gate for fp16/int8 rows (points)."),
              device: str = DEVICE):
    import time

    from edgekd.bench.models import REPO_CONFIGS, check_families, gather, trained_models
    from edgekd.bench.plan import BACKENDS, PRECISIONS, parse_batches, parse_list
    from edgekd.bench.prepare import check_engine_batches
    from edgekd.bench.report import read_report, write_report
    from edgekd.bench.run import Settings, run_benchmark
    from edgekd.artifact_kinds import kind_for_backend
    from edgekd.bench.tegrastats import TegraStats
    from edgekd.machine import environment_info
    from edgekd.outputs import check_output_folder
    from edgekd.progress import make_progress
    chosen_backends = parse_list(backends, BACKENDS, "--backends")
    chosen_precisions = parse_list(precisions, PRECISIONS, "--precisions")
    batches = parse_batches(batch)
    chosen_families = check_families(families) if families else None
    earlier = read_report(compare) if compare else None
    out = check_output_folder(out or Path("bench") / time.strftime("%Y-%m-%d-%H%M%S"), "--out")
    cache = check_output_folder(cache or out.parent / "artifacts", "--cache")
    if train_first:
        if not chosen_families or data is None:
            raise EdgekdError("--train needs --families (e.g. rd,dskd) and --data (and --category for MVTec layouts)")
        if artifacts:
            raise EdgekdError("pass either checkpoints or --families ... --train, not both")
    elif not artifacts:
        raise EdgekdError("nothing to benchmark: pass model.ckpt files, or --families rd,dskd --train --data ...")
    models = None if train_first else gather(list(artifacts), chosen_families)
    for model in models or []:
        if model.fixed is not None and not kind_for_backend(model.fixed_backend).loads_without_gpu:  # an engine
            check_engine_batches(model.fixed, batches)
    log = lambda text: typer.echo(text, err=True)
    if train_first:
        models = trained_models(chosen_families, configs or REPO_CONFIGS, data, category, out.parent / "runs",
                                epochs, list(set_), log)
    settings = Settings(chosen_backends, chosen_precisions, batches, data, category, rounds, turn_seconds, device,
                        source, max_drop, not skip_accuracy)
    with make_progress() as progress, TegraStats() as tegrastats:
        outcome = run_benchmark(models, settings, out, cache, progress, log)
    environment = {**environment_info(), "tegrastats": tegrastats.summary()}
    report = write_report(out, outcome.rows, environment, outcome.started, outcome.seconds, outcome.notes, earlier)
    _echo((out / "report.md").read_text())
    _echo(f"report: {out / 'report.md'}, {out / 'report.json'}, {out / 'report.csv'}"
          + (f"; plots: {', '.join(report['plots'])}" if report["plots"] else ""))
    if outcome.interrupted:
        raise RunIncomplete("interrupted: the report holds the rows finished before Ctrl-C", 130)
    from edgekd.bench.report import comparison_lines
    for line in comparison_lines(report.get("comparison", [])):
        typer.echo(line, err=True)
    regressions = [c for c in report.get("comparison", []) if c["verdict"] not in ("same", "faster")]
    if regressions:
        typer.echo(f"warning: {len(regressions)} row(s) regressed against {compare} (see the report)", err=True)


@app.command(help="List model families and teacher backbones.")
def models():
    from edgekd.backbones import BACKBONES
    from edgekd.models import available_models
    _echo("models:   " + ", ".join(available_models()))
    _echo("teachers: " + ", ".join(BACKBONES))


def main() -> None:
    try:
        app()
    except EdgekdError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(getattr(exc, "exit_code", 2))
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()

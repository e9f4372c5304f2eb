"""Leaving PyTorch and deploying: `export`, `build-engine`, `doctor`, `serve`, `bundle`, `export-triton`,
`export-deepstream`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from edgekd.cli.common import (_echo, app)
from edgekd.errors import EdgekdError


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
    from edgekd.secret_files import read_token
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

"""`edgekd benchmark`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from edgekd.cli.common import (DEVICE, _echo, app)
from edgekd.errors import EdgekdError, RunIncomplete


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

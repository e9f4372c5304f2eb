"""Training and scoring images: `edgekd train`, `eval`, `predict`, `models`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from edgekd.cli.common import (ARTIFACT_HELP, BACKEND, BATCH, DEVICE, _echo, app)
from edgekd.errors import EdgekdError


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
                which = category or runtime.info.category
                if save_threshold:
                    if runtime.backend != CHECKPOINT.backend:
                        raise EdgekdError(f"--save-threshold updates checkpoints, and {path} is not one: "
                                          "save into the model.ckpt, then export again")
                    labels = numpy.array([s.label for s in load_dataset(data, which).test])
                    if note := one_class_note(labels, which or str(data)):
                        raise EdgekdError(f"--save-threshold needs defective and normal test images, but {note}; "
                                          f"{path} keeps its thresholds (use 'edgekd calibrate' with good frames)")
                result = evaluate(runtime, data, which, out, str(path), progress, batch_size)
            rows.append({**result.row, "backend": runtime.backend, "precision": runtime.info.precision})
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




@app.command(help="List model families and teacher backbones.")
def models():
    from edgekd.backbones import BACKBONES
    from edgekd.models import available_models
    _echo("models:   " + ", ".join(available_models()))
    _echo("teachers: " + ", ".join(BACKBONES))

"""The `edgekd` command line. Each command is a thin layer over one module; user errors print one line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from edgekd.errors import EdgekdError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Knowledge-distillation anomaly detection: data, training, evaluation and prediction.")
data_app = typer.Typer(no_args_is_help=True, help="Create and inspect datasets.")
app.add_typer(data_app, name="data", help="Create and inspect datasets (synthetic data, layout check).")

DEVICE = typer.Option("auto", "--device", help="auto, cpu or cuda[:N].")
BATCH = typer.Option(16, "--batch-size", min=1, help="Images per forward pass.")


def _echo(text: str) -> None:
    typer.echo(text)


@data_app.command("synth", help="Generate the built-in synthetic industrial dataset (MVTec AD layout).")
def data_synth(root: Path = typer.Argument(..., help="Folder to write categories into."),
               categories: str = typer.Option("all", help="Comma-separated categories or 'all'."),
               seed: int = typer.Option(0, help="Same seed, same images."),
               size: int = typer.Option(256, min=64, help="Image side in pixels."),
               train: int = typer.Option(160, "--train", min=2, help="Normal training images per category."),
               test_good: int = typer.Option(40, "--test-good", min=1, help="Normal test images per category."),
               per_defect: int = typer.Option(8, "--per-defect", min=1, help="Test images per defect type."),
               overwrite: bool = typer.Option(False, help="Replace categories that already exist.")):
    from edgekd.data.synth import parse_categories, synthesize
    from edgekd.progress import make_progress
    names = parse_categories(categories)
    with make_progress() as progress:
        written = synthesize(root, names, seed, size, train, test_good, per_defect, overwrite, progress)
    _echo(f"wrote {len(written)} categories to {root}: {', '.join(p.name for p in written)}")


@data_app.command("info", help="Check a dataset folder's layout and count its images.")
def data_info(root: Path = typer.Argument(..., help="Dataset root."),
              category: Optional[str] = typer.Option(None, help="Category sub-folder (MVTec layouts).")):
    from collections import Counter

    from edgekd.data.layouts import load_dataset
    dataset = load_dataset(root, category)
    defects = Counter(s.defect for s in dataset.test)
    _echo(f"{dataset.root}: layout {dataset.layout}, {len(dataset.train)} normal training images, "
          f"{len(dataset.test)} test images ({', '.join(f'{k} {v}' for k, v in sorted(defects.items()))})")


@app.command(help="Train a detector on normal images and write runs/<name>/model.ckpt.")
def train(config: Optional[Path] = typer.Option(None, help="YAML config (see configs/); default: RD with the Lite0 teacher."),
          data: Path = typer.Option(..., help="Dataset root (MVTec AD/LOCO or folder layout)."),
          category: Optional[str] = typer.Option(None, help="Category sub-folder, e.g. wood or bottle."),
          out: Optional[Path] = typer.Option(None, help="Run folder (default runs/<category>)."),
          set_: List[str] = typer.Option([], "--set", help="Override a config value: KEY=VALUE, e.g. train.epochs=5."),
          epochs: Optional[int] = typer.Option(None, min=1, help="Shortcut for --set train.epochs=N."),
          device: Optional[str] = typer.Option(None, help="Shortcut for --set train.device=..."),
          weights: Optional[Path] = typer.Option(None, help="Teacher weights file (default: offline wheel / hub cache)."),
          resume: bool = typer.Option(False, help="Continue from <out>/last.ckpt.")):
    from edgekd.config import load_config
    from edgekd.train import train as run_training
    overrides = list(set_)
    overrides += [f"train.epochs={epochs}"] if epochs else []
    overrides += [f"train.device={device}"] if device else []
    overrides += [f"teacher_weights={weights}"] if weights else []
    cfg = load_config(config, overrides)
    out = out or Path("runs") / (category or Path(data).name)
    result = run_training(cfg, data, category, out, resume)
    t = result.thresholds
    _echo(f"trained {cfg['model']} ({cfg['teacher']}) for {result.epochs} epochs on {result.device} in "
          f"{result.seconds:.0f}s, final loss {result.final_loss:.4f}")
    _echo(f"thresholds from held-out normal images: image {t['image']:.4f}, pixel {t['pixel']:.4f}")
    _echo(f"checkpoint: {result.checkpoint}\nnext: edgekd eval {result.checkpoint} --data {data}"
          + (f" --category {category}" if category else ""))


@app.command("eval", help="Evaluate checkpoints: metrics table, JSON + Markdown results, PNG montage.")
def eval_(checkpoints: List[Path] = typer.Argument(..., help="One or more model.ckpt files."),
          data: Path = typer.Option(..., help="Dataset root."),
          category: Optional[str] = typer.Option(None, help="Category (default: the one each checkpoint was trained on)."),
          out: Optional[Path] = typer.Option(None, help="Results folder (default <run>/eval)."),
          batch_size: int = BATCH, device: str = DEVICE,
          save_threshold: bool = typer.Option(False, help="Store F1-optimal thresholds from these labels in the checkpoint.")):
    from edgekd.calibration import thresholds_from_labels
    from edgekd.checkpoint import load_checkpoint, update_checkpoint
    from edgekd.device import resolve_device
    from edgekd.evaluate import markdown_table, write_results
    from edgekd.evaluate import evaluate as run_eval
    from edgekd.inference import run_model
    from edgekd.progress import make_progress
    torch_device = resolve_device(device)
    out = out or (checkpoints[0].parent / "eval")
    rows = []
    with make_progress() as progress:
        for path in checkpoints:
            model, payload = load_checkpoint(path)
            model.to(torch_device)
            cat = category or payload.get("training", {}).get("category")
            infer = lambda images, model=model: run_model(model, images, batch_size, torch_device, progress, "evaluate")
            result = run_eval(infer, data, cat, model.input_size, out, payload.get("thresholds"), str(path), progress)
            rows.append(result.row)
            if save_threshold:
                update_checkpoint(path, thresholds=thresholds_from_labels(result.labels, result.scores,
                                                                          result.masks, result.maps))
    json_path, md_path = write_results(rows, out)
    _echo(markdown_table(rows))
    _echo(f"results: {json_path}, {md_path}; montages: {', '.join(r['montage'] for r in rows)}")
    if save_threshold:
        _echo("stored F1-optimal thresholds in " + ", ".join(map(str, checkpoints)))


@app.command(help="Score images with a checkpoint: a mask and an overlay per image.")
def predict(checkpoint: Path = typer.Argument(..., help="model.ckpt"),
            images: List[Path] = typer.Argument(..., help="Image files."),
            out: Path = typer.Option(Path("preds"), help="Output folder."),
            threshold: Optional[float] = typer.Option(None, help="Override the image and pixel threshold."),
            batch_size: int = BATCH, device: str = DEVICE):
    from edgekd.checkpoint import load_checkpoint
    from edgekd.device import resolve_device
    from edgekd.inference import run_model
    from edgekd.predict import predict_images
    torch_device = resolve_device(device)
    model, payload = load_checkpoint(checkpoint)
    model.to(torch_device)
    thresholds = dict(payload["thresholds"])
    if threshold is not None:
        thresholds.update(image=threshold, pixel=threshold)
    records = predict_images(lambda im: run_model(model, im, batch_size, torch_device), images, model.input_size,
                             thresholds, out, payload.get("score_stats"))
    for r in records:
        verdict = "ANOMALOUS" if r["anomalous"] else "normal"
        _echo(f"{r['image']}: score {r['score']:.4f} {verdict} ({r['defect_pixels']} defect pixels) -> {r['overlay']}")
    _echo(f"wrote masks, overlays and predictions.json to {out}")


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
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()

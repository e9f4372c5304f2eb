"""`edgekd data`: synthetic data, a layout check, line videos."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgekd.cli.common import (_echo, data_app)
from edgekd.errors import EdgekdError


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

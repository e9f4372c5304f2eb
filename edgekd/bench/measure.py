"""Speed, memory and accuracy of benchmark rows, measured so that they hold on a noisy machine.

Every row is warmed up, then timed in interleaved rounds (A B C A B C ...): a slow spell of the machine hits all
rows alike, so their ratios hold even when absolute figures drift. Latency is per call of the row's batch size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekd.bench.timing import noise, rotated, timed_turn
from edgekd.bench.plan import FAILED, OK, Row
from edgekd.data.images import to_model_input
from edgekd.errors import EdgekdError


def batch_input(images: np.ndarray, batch: int) -> np.ndarray:
    """A model-input batch of real frames (repeated when the sample is smaller than the batch)."""
    picks = np.arange(batch) % len(images)
    return to_model_input(images[picks])


def warm_up(row: Row, runtime, images: np.ndarray, calls: int = 3) -> None:
    """First calls allocate, compile and tune; they are not timed."""
    batch = batch_input(images, row.batch)
    for _ in range(calls):
        runtime.run(batch)


def probe_memory(row: Row, device: str) -> None:
    """Peak resident memory (and GPU memory, on a GPU) of the row's artifact at its batch size, in a process of its
    own: what loading it and running its calls take above an interpreter with edgekd imported."""
    import json
    import subprocess
    import sys
    try:
        done = subprocess.run([sys.executable, "-m", "edgekd.bench.memprobe", str(row.artifact), row.backend, device,
                               str(row.batch)], capture_output=True, text=True, timeout=600)
        measured = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else {}
    except (subprocess.SubprocessError, OSError, ValueError, IndexError):
        measured = {}
    row.results["mem_mb"] = measured.get("mem_mb")
    gpu = measured.get("gpu_peak_mb")
    row.results["gpu_peak_mb"] = round(gpu, 1) if gpu is not None else None


def interleaved_timing(rows: list[Row], runtimes: dict, images: np.ndarray, rounds: int, seconds_per_turn: float,
                       progress=None, task=None, between_rounds=lambda: None) -> None:
    """Each round gives every row one turn of about `seconds_per_turn`, in rotating order, as edgekd/bench/timing.py
    defines it; the latency of every call is kept. `between_rounds` may raise to stop (Ctrl-C)."""
    samples: dict = {row.key: [] for row in rows}
    round_medians: dict = {row.key: [] for row in rows}
    batches = {row.key: batch_input(images, row.batch) for row in rows}
    for round_index in range(rounds):
        between_rounds()
        for row in rotated(rows, round_index):
            runtime, batch = runtimes[row.key], batches[row.key]
            turn = timed_turn(lambda: runtime.run(batch), seconds=seconds_per_turn)
            samples[row.key] += turn
            round_medians[row.key].append(float(np.median(turn)))
            if progress is not None:
                progress.advance(task)
    for row in rows:
        latency = np.array(samples[row.key]) * 1e3
        p50 = float(np.percentile(latency, 50))
        spread = noise(round_medians[row.key])  # the run's own noise
        row.results.update({"ms_p50": round(p50, 3), "ms_p99": round(float(np.percentile(latency, 99)), 3),
                            "calls": int(latency.size), "fps": round(row.batch * 1e3 / p50, 2),
                            "noise": round(spread, 4) if spread is not None else None})


def accuracy(runtime, data: Path, category: str | None, out: Path, name: str, batch: int) -> dict:
    """Image AUROC, pixel AUROC, AUPRO and the masks' median Dice and area ratio (at the artifact's pixel threshold)
    on the test split, as `edgekd eval` computes them."""
    from edgekd.evaluate import evaluate
    row = evaluate(runtime, data, category, out, name, batch_size=batch).row
    masks = row.get("masks", {})
    return {**{k: row[k] for k in ("image_auroc", "pixel_auroc", "aupro")},
            "dice": masks.get("dice_median"), "area_ratio": masks.get("area_ratio_median")}


def add_ratios(rows: list[Row], references: tuple[str, ...]) -> None:
    """fps / fps of the reference family's row with the same backend, precision and batch (same rounds)."""
    by_family = {}
    for row in rows:
        if row.status == OK:
            by_family.setdefault((row.model.family, row.backend, row.precision, row.batch), row)
    for row in rows:
        for family in references:
            reference = by_family.get((family, row.backend, row.precision, row.batch))
            value = None
            if row.status == OK and reference is not None and reference.results.get("fps"):
                value = round(row.results["fps"] / reference.results["fps"], 3)
            row.results[f"x_{family}"] = value


def add_drops(rows: list[Row]) -> None:
    """Points each metric lost against the same model's FP32 row (same backend, else torch)."""
    fp32 = {}
    for row in rows:
        if row.status == OK and row.precision == "fp32" and "image_auroc" in row.results:
            fp32.setdefault((row.model.name, row.backend), row)
            fp32.setdefault((row.model.name, "any"), row)
    for row in rows:
        if row.status != OK or "image_auroc" not in row.results:
            continue
        reference = fp32.get((row.model.name, row.backend)) or fp32.get((row.model.name, "any"))
        if reference is not None and reference is not row:
            row.results["drop_points"] = {k: round(100 * (reference.results[k] - row.results[k]), 3)
                                          for k in ("image_auroc", "pixel_auroc", "aupro")}


def end_to_end(runtime, source: str, batch: int, jsonl: Path) -> dict:
    """Decode -> preprocess -> infer -> postprocess -> JSONL through `edgekd run`'s runner: its frames per second."""
    from edgekd.calibration import Thresholds
    from edgekd.stream.runner import RunOptions, Runner
    from edgekd.sinks import JsonlSink
    from edgekd.stream.sources import open_source
    stream = open_source(source)
    sink = JsonlSink(jsonl)
    thresholds = Thresholds.resolve(runtime.thresholds, None) if runtime.thresholds.get("image") is not None \
        else Thresholds(float("inf"), float("inf"))
    summary = Runner(stream, runtime, [sink], RunOptions(thresholds, max_batch=batch, stats_every=0.0),
                     log=lambda text: None).run()
    if not summary.get("processed"):
        raise EdgekdError(f"--source {source} delivered no frames")
    return {"e2e_fps": summary["mean_fps"], "e2e_frames": summary["processed"]}


def mark_failed(row: Row, exc: BaseException) -> None:
    message = str(exc) if isinstance(exc, EdgekdError) else f"{type(exc).__name__}: {exc}"
    row.fail(FAILED, message)

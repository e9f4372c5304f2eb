"""One benchmark run, start to end: models -> artifacts -> runtimes -> interleaved timing -> accuracy -> report.

A row that cannot run here (no GPU for an engine, a refused export, a failed build) keeps its status and reason and
the others go on. Ctrl-C stops the measuring; the report then holds the rows finished so far.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgekd.bench.measure import (accuracy, add_drops, add_ratios, end_to_end, interleaved_timing, mark_failed,
                                  probe_memory, warm_up)
from edgekd.bench.plan import FAILED, INTERRUPTED, OK, REFERENCES, Model, Row, plan_rows
from edgekd.bench.prepare import NotRunnable, artifact_for
from edgekd.errors import EdgekdError


@dataclass
class Settings:
    backends: list[str]
    precisions: list[str]
    batches: list[int]
    data: Path | None = None
    category: str | None = None
    rounds: int = 5
    seconds_per_turn: float = 0.25
    device: str = "auto"
    source: str | None = None  # a video for the end-to-end figure
    max_drop: float = 1.0
    accuracy: bool = True


@dataclass
class Outcome:
    rows: list[Row]
    started: str
    seconds: float
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)


def _dataset_of(model: Model, settings: Settings) -> tuple[Path, str | None]:
    """--data/--category when given, else the data the checkpoint was trained on."""
    if settings.data is not None:
        return settings.data, settings.category
    if model.checkpoint is None:
        raise EdgekdError(f"{model.fixed or model.name} runs as it is: pass --data and --category for its accuracy "
                          "and sample frames")
    from edgekd.checkpoint import read_checkpoint
    training = read_checkpoint(model.checkpoint).get("training", {})
    if not training.get("data"):
        raise EdgekdError(f"{model.checkpoint} does not say what it was trained on: pass --data and --category")
    return Path(training["data"]), training.get("category_arg") or training.get("category")


def _sample_images(data: Path, category: str | None, size: tuple[int, int]):
    from edgekd.data.layouts import load_dataset
    from edgekd.data.loading import load_images
    return load_images(load_dataset(data, category).test[:32], size)


class CtrlC:
    """Ctrl-C stops the measuring. The handler raises KeyboardInterrupt as Python's own does, and also remembers
    the request: if a library swallows the exception (once seen in CI, where the run then went on to its end), the
    request is still honoured at the next check between phases, rows and rounds."""

    def __init__(self):
        self.requested = False
        self.previous = None

    def __enter__(self) -> "CtrlC":
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True
        raise KeyboardInterrupt

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def run_benchmark(models: list[Model], settings: Settings, out: Path, cache: Path, progress=None,
                  log=lambda text: None) -> Outcome:
    with CtrlC() as ctrl_c:
        return _run_benchmark(models, settings, out, cache, progress, log, ctrl_c)


def _run_benchmark(models: list[Model], settings: Settings, out: Path, cache: Path, progress, log,
                   ctrl_c: CtrlC) -> Outcome:
    from edgekd.runtime import open_runtime
    started, clock = time.strftime("%Y-%m-%d %H:%M:%S%z"), time.monotonic()
    rows = plan_rows(models, settings.backends, settings.precisions, settings.batches)
    groups: dict[tuple, list[Row]] = {}
    for row in rows:
        groups.setdefault((row.model.name, row.backend, row.precision), []).append(row)
    runtimes, opened = {}, []
    outcome = Outcome(rows, started, 0.0)
    trained_on: dict = {}  # each checkpoint is read once for where it was trained, not once per row group

    def dataset_of(model: Model) -> tuple[Path, str | None]:
        if model.checkpoint not in trained_on:
            trained_on[model.checkpoint] = _dataset_of(model, settings)
        return trained_on[model.checkpoint]

    try:
        task = progress.add_task("prepare", total=len(groups)) if progress else None
        for (_, backend, precision), members in groups.items():
            ctrl_c.check()
            model = members[0].model
            try:
                if model.error is not None:
                    raise NotRunnable(FAILED, model.error)
                data, category = dataset_of(model)
                path = artifact_for(model, backend, precision, max(r.batch for r in members), cache, data,
                                    category, settings.max_drop)
                runtime = open_runtime(path, backend, settings.device)
                opened.append(runtime)
                for row in members:
                    row.artifact, row.status = path, OK
                    row.results["artifact_mb"] = round(path.stat().st_size / 2**20, 2)
                    runtimes[row.key] = runtime
            except NotRunnable as exc:
                for row in members:
                    row.fail(exc.status, str(exc))
            except (EdgekdError, RuntimeError, ValueError, OSError) as exc:
                for row in members:
                    mark_failed(row, exc)
            if progress:
                progress.advance(task)
            log(f"prepared {model.name} {backend} {precision}: {members[0].status}"
                + (f" ({members[0].reason})" if members[0].reason else ""))

        ready = [row for row in rows if row.status == OK]
        if ready:
            sampled = next((m for m in models if m.checkpoint is not None), models[0])
            images = _sample_images(*dataset_of(sampled), runtimes[ready[0].key].input_size)
            task = progress.add_task("warm up", total=len(ready)) if progress else None
            for row in list(ready):
                ctrl_c.check()
                try:
                    warm_up(row, runtimes[row.key], images)
                except Exception as exc:  # a runtime that fails on this batch size fails its row only
                    mark_failed(row, exc)
                    ready.remove(row)
                if progress:
                    progress.advance(task)
            task = progress.add_task("memory (a process per row)", total=len(ready)) if progress else None
            for row in ready:
                ctrl_c.check()
                probe_memory(row, settings.device)
                if progress:
                    progress.advance(task)
            task = progress.add_task("timing (interleaved)", total=settings.rounds * len(ready)) if progress else None
            interleaved_timing(ready, runtimes, images, settings.rounds, settings.seconds_per_turn, progress, task,
                               between_rounds=ctrl_c.check)
            measured_accuracy: dict = {}
            task = progress.add_task("accuracy", total=len(ready)) if progress and settings.accuracy else None
            for row in ready if settings.accuracy else []:
                ctrl_c.check()
                group = (row.model.name, row.backend, row.precision)
                if group not in measured_accuracy:
                    data, category = dataset_of(row.model)
                    name = f"{row.model.name}-{row.backend}-{row.precision}"
                    measured_accuracy[group] = accuracy(runtimes[row.key], data, category, out / "eval" / name,
                                                        name, min(row.batch, 16))
                row.results.update(measured_accuracy[group])
                if progress:
                    progress.advance(task)
            if settings.source:
                for row in ready:
                    row.results.update(end_to_end(runtimes[row.key], settings.source, row.batch,
                                                  out / "e2e" / f"{row.label.replace(' ', '_')}.jsonl"))
    except KeyboardInterrupt:
        outcome.interrupted = True
        for row in rows:
            if row.status in (OK, "pending") and "fps" not in row.results:
                row.fail(INTERRUPTED, "stopped by Ctrl-C before this row was measured")
        outcome.notes.append("interrupted by Ctrl-C: the rows finished so far")
    finally:
        for runtime in opened:
            runtime.close()
    add_ratios(rows, REFERENCES)
    add_drops(rows)
    outcome.seconds = round(time.monotonic() - clock, 1)
    return outcome

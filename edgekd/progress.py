"""Progress for long work (synthesis, feature caching, training, evaluation): a live bar on a terminal, plain
lines at an interval everywhere else (a log file, CI, nohup, systemd), so a long run is never silent."""

from __future__ import annotations

import os
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


class EdgekdProgress(Progress):
    """Rich progress whose tasks may carry a live `info` text (loss, epoch).

    Its display starts with the first task, so a command that fails before any long work prints its one error line
    and nothing else (an empty display still ends in a blank line)."""

    shown = False

    def start(self) -> None:
        pass

    def add_task(self, description: str, *args, info: str = "", **kwargs):
        if not self.shown:
            self.shown = True
            super().start()
        return super().add_task(description, *args, info=info, **kwargs)

    def stop(self) -> None:
        if self.shown:
            super().stop()


def plain_every_s() -> float:
    """Seconds between plain progress lines: $EDGEKD_PROGRESS_EVERY, else 30."""
    try:
        return max(0.0, float(os.environ.get("EDGEKD_PROGRESS_EVERY", "30")))
    except ValueError:
        return 30.0


class PlainProgress(EdgekdProgress):
    """The same tasks, written as one line each per interval and when a task finishes, e.g.
    `train 120/2000 (6%) epoch 2/30 loss 0.1234, 0:01:02 elapsed, ETA 0:15:30`; nothing is drawn in place."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.every = plain_every_s()
        self.logged: dict = {}  # task -> when its last line was written
        self.done: set = set()  # tasks whose final line is written

    def add_task(self, description: str, *args, info: str = "", **kwargs):
        self.shown = True  # no live display to start
        task_id = Progress.add_task(self, description, *args, info=info, **kwargs)
        self.logged[task_id] = time.monotonic()
        return task_id

    def update(self, task_id, *args, **kwargs) -> None:
        super().update(task_id, *args, **kwargs)
        self._maybe_log(task_id)

    def advance(self, task_id, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._maybe_log(task_id)

    def stop(self) -> None:
        pass

    def _maybe_log(self, task_id) -> None:
        task = self._tasks[task_id]
        now = time.monotonic()
        if task_id in self.done:
            return
        if task.finished or now - self.logged[task_id] >= self.every:
            self.logged[task_id] = now
            if task.finished:
                self.done.add(task_id)
            self.console.print(plain_line(task), highlight=False, soft_wrap=True)


def plain_line(task) -> str:
    done, total = task.completed, task.total
    share = f" ({100 * done / total:.0f}%)" if total else ""
    count = f"{done:g}/{total:g}" if total else f"{done:g}"
    clock = lambda seconds: time.strftime("%H:%M:%S", time.gmtime(seconds)) if seconds is not None else "?"
    eta = "" if task.finished else f", ETA {clock(task.time_remaining)}"
    info = f" {task.fields.get('info')}" if task.fields.get("info") else ""
    return f"{task.description} {count}{share}{info}, {clock(task.elapsed)} elapsed{eta}"


def make_progress(enabled: bool = True) -> Progress:
    """enabled=False: the same object, showing nothing (the other ranks of a distributed run). Not on a terminal:
    plain lines (PlainProgress)."""
    kind = EdgekdProgress if console.is_terminal or not enabled else PlainProgress
    return kind(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"),
                          TimeRemainingColumn(), console=console, disable=not enabled)

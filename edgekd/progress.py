"""Progress bars for long work (synthesis, feature caching, training, evaluation)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


class EdgekdProgress(Progress):
    """Rich progress whose tasks may carry a live `info` text (loss, epoch)."""

    def add_task(self, description: str, *args, info: str = "", **kwargs):
        return super().add_task(description, *args, info=info, **kwargs)


def make_progress() -> Progress:
    return EdgekdProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"),
                          TimeRemainingColumn(), console=console)

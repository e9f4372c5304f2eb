"""Progress bars for long work (synthesis, feature caching, training, evaluation)."""

from __future__ import annotations

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


def make_progress(enabled: bool = True) -> Progress:
    """enabled=False: the same object, showing nothing (the other ranks of a distributed run)."""
    return EdgekdProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"),
                          TimeRemainingColumn(), console=console, disable=not enabled)

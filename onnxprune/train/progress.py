"""A training progress bar (rich, on stderr; silent when disabled or not a terminal)."""

from __future__ import annotations

from contextlib import contextmanager
from collections.abc import Iterator


class ProgressBar:
    def __init__(self, progress, task) -> None:  # noqa: ANN001
        self._progress, self._task = progress, task

    def update(self, step: int, total: int, loss: float | None = None, note: str = "") -> None:
        if self._progress is None:
            return
        text = f"loss {loss:.4f}" if loss is not None else ""
        self._progress.update(self._task, completed=step, total=total, info=f"{text} {note}".strip())


@contextmanager
def progress_bar(enabled: bool, description: str, total: int) -> Iterator[ProgressBar]:
    if not enabled:
        yield ProgressBar(None, None)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[info]}"), console=console, transient=True,
                  disable=not console.is_terminal) as progress:
        task = progress.add_task(description, total=total, info="")
        yield ProgressBar(progress, task)

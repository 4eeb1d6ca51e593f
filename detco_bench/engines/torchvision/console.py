"""What a run of the torchvision engine tells people: ``log.txt`` and the rich progress bars."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class RunLog:
    """``log.txt`` in the output folder (rank 0 only), plus the console for the lines called with
    ``echo=True``."""

    def __init__(self, out: Path, rank: int, console: Console | None = None) -> None:
        self.rank = rank
        self.path = out / "log.txt" if rank == 0 else None
        self.console = console

    def __call__(self, message: str, echo: bool = False) -> None:
        if self.path is None:
            return
        stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        with self.path.open("a", encoding="utf-8") as f:
            for line in str(message).splitlines() or [""]:
                f.write(f"[{stamp}] {line}\n")
        if echo and self.console is not None:
            self.console.print(message, markup=False, highlight=False)


class ProgressBar:
    """A rich progress bar on rank 0; every method is a no-op on the other ranks."""

    def __init__(self, rank: int, total: int, console: Console, label: str = "train", start: int = 0) -> None:
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        if rank != 0:
            return
        self.progress = Progress(
            TextColumn(f"[bold]{label}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.task = self.progress.add_task("train", total=total, completed=start, info="")

    def start(self) -> None:
        if self.progress is not None:
            self.progress.start()

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()

    def update(self, completed: int, info: str) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, completed=completed, info=info)

    def advance(self, n: int) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task, n)

"""Progress bars for the tools' long runs (bench rounds, the stall experiment, attacks, soak).

Every run longer than a few seconds shows what is running now and the time left, on
stderr, so the results on stdout stay clean to pipe. When stderr is not a terminal (CI
logs, ``2> file``) the bar is disabled and prints nothing at all.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)


def progress_bar(console: Console | None = None) -> Progress:
    """A rich ``Progress`` showing "description, bar, percent, time left"; silent off a
    terminal. Use it as a context manager and add one task per thing that runs."""
    console = console or Console(stderr=True)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
        transient=True,
    )

"""The one progress bar (DESIGN.md): the Trainer's epochs, dqn's environment steps and
diffusion's sampling steps all show it on stderr, with their ETA and a line of live figures;
`--quiet` silences it."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def progress_bar(quiet: bool = False, unit: str = "") -> Progress:
    """A rich progress bar on stderr: description, bar, done/total (in `unit`), live info,
    elapsed time and ETA. It redraws only when updated with refresh=True (no thread), and
    disappears when done. Add its tasks with `add_task` below."""
    count = "{task.completed:,.0f}/{task.total:,.0f}" + (f" {unit}" if unit else "")
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn(count),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        auto_refresh=False,
        transient=True,
        disable=quiet,
    )


def add_task(bar: Progress, description: str, total: float, completed: float = 0) -> TaskID:
    """A new task on `bar` (with its empty info line), drawn at once."""
    task = bar.add_task(description, total=total, completed=completed, info="")
    bar.refresh()
    return task

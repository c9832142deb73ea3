"""One progress-bar layout for every long loop: training runs, building cached networks."""

from __future__ import annotations

from typing import Any


def progress_bar(counts: bool = False, disable: bool = False, console: Any = None) -> Any:
    """A rich `Progress`: the task's description, a bar, its percentage (`counts`: done/total
    instead), the task's `info` field (add tasks with `info=""`), elapsed and remaining time.

    `disable` shows nothing (ranks other than 0, `progress=False`); `console` is where to draw
    (rich's default console, stdout, if None)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    amount = "{task.completed}/{task.total}" if counts else "{task.percentage:>5.1f}%"
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn(amount),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console, transient=False, disable=disable)

"""One progress-bar layout for every long loop: training runs, building cached networks, evaluation.

Bars draw on one shared console on stderr (stdout keeps the results), so a bar opened while another
is shown (a suite's own scoring bar under `rtdmd-bench eval`'s bars) nests below it instead of
fighting it for the terminal (rich >= 14.1 nests live displays of one console).
"""

from __future__ import annotations

from typing import Any

_console: Any = None


def bars_console() -> Any:
    """The console every bar draws on unless told otherwise: stderr, shared."""
    global _console
    if _console is None:
        from rich.console import Console

        _console = Console(stderr=True)
    return _console


def progress_bar(counts: bool = False, disable: bool = False, console: Any = None) -> Any:
    """A rich `Progress`: the task's description, a bar, its percentage (`counts`: done/total
    instead), the task's `info` field (add tasks with `info=""`), elapsed and remaining time.

    `disable` shows nothing (ranks other than 0, `progress=False`); `console` is where to draw
    (the shared stderr console, `bars_console()`, if None)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    amount = "{task.completed}/{task.total}" if counts else "{task.percentage:>5.1f}%"
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn(amount),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console or bars_console(), transient=False, disable=disable)


class EvalBars:
    """What `rtdmd-bench eval` shows on a `progress_bar(counts=True)`: the suites done (with the time
    left over the suites), and for each suite its generation (prompts done of this process's share,
    with the time left) and its scoring (a suite scores in one call: done or not, with the time it
    has taken; a suite's own inner bar, e.g. GenEval2's judge, nests below). `evaluate_suite` calls
    `generating` and `scoring`."""

    def __init__(self, bar: Any, num_suites: int) -> None:
        self.bar = bar
        self.suites = bar.add_task("eval: suites", total=num_suites, info="")
        self.tasks: dict[str, Any] = {}

    def _task(self, description: str, total: int) -> Any:
        if description not in self.tasks:
            self.tasks[description] = self.bar.add_task(description, total=total, info="")
        return self.tasks[description]

    def generating(self, label: str, done: int, total: int) -> None:
        """`done` of `total` prompts of `label` (a suite, or its teacher reference) generated or read."""
        self.bar.update(self._task(f"{label}: generate", total), completed=done, total=total)

    def scoring(self, suite: str, finished: bool) -> None:
        """`suite` starts (False) or ends (True) scoring; an ended suite counts as done."""
        task = self._task(f"{suite}: score", 1)
        if finished:
            self.bar.update(task, completed=1)
            self.bar.advance(self.suites)
            self.tasks = {}  # suites run one after another: a suite evaluated again gets new bars

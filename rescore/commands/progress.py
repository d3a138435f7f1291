"""Rich progress display for long generation and scoring runs (units, rows, rows/s, tokens/s, ETA); without a
terminal, the plain lines of :class:`rescore.gen.progress.LineProgress` (what Slurm jobs write too)."""

from __future__ import annotations

import sys
import time
from typing import Any

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

from rescore.commands.common import out_console
from rescore.gen.progress import LineProgress


class RichProgress(LineProgress):
    def __init__(self, console: Console | None = None, *, enabled: bool | None = None) -> None:
        super().__init__()  # stderr, looked up when written
        self.console = console or out_console(stderr=True, soft_wrap=True)
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._p: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> RichProgress:
        if self.enabled:
            self._p = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
                TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=self.console, transient=False,
            )
            self._p.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._p is not None:
            self._p.__exit__(*exc)

    def write(self, text: str) -> None:
        if self._p is not None:  # above the live bar
            self.console.print(text, highlight=False, markup=False)
        else:
            super().write(text)

    def start_unit(self, index: int, count: int, plan: Any, total: int, done: int) -> None:
        if self._p is None:
            super().start_unit(index, count, plan, total, done)
            return
        self._rows, self._tokens, self._t0 = 0, 0, time.perf_counter()
        desc = f"[{index + 1}/{count}] {plan.label}"
        self._task = self._p.add_task(desc, total=total, completed=done, rate="")

    def advance(self, rows: int) -> None:
        super().advance(rows)
        if self._p is not None and self._task is not None:
            dt = max(time.perf_counter() - self._t0, 1e-9)
            rate = f"{self._rows / dt:,.1f} rows/s"
            if self._tokens:
                rate += f" {self._tokens / dt:,.0f} tok/s"
            self._p.update(self._task, advance=rows, rate=rate)

    def end_unit(self) -> None:
        if self._p is None:
            super().end_unit()

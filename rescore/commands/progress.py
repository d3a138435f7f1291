"""Rich progress display for long generation and scoring runs (units, rows, rows/s, tokens/s, ETA)."""

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
from rescore.gen.runner import Progress as UnitProgress


class RichProgress(UnitProgress):
    def __init__(self, console: Console | None = None, *, enabled: bool | None = None) -> None:
        self.console = console or out_console(stderr=True, soft_wrap=True)
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._p: Progress | None = None
        self._task: TaskID | None = None
        self._tokens = 0
        self._t0 = time.perf_counter()
        self._rows = 0

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

    def start_unit(self, index: int, count: int, plan: Any, total: int, done: int) -> None:
        self._tokens, self._rows, self._t0 = 0, 0, time.perf_counter()
        desc = f"[{index + 1}/{count}] {plan.label}"
        if self._p is not None:
            self._task = self._p.add_task(desc, total=total, completed=done, rate="")
        else:
            resumed = f" (resuming at {done})" if done else ""
            self.console.print(f"{desc}: {total} rows{resumed}", highlight=False)

    def advance(self, rows: int) -> None:
        self._rows += rows
        if self._p is not None and self._task is not None:
            dt = max(time.perf_counter() - self._t0, 1e-9)
            rate = f"{self._rows / dt:,.1f} rows/s"
            if self._tokens:
                rate += f" {self._tokens / dt:,.0f} tok/s"
            self._p.update(self._task, advance=rows, rate=rate)

    def tokens(self, n: int) -> None:
        self._tokens += n

    def end_unit(self) -> None:
        if self._p is None:
            dt = max(time.perf_counter() - self._t0, 1e-9)
            tok = f", {self._tokens / dt:,.0f} tok/s" if self._tokens else ""
            self.console.print(f"  done: {self._rows} rows in {dt:.1f}s ({self._rows / dt:,.1f} rows/s{tok})",
                               highlight=False)

    def message(self, text: str) -> None:
        self.console.print(text, highlight=False)

"""Plain progress lines and the generation summary, shared by every way of running units: ``rescore gen`` and
``rescore backfill`` without a live bar (``--no-progress``, or output to a file), the sbatch script's array
tasks and the submitit job function. One line when a unit starts and one when it is done, with the unit's
place in the job and its counts; no colour codes or carriage returns, so a Slurm log reads like a terminal.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from rescore.gen.runner import Progress, UnitPlan, UnitResult


def start_line(index: int, count: int, plan: UnitPlan, total: int, done: int) -> str:
    resumed = f" (resuming at {done})" if done else ""
    return f"[{index + 1}/{count}] {plan.label}: {total} rows{resumed}"


def done_line(index: int, count: int, rows: int, seconds: float, tokens: int) -> str:
    dt = max(seconds, 1e-9)
    tok = f", {tokens / dt:,.0f} tok/s" if tokens else ""
    return f"[{index + 1}/{count}] done: {rows} rows in {dt:.1f}s ({rows / dt:,.1f} rows/s{tok})"


def summary_line(results: Sequence[UnitResult]) -> str:
    """The last line of a run: how many units were generated, resumed, already complete or left alone."""
    n = {a: sum(1 for r in results if r.action == a) for a in ("generated", "resumed", "skipped", "damaged", "locked")}
    return (f"{len(results)} units: {n['generated']} generated, {n['resumed']} resumed, {n['skipped']} already complete"
            + (f", {n['damaged']} damaged (left as they are)" if n["damaged"] else "")
            + (f", {n['locked']} being written by another process" if n["locked"] else ""))


def summarize(results: Sequence[UnitResult], console: Any) -> None:
    """The generation summary: a table of the units (rich ``console``) and :func:`summary_line`."""
    from rich.table import Table

    t = Table(title="generation summary", show_lines=False)
    for col in ("run id", "model", "task", "seed", "action", "rows", "seconds"):
        t.add_column(col)
    for r in results:
        t.add_row(r.plan.run_id[:12], r.plan.model.name, r.plan.task.name, str(r.plan.seed), r.action,
                  f"{r.rows_written}/{r.rows_total}" if r.action != "skipped" else "-", f"{r.seconds:.1f}")
    console.print(t)
    console.print(summary_line(results), highlight=False)


def log_console(stream: TextIO | None = None) -> Any:
    """A rich console for a log file: no colour, wide enough that no table cuts a name (as `out_console` off a terminal)."""
    from rich.console import Console

    return Console(file=stream, width=1000, no_color=True, highlight=False, emoji=False)


class LineProgress(Progress):
    """:class:`rescore.gen.runner.Progress` as plain lines on ``stream`` (default: stderr when written)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self._index, self._count, self._rows, self._tokens = 0, 0, 0, 0
        self._t0 = time.perf_counter()

    def write(self, text: str) -> None:
        print(text, file=self.stream or sys.stderr, flush=True)

    def start_unit(self, index: int, count: int, plan: UnitPlan, total: int, done: int) -> None:
        self._index, self._count, self._rows, self._tokens = index, count, 0, 0
        self._t0 = time.perf_counter()
        self.write(start_line(index, count, plan, total, done))

    def advance(self, rows: int) -> None:
        self._rows += rows

    def tokens(self, n: int) -> None:
        self._tokens += n

    def end_unit(self) -> None:
        self.write(done_line(self._index, self._count, self._rows, time.perf_counter() - self._t0, self._tokens))

    def message(self, text: str) -> None:
        self.write(text)

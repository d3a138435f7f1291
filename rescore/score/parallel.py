"""Scoring units in worker processes: how many (CPUs, rows, memory) and stopping them cleanly."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor

import pyarrow.parquet as pq

from rescore.artifacts.integrity import (
    READ_ERRORS,
)
from rescore.artifacts.store import Unit
from rescore.score.spec import Metric


def _can_fork() -> bool:
    import multiprocessing

    return "fork" in multiprocessing.get_all_start_methods()


def needed_columns(specs: Iterable[Metric]) -> set[str]:
    """The unit columns scoring ``specs`` reads: theirs, plus sample_id and category (the subsets)."""
    return {"sample_id", "category"} | {c for s in specs for c in s.columns}



AUTO_JOBS_MIN_ROWS = 200_000  # below this many rows to score, worker processes cost more than they save


AUTO_JOBS_MAX = 8


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def auto_jobs(work: Sequence[tuple[Unit, Sequence[Metric]]]) -> int:
    """Processes for ``jobs=None``: one per usable CPU (at most 8, at most one per unit, and no more than
    half the available memory holds at once) when there are at least ``AUTO_JOBS_MIN_ROWS`` rows to
    score; else 1 (a compute thread and an I/O thread)."""
    rows = sum(int(u.manifest.get("rows_done") or 0) for u, _ in work)
    if rows < AUTO_JOBS_MIN_ROWS:
        return 1
    jobs = max(1, min(usable_cpus(), AUTO_JOBS_MAX, len(work)))
    if jobs == 1:
        return 1  # no footers to read for a memory bound
    per_worker = max((_unit_memory(u, specs) for u, specs in work), default=0)
    free = available_memory()
    if per_worker and free:  # the largest units run first and at once: keep them within half the free memory
        jobs = max(1, min(jobs, int(free // 2 // per_worker)))
    return jobs


def _unit_memory(unit: Unit, specs: Sequence[Metric]) -> int:
    """A generous estimate of a worker's memory for one unit: 3x the uncompressed size of the columns
    the specs read (the table, then the metrics' intermediate arrays)."""
    want = needed_columns(specs)
    try:
        md = pq.read_metadata(unit.parquet_path)
    except READ_ERRORS:
        return 0
    size = 0
    for g in range(md.num_row_groups):
        rg = md.row_group(g)
        for c in range(rg.num_columns):
            col = rg.column(c)
            if col.path_in_schema.split(".")[0] in want:
                size += col.total_uncompressed_size
    return 3 * size


def available_memory() -> int:
    """Bytes of memory available to new allocations (0 when unknown)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def _worker_signals(parent: int) -> None:
    """Workers leave Ctrl-C to the parent (which stops them), end quietly when it terminates them, and end
    when it dies (a kill -9 of it too) instead of waiting forever to hand it their results."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _restore_signals(_STOP_SIGNALS_BLOCKED)  # blocked by the parent around the fork (see score_store)
    from rescore.children import die_with_parent  # imported by the parent already

    die_with_parent(parent, signal.SIGTERM)


_STOP_SIGNALS_BLOCKED: set[int] | None = None  # the mask before _block_stop_signals, inherited by the workers


def _block_stop_signals() -> set[int] | None:
    import signal

    global _STOP_SIGNALS_BLOCKED
    if not hasattr(signal, "pthread_sigmask"):
        return None
    _STOP_SIGNALS_BLOCKED = set(signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM}))
    return _STOP_SIGNALS_BLOCKED


def _restore_signals(mask: set[int] | None) -> None:
    import signal

    if mask is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _stop(pool: ProcessPoolExecutor) -> None:
    """Cancel the queued units and end the running workers (score files are written atomically: a worker
    ended mid-write leaves a temporary file, never a partial score file)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())  # shutdown forgets them
    manager = getattr(pool, "_executor_manager_thread", None)  # and its thread
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    # the pool's thread ends once it sees its workers gone; waiting for it here means it is not still closing its
    # pipes while the interpreter exits (which races with concurrent.futures' exit hook and can print a traceback)
    if manager is not None and manager.is_alive():
        manager.join(timeout=30)


def _size(unit: Unit) -> int:
    try:
        return unit.parquet_path.stat().st_size
    except OSError:
        return 0

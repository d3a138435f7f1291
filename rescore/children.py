"""Child processes that die with their parent.

Local backfill workers and scoring processes are children of one command. When that command ends (SIGTERM,
Ctrl-C, or ``kill -9``) its children end too: none may go on generating, or wait forever to hand a result to
a parent that is gone.

- In a child, :func:`die_with_parent` asks Linux to send it SIGTERM when its parent dies
  (``prctl(PR_SET_PDEATHSIG)``); elsewhere, or where that call fails, a watchdog thread polls the parent pid and
  does the same. A child orphaned before it could ask is caught by the expected parent pid.
- A parent starts worker commands with :func:`spawn` (each in its own process group, so the terminal's Ctrl-C
  reaches only the parent, and with the parent pid in :data:`PARENT_ENV` for ``rescore`` to call
  :func:`die_with_parent` with), and on any way out passes SIGTERM on with :func:`stop` and waits for them: each
  worker gets exactly one signal, ends its batch and releases its locks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

PARENT_ENV = "RESCORE_PARENT_PID"  # set by spawn(): the pid a worker command must die with
STOP_GRACE_S = 30.0  # a worker that has not ended this long after SIGTERM is killed
_PR_SET_PDEATHSIG = 1


def _pdeathsig(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent(parent: int, sig: int = signal.SIGTERM, poll_s: float = 0.5) -> None:
    """Send ``sig`` to this process when its parent ``parent`` dies (already dead: at once). Call it in the
    child, after installing the handler of ``sig``."""
    watched = _pdeathsig(sig)
    if os.getppid() != parent:  # orphaned before the kernel (or the watchdog) was watching: nothing started yet
        print(f"error: the process that started this one (pid {parent}) has ended; stopping", file=sys.stderr)
        os._exit(128 + int(sig))
    if not watched:
        threading.Thread(target=_watch, args=(parent, sig, poll_s), daemon=True, name="rescore-parent-watch").start()


def _watch(parent: int, sig: int, poll_s: float) -> None:
    while os.getppid() == parent:
        time.sleep(poll_s)
    os.kill(os.getpid(), sig)


def die_with_parent_from_env() -> None:
    """In a worker command started by :func:`spawn`: die with that parent. The variable is removed, so this
    process's own children do not inherit a pid that is not their parent's."""
    raw = os.environ.pop(PARENT_ENV, None)
    if raw and raw.isdigit():
        die_with_parent(int(raw))


def spawn(cmds: Sequence[Sequence[str]]) -> list[subprocess.Popen[bytes]]:
    """Start one worker process per command, each in a new process group and told to die with this process.
    If one cannot start, those already started are stopped."""
    env = {**os.environ, PARENT_ENV: str(os.getpid())}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for cmd in cmds:
            procs.append(subprocess.Popen(list(cmd), env=env, process_group=0))
    except BaseException:
        stop(procs)
        raise
    return procs


def stop(procs: Sequence[subprocess.Popen[bytes]], sig: int = signal.SIGTERM, grace_s: float = STOP_GRACE_S) -> None:
    """Pass ``sig`` on to the workers still running, wait up to ``grace_s`` for them to end (they finish the
    batch in hand and release their locks), then kill what is left."""
    for p in procs:
        if p.poll() is None:
            try:
                p.send_signal(sig)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def wait_all(procs: Sequence[subprocess.Popen[bytes]]) -> list[int]:
    """Exit codes of every worker. Whatever ends the wait (SIGTERM, Ctrl-C, an error) stops the workers
    before it goes on."""
    try:
        return [p.wait() for p in procs]
    except BaseException:
        stop(procs)
        raise


__all__ = ["PARENT_ENV", "die_with_parent", "die_with_parent_from_env", "spawn", "stop", "wait_all"]

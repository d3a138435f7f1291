"""One writer per unit: an exclusive lock file holding the owner's pid, host and a random token.

The lock is created with ``O_CREAT | O_EXCL`` (atomic on local and NFS-v3+ filesystems). The writer touches
it after every batch (a heartbeat). A lock is *stale* when its process is gone (same host) or when it has not
been touched for ``STALE_AFTER_S`` (any host: a job killed on another node). Taking over a stale lock
happens under a second exclusive file, ``<lock>.takeover``, and re-checks staleness there, so two processes
can never both take it; a writer only ever removes a lock that still holds its own token.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from pathlib import Path

import orjson

from rescore.errors import LockedError

STALE_AFTER_S = 15 * 60  # a lock not touched for this long is stale, whatever host wrote it
TAKEOVER_STALE_S = 30  # a takeover guard left by a killed process


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (killed, not yet reaped) still answers kill(0); it holds nothing
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state != b"Z"
    except (OSError, IndexError):
        return True


def _read(path: Path) -> dict:
    try:
        return orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}


def is_stale(path: Path, *, now: float | None = None) -> bool:
    """Whether the lock at ``path`` belongs to nobody any more (see the module docstring)."""
    try:
        age = (now or time.time()) - path.stat().st_mtime
    except FileNotFoundError:
        return True
    owner = _read(path)
    if age > STALE_AFTER_S:
        return True
    if not owner:  # being written right now, or an empty leftover: only an old one is stale
        return age > 5
    return owner.get("host") == socket.gethostname() and not _pid_alive(int(owner.get("pid", -1)))


class UnitLock:
    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self.held = False
        self.token = secrets.token_hex(8)

    def acquire(self) -> None:
        me = orjson.dumps({"pid": os.getpid(), "host": socket.gethostname(), "token": self.token})
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._take_over_if_stale():
                    continue
                owner = _read(self.path)
                raise LockedError(
                    f"{self.what} is being written by pid {owner.get('pid')} on {owner.get('host')} (lock {self.path})",
                    hint=f"wait for that run to finish; a lock not refreshed for {STALE_AFTER_S // 60} minutes is "
                         "taken over automatically, or delete it if that process is gone",
                ) from None
            with os.fdopen(fd, "wb") as f:
                f.write(me)
                f.flush()
                os.fsync(f.fileno())
            self.held = True
            return
        raise LockedError(f"could not take the lock {self.path}", hint="retry; another process keeps taking it")

    def _take_over_if_stale(self) -> bool:
        """Remove a stale lock under the takeover guard; True when the caller should retry creating it."""
        if not is_stale(self.path):
            return False
        guard = self.path.with_name(self.path.name + ".takeover")
        try:
            gfd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                if time.time() - guard.stat().st_mtime > TAKEOVER_STALE_S:
                    guard.unlink()
            except FileNotFoundError:
                pass
            time.sleep(0.05)
            return True  # retry: the other process finishes its takeover (or its guard was stale)
        os.close(gfd)
        try:
            if is_stale(self.path):  # re-check under the guard: nobody took it in between
                try:
                    self.path.unlink()
                except FileNotFoundError:
                    pass
            return True
        finally:
            try:
                guard.unlink()
            except FileNotFoundError:
                pass

    def heartbeat(self) -> None:
        """Mark the lock as alive (called after every batch)."""
        if self.held:
            try:
                os.utime(self.path)
            except FileNotFoundError:
                pass

    def release(self) -> None:
        if self.held:
            if _read(self.path).get("token") == self.token:  # never remove a lock that is not ours
                try:
                    self.path.unlink()
                except FileNotFoundError:
                    pass
            self.held = False

    def __enter__(self) -> UnitLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

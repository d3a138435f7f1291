"""One writer per unit: an exclusive lock file holding the owner's pid and host.

The lock is created with ``O_CREAT | O_EXCL`` (atomic on local and NFS-v3+ filesystems). A lock whose
pid no longer runs on this host is stale and is reclaimed; a live one makes the second writer fail with
a message saying who holds it.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

import orjson

from rescore.errors import LockedError


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


class UnitLock:
    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self.held = False

    def acquire(self) -> None:
        me = orjson.dumps({"pid": os.getpid(), "host": socket.gethostname()})
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._reclaim_if_stale():
                    continue
                owner = self._owner()
                raise LockedError(
                    f"{self.what} is being written by pid {owner.get('pid')} on {owner.get('host')} (lock {self.path})",
                    hint="wait for that run to finish, or delete the lock file if that process is gone",
                ) from None
            except OSError as e:  # pragma: no cover - filesystem specific
                if e.errno == errno.EEXIST:
                    continue
                raise
            with os.fdopen(fd, "wb") as f:
                f.write(me)
                f.flush()
                os.fsync(f.fileno())
            self.held = True
            return
        raise LockedError(f"could not take the lock {self.path}", hint="retry; another process keeps taking it")

    def _owner(self) -> dict:
        try:
            return orjson.loads(self.path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return {}

    def _reclaim_if_stale(self) -> bool:
        owner = self._owner()
        if not owner:
            # a lock file being written right now, or an empty leftover: only an old one is stale
            try:
                import time

                if time.time() - self.path.stat().st_mtime < 5:
                    return False
            except FileNotFoundError:
                return True
        elif owner.get("host") != socket.gethostname() or _pid_alive(int(owner.get("pid", -1))):
            return False
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        return True

    def release(self) -> None:
        if self.held:
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

"""One writer per unit: an exclusive lock file holding the owner's pid, host and a random token.

The lock is written whole to a private temporary file, then hard-linked to its name (``link`` fails when the
name exists: atomic on local and NFS filesystems), so a lock file is never empty, not even after a full disk
or a kill mid-write. Filesystems without hard links fall back to ``O_CREAT | O_EXCL``. The writer touches
it after every batch (a heartbeat). A lock is *stale* when its process is gone (same host) or when it has not
been touched for ``STALE_AFTER_S`` (any host: a job killed on another node). Taking over a stale lock
happens under a second exclusive file, ``<lock>.takeover``, and re-checks staleness there, so two processes
can never both take it; a writer only ever removes a lock that still holds its own token. An empty or
unreadable lock (left by an earlier version, or by a damaged disk) is stale once it is a few seconds old, and
its takeover is reported.
"""

from __future__ import annotations

import errno
import os
import secrets
import socket
import time
import warnings
from pathlib import Path
from typing import Any

import orjson

from rescore.artifacts.io import NO_SPACE, no_space, symlink_error
from rescore.errors import LockedError

STALE_AFTER_S = 15 * 60  # a lock not touched for this long is stale, whatever host wrote it
TAKEOVER_STALE_S = 30  # a takeover guard left by a killed process
UNREADABLE_STALE_S = 2  # an empty or unreadable lock this old is stale (a fallback writer fills it in microseconds)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK, errno.EXDEV}


class UnreadableLockWarning(UserWarning):
    pass


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


def _read(path: Path) -> dict[str, Any]:
    """The lock's owner ({"pid", "host", "token"}), or {} when the file is missing, empty or not a lock."""
    try:
        owner = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    if not isinstance(owner, dict) or not isinstance(owner.get("pid"), int) or not isinstance(owner.get("host"), str):
        return {}
    return owner


def is_stale(path: Path, *, now: float | None = None) -> bool:
    """Whether the lock at ``path`` belongs to nobody any more (see the module docstring)."""
    try:
        age = (now or time.time()) - path.lstat().st_mtime
    except FileNotFoundError:
        return True
    owner = _read(path)
    if age > STALE_AFTER_S:
        return True
    if not owner:  # empty or unreadable: only a fallback writer's lock, for microseconds, is legitimately so
        return age > UNREADABLE_STALE_S
    return owner["host"] == socket.gethostname() and not _pid_alive(owner["pid"])


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class UnitLock:
    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self.held = False
        self.token = secrets.token_hex(8)

    def acquire(self) -> None:
        me = orjson.dumps({"pid": os.getpid(), "host": socket.gethostname(), "token": self.token})
        try:
            self._acquire(me)
        except OSError as e:
            if e.errno in NO_SPACE:
                raise no_space(self.path, hint="free space on that disk and run the same command again; no lock "
                                               "was left behind") from None
            raise

    def _acquire(self, me: bytes) -> None:
        deadline = time.monotonic() + UNREADABLE_STALE_S + 3  # long enough to outlive a young unreadable lock
        while True:
            if self.path.is_symlink():
                raise symlink_error(self.path)
            if self._create(me):
                self.held = True
                return
            if self._take_over_if_stale():
                if time.monotonic() > deadline:
                    break
                continue
            owner = _read(self.path)
            if owner:
                raise LockedError(
                    f"{self.what} is being written by pid {owner['pid']} on {owner['host']} (lock {self.path})",
                    hint=f"wait for that run to finish; a lock not refreshed for {STALE_AFTER_S // 60} minutes is "
                         "taken over automatically, or delete it if that process is gone",
                )
            if time.monotonic() > deadline:  # a fresh unreadable lock that nobody finishes writing
                raise LockedError(f"the lock {self.path} of {self.what} is empty or unreadable",
                                  hint="if no other run is writing this unit, delete the lock file and run again")
            time.sleep(0.1)  # young and unreadable: a fallback writer is filling it in, or it becomes stale
        raise LockedError(f"could not take the lock {self.path}", hint="retry; another process keeps taking it")

    def _create(self, me: bytes) -> bool:
        """Create the lock holding ``me`` in one step; False when a lock is there already."""
        tmp = self.path.with_name(f"{self.path.name}.{self.token}.tmp")
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | _NOFOLLOW, 0o644)
        try:
            try:
                _write_all(fd, me)
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, self.path)  # the lock appears whole, or not at all
            except OSError as e:
                # NFS may report a retried link that succeeded as an error: the link count says what happened
                if os.stat(tmp).st_nlink == 2:
                    return True
                if isinstance(e, FileExistsError):
                    return False
                if e.errno not in _NO_LINKS:
                    raise
                return self._create_in_place(me)  # a filesystem without hard links
            return True
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass

    def _create_in_place(self, me: bytes) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | _NOFOLLOW, 0o644)
        except FileExistsError:
            return False
        try:
            _write_all(fd, me)
            os.fsync(fd)
        except BaseException:  # a full disk: never leave an empty lock behind
            os.close(fd)
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            raise
        os.close(fd)
        return True

    def _take_over_if_stale(self) -> bool:
        """Remove a stale lock under the takeover guard; True when the caller should retry creating it."""
        if not is_stale(self.path):
            return False
        guard = self.path.with_name(self.path.name + ".takeover")
        if guard.is_symlink():
            raise symlink_error(guard)
        try:
            gfd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY | _NOFOLLOW, 0o644)
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
                if not _read(self.path) and self.path.exists():
                    warnings.warn(f"{self.path}: took over an empty or unreadable lock (left by a run that could not "
                                  "write it, e.g. on a full disk)", UnreadableLockWarning, stacklevel=4)
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

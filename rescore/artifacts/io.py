"""Atomic, durable file writes and path safety.

Every file that readers trust (parquet, manifests, results) is written to a temporary file in the same
directory, fsynced, then moved over the target with ``os.replace`` and the directory fsynced, so a reader
sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from rescore.errors import StoreError


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# read once, at import (os.umask is process-wide and not thread-safe to probe later)
FILE_MODE = 0o666 & ~_read_umask()


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def no_space(path: str | Path, hint: str | None = None) -> StoreError:
    """The error for a full disk (or quota) while writing ``path``."""
    return StoreError(f"no space left on the device to write {path}",
                      hint=hint or "free space on that disk (or use a --store on a larger one) and run the same "
                                   "command again; files are replaced atomically, so nothing was half-written")


def refuse_symlinks(root: str | Path, *paths: str | Path) -> None:
    """Refuse to write ``paths`` when one of them, or a directory between ``root`` and it, is a symbolic link:
    the store (and an export) writes, truncates and replaces only its own files, never a link's target. ``root``
    itself may be a link (a store kept on another disk is often linked into place)."""
    for path in paths:
        root_abs, path_abs = Path(os.path.abspath(root)), Path(os.path.abspath(path))
        if root_abs not in path_abs.parents:  # a path built from the root with its links resolved
            root_abs = Path(root).resolve()
        if root_abs not in path_abs.parents:
            raise StoreError(f"refusing to write {path}: it is outside {root}")
        cur = root_abs
        for part in path_abs.relative_to(root_abs).parts:
            cur = cur / part
            try:
                st = os.lstat(cur)
            except (FileNotFoundError, NotADirectoryError):
                break  # nothing below exists yet: it is created as real directories and files
            if stat.S_ISLNK(st.st_mode):
                raise symlink_error(cur)


def symlink_error(path: str | Path) -> StoreError:
    return StoreError(f"refusing to write through the symbolic link {path}",
                      hint="rescore never follows links for the files it writes: replace the link by a real file or "
                           "directory (or remove it) and run again")


def atomic_write_bytes(path: str | Path, data: bytes, *, sync: bool = True, root: str | Path | None = None) -> None:
    """Write ``data`` to ``path`` atomically. ``sync=False`` skips the fsyncs, for cache files that the
    caller flushes in bulk (the scorer syncs a unit's score files once). A symbolic link at ``path`` is
    refused, and with ``root`` one anywhere between ``root`` and ``path`` too (:func:`refuse_symlinks`)."""
    path = Path(path)
    if root is not None:
        refuse_symlinks(root, path)
    elif path.is_symlink():
        raise symlink_error(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, FILE_MODE)  # mkstemp makes 0600; a shared store must be readable by the team
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        if isinstance(e, OSError) and e.errno in NO_SPACE:
            raise no_space(path) from None
        raise
    if sync:
        fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str, *, root: str | Path | None = None) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), root=root)


def atomic_write_json(path: str | Path, obj: Any, *, root: str | Path | None = None) -> None:
    atomic_write_bytes(path, orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n", root=root)


def atomic_write_table(path: str | Path, table: pa.Table, *, compression: str = "zstd",
                       root: str | Path | None = None) -> str:
    """Write ``table`` as Parquet atomically; returns the sha256 of the written file."""
    buf = io.BytesIO()
    # page CRCs let every read verify exactly the pages it uses (see Unit.read_table)
    pq.write_table(table, buf, compression=compression, write_page_checksum=True)
    data = buf.getvalue()
    atomic_write_bytes(path, data, root=root)
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def safe_join(root: str | Path, *parts: str) -> Path:
    """Join ``parts`` under ``root`` and refuse any result outside it (``..``, absolute parts, symlinks)."""
    root_r = Path(root).resolve()
    for p in parts:
        if not p or p in (".", "..") or "/" in p or "\\" in p or "\x00" in p:
            raise StoreError(f"refusing path component {p!r} under {root}", hint="names may use [a-z0-9_.-] only")
    target = root_r.joinpath(*parts).resolve()
    if target != root_r and root_r not in target.parents:
        raise StoreError(f"path {target} is outside the store {root_r}", hint="use names without '..' or '/'")
    return target


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise StoreError(f"missing file {path}") from None
    except orjson.JSONDecodeError as e:
        from rescore.errors import CorruptArtifactError

        raise CorruptArtifactError(f"{path} is not valid JSON ({e})", hint="delete the unit and regenerate it") from None

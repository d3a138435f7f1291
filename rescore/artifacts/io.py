"""Atomic, durable file writes and path safety.

Every file that readers trust (parquet, manifests, results) is written to a temporary file in the same
directory, fsynced, then moved over the target with ``os.replace`` and the directory fsynced, so a reader
sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import io
import os
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


def atomic_write_bytes(path: str | Path, data: bytes, *, sync: bool = True) -> None:
    """Write ``data`` to ``path`` atomically. ``sync=False`` skips the fsyncs, for cache files that the
    caller flushes in bulk (the scorer syncs a unit's score files once)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)  # mkstemp makes 0600; a shared store must be readable by the team
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if sync:
        fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")


def atomic_write_table(path: str | Path, table: pa.Table, *, compression: str = "zstd") -> str:
    """Write ``table`` as Parquet atomically; returns the sha256 of the written file."""
    buf = io.BytesIO()
    # page CRCs let every read verify exactly the pages it uses (see Unit.read_table)
    pq.write_table(table, buf, compression=compression, write_page_checksum=True)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
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

"""Writing a unit: :class:`UnitWriter`, the only code that writes one, and the rows files it writes.

Rows are appended to ``rows.jsonl`` as they come (a crash loses at most the line being written, which the
next run drops and recomputes); ``finish`` compacts them, deduplicated and in sample-id order, into the sealed
``rows.parquet`` bound to its unit, and writes the complete manifest last.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
import pyarrow.parquet as pq

from rescore.artifacts.integrity import (
    ROWS_KEY,
    RUN_ID_KEY,
    footer_checksum,
    read_file_buffer,
)
from rescore.artifacts.io import (
    NO_SPACE,
    atomic_write_bytes,
    atomic_write_json,
    no_space,
    read_json,
    refuse_symlinks,
    safe_join,
)
from rescore.artifacts.lock import UnitLock
from rescore.artifacts.manifest import checked_manifest
from rescore.artifacts.schema import SCHEMA_VERSION, schema_for, stores_dist
from rescore.artifacts.store import _NOFOLLOW, LOCK, MANIFEST, ROWS_JSONL, ROWS_PARQUET, Store, TornLineWarning, now_iso
from rescore.errors import CorruptArtifactError, StoreError


@dataclass
class UnitWriter:
    """Writes one unit: lock, resume from rows.jsonl, append batches with fsync, compact atomically.

    Use as a context manager. ``done_ids`` holds the sample ids already written (after dropping a torn
    last line). ``finish`` compacts to rows.parquet and marks the manifest complete.
    """

    store: Store
    run_id: str
    manifest: dict[str, Any]
    done_ids: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.store.gen_dir.mkdir(parents=True, exist_ok=True)
        self.dir = safe_join(self.store.gen_dir, self.run_id)
        self.schema = schema_for(self.manifest["request_type"], dist=stores_dist(self.manifest))
        self.lock = UnitLock(self.dir / LOCK, f"unit {self.run_id} ({self.manifest.get('task', {}).get('name')})")
        self._fh: Any = None
        self._checked_keys = False
        # rows appended by this process, already converted (compaction needs no re-parse of them)
        self._batches: list[pa.RecordBatch] = []
        self._resume_bytes = 0
        self.previous_manifest: dict[str, Any] | None = None  # the manifest of an earlier, interrupted run
        self._t0 = time.time()

    # -- lifecycle -------------------------------------------------------------------------------------
    def __enter__(self) -> UnitWriter:
        # the unit's files are written, truncated and replaced here: never through a link to somewhere else
        unit = self.store.gen_dir / self.run_id  # as reached from the store root (self.dir has its links resolved)
        refuse_symlinks(self.store.root, *(unit / n for n in (MANIFEST, ROWS_JSONL, ROWS_PARQUET, LOCK)))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        try:
            self._open()
        except BaseException:
            self.lock.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self.lock.release()

    @property
    def already_complete(self) -> bool:
        p = self.dir / MANIFEST
        return p.is_file() and read_json(p).get("status") == "complete" and (self.dir / ROWS_PARQUET).is_file()

    def _open(self) -> None:
        mpath = self.dir / MANIFEST
        if mpath.is_file():
            old = read_json(mpath)
            self.previous_manifest = old
            if old.get("status") == "complete":
                return
            self.manifest["created_at"] = old.get("created_at", now_iso())
            self.manifest["resumes"] = int(old.get("resumes", 0)) + 1
            if "timings" in old:
                self.manifest["timings"] = old["timings"]
        else:
            self.manifest["created_at"] = now_iso()
            self.manifest["resumes"] = 0
        jsonl = self.dir / ROWS_JSONL
        # the log is checked before the manifest is rewritten: a damaged unit is left exactly as it was
        self.done_ids = scan_jsonl(jsonl, repair=True)
        self.manifest.update(status="running", schema_version=SCHEMA_VERSION, run_id=self.run_id,
                             host=socket.gethostname(), pid=os.getpid())
        atomic_write_json(mpath, checked_manifest(self.manifest))
        self._resume_bytes = jsonl.stat().st_size if jsonl.exists() else 0
        self._fh = os.fdopen(os.open(jsonl, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW, 0o666), "ab")

    # -- writing ---------------------------------------------------------------------------------------
    def append(self, rows: Iterable[dict[str, Any]]) -> int:
        rows = list(rows)
        if not rows:
            return 0
        if not self._checked_keys:
            self._check_keys(rows[0])
        try:
            batch = nonfinite_to_null(pa.RecordBatch.from_pylist(rows, schema=self.schema))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
            raise StoreError(f"backend produced rows that do not match the {self.manifest['request_type']} schema: {e}",
                             hint="this is a backend bug; the row schema is rescore.artifacts.schema") from None
        buf = b"".join(orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n" for r in rows)
        try:
            self._fh.write(buf)
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as e:
            if e.errno in NO_SPACE:
                raise no_space(self.dir / ROWS_JSONL, hint="free space on that disk and run the same command again: "
                                                           "it resumes after the rows already written") from None
            raise
        self._batches.append(batch)
        self.lock.heartbeat()
        for r in rows:
            self.done_ids.add(r["sample_id"])
        return len(rows)

    def _check_keys(self, row: dict[str, Any]) -> None:
        names = set(self.schema.names)
        extra = set(row) - names
        missing = {"sample_id", "task", "request_type"} - set(row)
        if extra or missing:
            raise StoreError(f"backend produced a row with unknown columns {sorted(extra)} / missing {sorted(missing)}",
                             hint="this is a backend bug; the row schema is rescore.artifacts.schema")
        self._checked_keys = True

    def write_manifest(self) -> None:
        """Rewrite the (running) unit's manifest after a change to ``self.manifest``."""
        atomic_write_json(self.dir / MANIFEST, checked_manifest(self.manifest))

    def finish(self, expected_ids: Sequence[str], extra_manifest: dict[str, Any] | None = None) -> dict[str, Any]:
        """Compact rows.jsonl to rows.parquet (atomic) and mark the unit complete."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        jsonl = self.dir / ROWS_JSONL
        parts = [read_jsonl_table(jsonl, self.schema, limit=self._resume_bytes)] if self._resume_bytes else []
        parts.append(pa.Table.from_batches(self._batches, schema=self.schema))
        table = dedupe_sort(pa.concat_tables(parts))
        got = set(table.column("sample_id").to_pylist())
        want = set(expected_ids)
        if got != want:
            missing = sorted(want - got)[:5]
            extra = sorted(got - want)[:5]
            raise StoreError(f"unit {self.run_id}: rows do not match the requests (missing {missing}, unexpected {extra})",
                             hint="run `rescore gen` again to resume; if it persists the task data changed")
        written = write_rows_parquet(self.dir / ROWS_PARQUET, table, self.run_id)
        self.manifest.update(
            status="complete", rows_done=table.num_rows, rows_total=len(want), **written,
            completed_at=now_iso(), **(extra_manifest or {}),
        )
        self.manifest.pop("pid", None)
        atomic_write_json(self.dir / MANIFEST, checked_manifest(self.manifest))
        try:
            jsonl.unlink()
        except FileNotFoundError:
            pass
        return self.manifest

    def update_manifest(self, **fields: Any) -> None:
        self.manifest.update(fields)
        atomic_write_json(self.dir / MANIFEST, checked_manifest(self.manifest))


def write_rows_parquet(path: Path, table: pa.Table, run_id: str) -> dict[str, Any]:
    """Write a unit's rows.parquet atomically, bound to its unit; returns what the manifest records of it.

    The file names its unit and row count in its own key-value metadata and has Parquet page CRCs; the
    manifest gets its sha256 (checked by ``verify``), its size and its footer's CRC-32 (checked on every
    read, see :meth:`Unit.check_rows_file`)."""
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), RUN_ID_KEY: run_id.encode(),
                                           ROWS_KEY: str(table.num_rows).encode()})
    buf = io.BytesIO()
    # page CRCs let every read verify exactly the pages it uses (see Unit.read_table)
    pq.write_table(table, buf, compression="zstd", write_page_checksum=True)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    return {"rows_parquet_sha256": hashlib.sha256(data).hexdigest(), "rows_parquet_bytes": len(data),
            "rows_parquet_footer": footer_checksum(data), "page_checksums": True}


def _finite_or_null(arr: pa.Array) -> pa.Array:
    t = arr.type
    if pa.types.is_floating(t):
        bad = pc.invert(pc.is_finite(arr))
        return pc.if_else(bad, pa.scalar(None, t), arr) if pc.any(bad).as_py() else arr
    if pa.types.is_list(t):
        values = _finite_or_null(arr.values)
        if values is arr.values:
            return arr
        return pa.ListArray.from_arrays(arr.offsets, values, type=t, mask=arr.is_null() if arr.null_count else None)
    return arr


def nonfinite_to_null(batch: pa.RecordBatch) -> pa.RecordBatch:
    """NaN and infinities become null ("missing is null"): JSON, and so rows.jsonl, cannot hold them, and a
    resumed unit must equal an uninterrupted one."""
    cols = [_finite_or_null(c) for c in batch.columns]
    if all(a is b for a, b in zip(cols, batch.columns, strict=True)):
        return batch
    return pa.RecordBatch.from_arrays(cols, schema=batch.schema)


def scan_jsonl(path: Path, *, repair: bool) -> set[str]:
    """Sample ids in ``rows.jsonl``. A torn last line (no newline: a kill mid-write) is dropped with a
    warning (and cut off the file when ``repair``); any other malformed line is an error naming it."""
    ids: set[str] = set()
    if not path.exists():
        return ids
    data = path.read_bytes()
    if not data:
        return ids
    end = len(data)
    if not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        warnings.warn(f"{path}: dropped a torn last line ({end - cut} bytes) left by an interrupted write",
                      TornLineWarning, stacklevel=2)
        if repair:
            with os.fdopen(os.open(path, os.O_RDWR | _NOFOLLOW), "r+b") as f:
                f.truncate(cut)
                f.flush()
                os.fsync(f.fileno())
        end = cut
    lineno = 0
    start = 0
    while start < end:
        nl = data.index(b"\n", start)
        lineno += 1
        line = data[start:nl]
        start = nl + 1
        try:
            sid = orjson.loads(line)["sample_id"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise CorruptArtifactError(f"{path}:{lineno}: malformed row (not a JSON object with a sample_id)",
                                       hint="the file was modified or damaged; delete the unit directory to regenerate it") from None
        ids.add(sid)
    return ids


def read_jsonl_table(path: Path, schema: pa.Schema, *, limit: int | None = None) -> pa.Table:
    """Rows of a rows.jsonl (its first ``limit`` bytes) as a table of ``schema``."""
    if not path.exists() or path.stat().st_size == 0 or limit == 0:
        return schema.empty_table()
    try:
        opts = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error", newlines_in_values=False)
        source = pa.BufferReader(read_file_buffer(path, limit))  # Arrow-owned: see read_file_buffer
        table = pajson.read_json(source, parse_options=opts, read_options=pajson.ReadOptions(block_size=16 << 20))
    except pa.ArrowInvalid as e:
        raise CorruptArtifactError(f"{path}: rows do not match the schema ({e})",
                                   hint="delete the unit directory and regenerate it") from None
    # columns absent from every row come back missing; add them as nulls in schema order
    cols = []
    for f in schema:
        if f.name in table.column_names:
            cols.append(table.column(f.name).cast(f.type))
        else:
            cols.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(cols, schema=schema)


def dedupe_sort(table: pa.Table) -> pa.Table:
    """Rows sorted by sample id with duplicates dropped, so a resumed unit equals an uninterrupted one."""
    table = table.combine_chunks()
    sid = table.column("sample_id")
    n = table.num_rows
    if n > 1 and not pc.all(pc.less(sid.slice(0, n - 1), sid.slice(1))).as_py():
        table = table.take(pc.sort_indices(table, sort_keys=[("sample_id", "ascending")]))
    sid = table.column("sample_id")
    if table.num_rows > 1:
        same = pc.equal(sid.slice(1), sid.slice(0, table.num_rows - 1))
        keep = pa.concat_arrays([pa.array([True]), pc.invert(same.combine_chunks())])
        if not pc.all(keep).as_py():
            table = table.filter(keep)
    return table


def environment_versions() -> dict[str, str]:
    import numpy
    import pyarrow

    from rescore import __version__

    return {"rescore": __version__, "python": sys.version.split()[0], "pyarrow": pyarrow.__version__,
            "numpy": numpy.__version__}

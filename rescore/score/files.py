"""Score files and their index: ``scores/<run_id>/<metric>@<version>.arrow`` and ``_index.json``.

A score file is an Arrow IPC file (zstd-compressed buffers) holding ``value`` and the metric's auxiliary
columns for every row of its unit, sealed (a CRC-32 of all its bytes in its schema metadata) and checked when
read; its ``rescore`` metadata holds the spec identity and the aggregates per subset. Score files of the
earlier format (Parquet with ``sample_id``) are still read. ``_index.json`` caches the metadata of the files
already checked (keyed by size and mtime, with a checksum of its own); it is only a cache. See
:mod:`rescore.score.engine` for how the files are computed.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from rescore.artifacts.integrity import (
    CHECKSUM_KEY,
    PLACEHOLDER,
    READ_ERRORS,
    corrupt,
    crc32,
    read_file_buffer,
    seal,
    seal_holds,
)
from rescore.artifacts.integrity import first_line as _first_line
from rescore.artifacts.io import atomic_write_bytes, refuse_symlinks
from rescore.artifacts.store import Store, Unit
from rescore.errors import CorruptArtifactError, StoreError
from rescore.score.spec import Metric

INDEX = "_index.json"


META_KEY = b"rescore"


# -- the score cache ----------------------------------------------------------------------------------
def scores_dir(store: Store, run_id: str) -> Path:
    from rescore.names import child

    return child(store.scores_dir, run_id, kind="run id")


SCORE_SUFFIXES = (".arrow", ".parquet")  # written as Arrow IPC; Parquet score files of earlier versions are read


_SCORE_HINT = "delete it and run `rescore score` (it recomputes what is missing)"


def _load_score_file(path: Path) -> pa.Table:
    """A whole score file, either format, metadata included. The file is read once into memory, checked
    against the checksum that seals it (files written since score files are sealed), and decoded from those
    bytes; any damage raises :class:`CorruptArtifactError`."""
    try:
        if path.suffix == ".parquet":  # the earlier format: page CRCs only
            with pq.ParquetFile(path, page_checksum_verification=True) as f:
                return f.read()
        buf = read_file_buffer(path)  # Arrow-owned: see read_file_buffer
        reader = ipc.open_file(pa.BufferReader(buf))
        if not seal_holds(buf.to_pybytes(), (reader.schema.metadata or {}).get(CHECKSUM_KEY)):
            raise corrupt(path, "its bytes do not match the checksum in its metadata (damaged on disk)", _SCORE_HINT)
        return reader.read_all()
    except READ_ERRORS as e:
        raise corrupt(path, f"unreadable ({_first_line(e)})", _SCORE_HINT) from None


def score_files(d: Path) -> list[str]:
    """Names of the score files in a unit's score directory (either format; no temporary files)."""
    return [n for n in os.listdir(d) if n.endswith(SCORE_SUFFIXES) and not n.startswith(".")]


def read_score_file(path: Path, columns: Sequence[str] | None = None) -> pa.Table:
    """The columns stored in one score file, either format (no ``sample_id`` in the current one: see
    :func:`read_unit_scores`)."""
    try:
        table = _load_score_file(path)
    except CorruptArtifactError:
        forget_score_files(path.parent, [path.name])  # the next `score` checks it whole, and recomputes it
        raise
    return table.select([c for c in columns if c in table.column_names]) if columns is not None else table


def read_unit_scores(unit: Unit, path: Path, columns: Sequence[str] | None = None) -> pa.Table:
    """A unit's per-row scores from one score file, ``sample_id`` first (taken from the unit's rows, which
    the file's rows follow one to one)."""
    want = None if columns is None else [c for c in columns if c != "sample_id"]
    table = read_score_file(path, None if want is None else ["sample_id", *want])
    if "sample_id" not in table.column_names:
        ids = unit.read_table(columns=["sample_id"]).column("sample_id") if table.num_rows else \
            pa.chunked_array([], pa.string())
        if len(ids) != table.num_rows:
            forget_score_files(path.parent, [path.name])
            raise corrupt(path, f"it holds {table.num_rows} rows for a unit of {len(ids)}", _SCORE_HINT)
        table = table.add_column(0, "sample_id", ids)
    return table


def scan_scores(store: Store, run_id: str, damaged: list[tuple[str, str]] | None = None) -> dict[str, dict[str, Any]]:
    """file name -> score metadata of every sound score file of a unit. Files the index knows unchanged
    (same size and mtime as when written or last checked) are trusted; any other file is read whole and
    checked (its seal, its rescore metadata, its name and unit, and the row count that metadata promises), so
    a truncated, damaged or replaced score file counts as missing and the next ``score`` recomputes it.
    ``damaged`` collects (path, why) of the files left out."""
    d = scores_dir(store, run_id)
    if not d.is_dir():
        return {}
    index = _read_index(d)
    out: dict[str, dict[str, Any]] = {}
    changed = False
    for name in score_files(d):
        p = d / name
        try:
            st = p.stat()
        except OSError:
            continue
        ent = index.get(name)
        if ent and _same_file(ent, st):
            out[name] = ent["meta"]
            continue
        meta, why = check_score_file(p)
        changed = True
        if meta is not None:
            out[name] = meta
            index[name] = _entry(st, meta)
        elif damaged is not None:
            damaged.append((str(p), why or "unreadable"))
    stale = set(index) - set(out)
    if stale or changed:
        for k in stale:
            index.pop(k, None)
        refuse_symlinks(store.root, d / INDEX)
        _write_index(d, index)
    return out


def check_score_file(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(metadata, None) for a sound score file, else (None, why): it must read whole, carry the rescore
    metadata and hold the rows that metadata promises (every unit row, or none when the metric applies to
    no row)."""
    try:
        table = _load_score_file(path)
        raw = (table.schema.metadata or {}).get(META_KEY)
        meta: Any = orjson.loads(raw) if raw else None
    except CorruptArtifactError as e:
        return None, getattr(e, "why", e.message)
    except orjson.JSONDecodeError as e:
        return None, f"unreadable metadata ({_first_line(e)})"
    if not meta_ok(meta):
        return None, "no rescore metadata (or malformed)"
    # bound to its place: the metric and version of its name, the unit of its directory (a copied file is not)
    named = _FILE_RE.match(path.name)
    if named and (meta["metric"], meta["version"]) != (named.group("name"), int(named.group("version"))):
        return None, f"it holds the scores of {meta['metric']}@{meta['version']}, not of its name"
    if isinstance(meta.get("run_id"), str) and meta["run_id"] != path.parent.name:
        return None, f"it holds scores of unit {meta['run_id']}, not of unit {path.parent.name}"
    if isinstance(meta.get("n_rows"), int) and isinstance(meta.get("applies"), bool):
        want = meta["n_rows"] if meta["applies"] else 0
        if table.num_rows != want:
            return None, f"holds {table.num_rows} rows, its metadata says {want}"
    return meta, None


def meta_ok(meta: Any) -> bool:
    """A score file's metadata has the shape results and compare rely on."""
    if not isinstance(meta, dict) or not isinstance(meta.get("metric"), str) or not isinstance(meta.get("version"), int):
        return False
    aggs = meta.get("aggregates", {})
    return isinstance(aggs, dict) and all(isinstance(k, str) and isinstance(v, dict) for k, v in aggs.items())


INDEX_VERSION = 2  # 2: entries under "files", and a checksum of them


def _entry(st: os.stat_result, meta: dict[str, Any]) -> dict[str, Any]:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "meta": meta}


def _same_file(ent: dict[str, Any], st: os.stat_result) -> bool:
    """The file is the one the index entry checked: same size and mtime. Damage that keeps both (bit rot)
    is found where the file is read (its seal), and by ``verify``, which then drops the entry."""
    return ent["size"] == st.st_size and ent["mtime_ns"] == st.st_mtime_ns


def _index_checksum(files: dict[str, Any]) -> str:
    return f"crc32:{crc32(orjson.dumps(files, option=orjson.OPT_SORT_KEYS)):08x}"


def _read_index(d: Path) -> dict[str, dict[str, Any]]:
    """The unit's index of checked score files. The index holds the aggregates that results are built
    from, so it is trusted only whole: a file of another version, or one whose content does not match its
    checksum, counts as empty (every score file is then checked again); malformed entries are ignored."""
    try:
        raw = orjson.loads((d / INDEX).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    if not isinstance(raw, dict) or raw.get("version") != INDEX_VERSION or not isinstance(raw.get("files"), dict):
        return {}
    files = raw["files"]
    if raw.get("checksum") != _index_checksum(files):
        return {}
    return {k: v for k, v in files.items() if isinstance(k, str) and isinstance(v, dict)
            and all(isinstance(v.get(f), int) for f in ("size", "mtime_ns")) and meta_ok(v.get("meta"))}


def _index_written(d: Path, written: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """Record files this process just wrote (and so knows sound) in the unit's index."""
    index = _read_index(d)
    for name, meta in written:
        try:
            st = (d / name).stat()
        except OSError:
            continue
        index[name] = _entry(st, meta)
    _write_index(d, index)


def forget_score_files(d: Path, names: Iterable[str]) -> None:
    """Drop score files found damaged from their unit's index, so the next ``score`` checks them whole (and
    recomputes them) even when the damage left their size and times as they were (bit rot)."""
    index = _read_index(d)
    gone = [n for n in names if index.pop(n, None) is not None]
    if gone and not (d / INDEX).is_symlink():
        _write_index(d, index)


def _write_index(d: Path, index: dict[str, Any]) -> None:
    doc = {"version": INDEX_VERSION, "checksum": _index_checksum(index), "files": index}
    try:  # not fsynced: a lost or torn index only means score files are checked again
        atomic_write_bytes(d / INDEX, orjson.dumps(doc, option=orjson.OPT_SORT_KEYS), sync=False)
    except (OSError, StoreError):
        pass  # the index is only a cache (a full disk, say); its callers refuse a link before they get here


def is_current(meta: dict[str, Any] | None, spec: Metric, source_sha: str | None) -> bool:
    return (meta is not None and meta.get("version") == spec.version and meta.get("params_hash") == spec.params_hash()
            and meta.get("source_sha256") == source_sha)


_IPC_OPTIONS = ipc.IpcWriteOptions(compression="zstd")


def write_score_file(path: Path, table: pa.Table) -> None:
    """Atomic (tmp + ``os.replace``) but not yet durable: :func:`sync_scores` makes a whole unit's files
    durable at once. Score files are a cache that is checked when read (an unreadable file counts as
    missing and is recomputed), so one sync per unit keeps crash safety at a fraction of the cost of an
    fsync per file. Arrow IPC with zstd buffers: an order of magnitude cheaper to write than Parquet (whose
    encoding of the unique sample ids dominated the cost) and read without decoding."""
    # sealed: a checksum of every byte, the per-row values and the aggregates that results are built from
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), CHECKSUM_KEY: PLACEHOLDER})
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, table.schema, options=_IPC_OPTIONS) as w:
        w.write_table(table)
    atomic_write_bytes(path, seal(sink.getvalue()), sync=False)
    legacy = path.with_suffix(".parquet")
    if path.suffix != ".parquet" and legacy.exists():  # the same metric and version in the earlier format
        legacy.unlink(missing_ok=True)


def sync_scores(d: Path, names: Sequence[str]) -> None:
    """Flush a unit's new score files to disk: one ``syncfs`` of the filesystem where Linux has it, else
    an fsync per file; then the directory."""
    from rescore.artifacts.io import fsync_dir

    if not names:
        return
    if not _syncfs(d):
        for n in names:
            try:
                fd = os.open(d / n, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fsync_dir(d)


def _syncfs(d: Path) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(d, os.O_RDONLY)
        try:
            return libc.syncfs(fd) == 0
        finally:
            os.close(fd)
    except (OSError, AttributeError):
        return False


# -- results ------------------------------------------------------------------------------------------
_FILE_RE = re.compile(r"^(?P<name>[a-z0-9][a-z0-9_.-]*)@(?P<version>\d+)\.(?:arrow|parquet)$")


def choose_files(have: dict[str, dict[str, Any]], source_sha: str | None,
                 specs_by_name: dict[str, Metric]) -> dict[str, dict[str, Any]]:
    """metric name -> the score metadata that results use for one unit.

    A registered runnable metric uses only its current file. Any other metric on disk (a plugin not loaded
    this time, a parameterised variant, the reranker without its file) uses its highest current-source
    version."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for fname, meta in _with_file(have).items():
        m = _FILE_RE.match(fname)
        if not m or meta.get("source_sha256") != source_sha:
            continue
        by_name.setdefault(str(meta.get("metric", m.group("name"))), []).append(meta)
    out = {}
    for name, metas_ in by_name.items():
        spec = specs_by_name.get(name)
        if spec is not None:
            cur = [x for x in metas_ if x.get("version") == spec.version and x.get("params_hash") == spec.params_hash()]
            if cur:
                out[name] = cur[0]
            continue
        out[name] = max(metas_, key=lambda x: (x.get("version", 0), x.get("created_at", "")))
    return out


def _with_file(have: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {fname: {**meta, "file": fname} for fname, meta in have.items()}


def score_file_path(store: Store, run_id: str, meta: dict[str, Any]) -> Path:
    """The file holding the per-row scores that ``meta`` (from :func:`choose_files`, which names it)
    describes."""
    return scores_dir(store, run_id) / str(meta["file"])

"""Incremental scoring of a store and the results table.

:func:`score_store` computes, for every complete unit, the (metric, version) pairs missing from
``scores/<run_id>/`` and nothing else. A score file is current when its version (in the name), its
parameter hash and the checksum of the rows it was computed from (``rows_parquet_sha256``) all match; a
changed version, parameter or regenerated unit counts as missing. Each file is written atomically, so a
crash leaves every earlier file intact. Partial units are skipped and reported.

Score file ``scores/<run_id>/<metric>@<version>.arrow``, an Arrow IPC file (zstd-compressed buffers;
``pyarrow.ipc.open_file``, ``pandas.read_feather`` and ``polars.read_ipc`` read it): ``value`` (float64,
null where the metric does not apply) and the metric's auxiliary columns, row ``i`` scoring row ``i`` of
the unit's ``rows.parquet`` (which the metadata's ``source_sha256`` pins), so the sample ids are stored once
per unit and not once per metric: :func:`read_scores` returns them as the first column. A metric that
applies to no row of the unit (SFT rates on a GSM8K unit) stores no rows at all. The schema metadata
``rescore`` holds the spec identity and the aggregates per subset (``"all"`` and each ``category``), so
:func:`build_results` never rereads per-row values. Score files of the earlier format (Parquet, with a
``sample_id`` column: ``<metric>@<version>.parquet``) are still read. A score file is sealed (a CRC-32 of
all its bytes in its schema metadata, :mod:`rescore.artifacts.integrity`) and checked whenever it is read.
``scores/<run_id>/_index.json`` caches the metadata of the files already checked (keyed by file size and
mtime, with a checksum of its own); it is only a cache.

``results.parquet`` is rebuilt from the score files after every run: one row per unit (seed) and one
``seed="agg"`` row per group of units that differ only in their seed. See :data:`RESULTS_SCHEMA`.
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
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
    read_sealed_parquet,
    seal,
    seal_holds,
    write_sealed_parquet,
)
from rescore.artifacts.integrity import first_line as _first_line
from rescore.artifacts.io import atomic_write_bytes, refuse_symlinks
from rescore.artifacts.store import Store, Unit
from rescore.core import canonical_json, content_hash
from rescore.errors import ConfigError, CorruptArtifactError, StoreError, UserError
from rescore.score.aggregate import seed_aggregate
from rescore.score.columns import float_array
from rescore.score.registry import load_builtin
from rescore.score.spec import Agg, Metric, UnitInfo, aggregators, metrics

INDEX = "_index.json"
META_KEY = b"rescore"
ALL = "all"  # the subset of every row of a unit; other subsets are the row categories

RESULTS_SCHEMA = pa.schema([
    ("model", pa.string()), ("checkpoint", pa.string()), ("step", pa.int64()), ("stage", pa.string()),
    ("suite", pa.string()), ("task", pa.string()), ("subset", pa.string()), ("metric", pa.string()),
    ("metric_version", pa.int32()), ("seed", pa.string()), ("value", pa.float64()), ("stderr", pa.float64()),
    ("n", pa.int64()), ("run_id", pa.string()), ("precision", pa.string()),
    # beyond the core columns: seed spread (agg rows), CI, and what reports need to group and rank
    ("std", pa.float64()), ("min", pa.float64()), ("max", pa.float64()), ("n_seeds", pa.int32()),
    ("ci_low", pa.float64()), ("ci_high", pa.float64()), ("higher_is_better", pa.bool_()),
    ("aggregator", pa.string()), ("family", pa.string()), ("tier", pa.string()), ("request_type", pa.string()),
    ("data_fp", pa.string()),
])


class ScoreError(UserError):
    """A metric failed on a unit (its message names both)."""


@dataclass
class ScoreReport:
    computed: list[tuple[str, str, int]] = field(default_factory=list)  # (run_id, metric, version)
    up_to_date: int = 0
    partial_units: list[str] = field(default_factory=list)
    units_scored: int = 0
    units_complete: int = 0
    unavailable: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # "metric on unit: why"
    corrupt_units: list[tuple[str, str]] = field(default_factory=list)  # (run_id, message): left unscored
    damaged: list[tuple[str, str]] = field(default_factory=list)  # (score file, why): left out of results
    applied: set[str] = field(default_factory=set)  # metrics that had a value on at least one row
    results_rows: int = 0
    seconds: float = 0.0
    jobs: int = 1  # processes that scored (1: this process)


ProgressFn = Callable[[str, int, int], None]


# -- metric selection ---------------------------------------------------------------------------------
def select_metrics(names: Sequence[str] | None = None, *, params: dict[str, dict[str, Any]] | None = None,
                   only: Iterable[Metric] | None = None) -> list[Metric]:
    """The metric specs to compute. ``names`` entries are ``name`` or ``name:key=value,...``; unknown names
    raise with a did-you-mean. Without names: every registered metric whose required parameters are set
    (or the ``only`` specs, e.g. a plugin's). ``params`` adds parameters to named metrics."""
    from rescore.score.spec import parse_metric_arg

    load_builtin()
    params = dict(params or {})
    chosen: list[Metric] = []
    if names:
        for arg in names:
            name, kw = parse_metric_arg(arg)
            spec = metrics.get(name)
            kw = {**params.pop(name, {}), **kw}
            check_params(spec, kw)
            if kw:
                spec = spec.with_params(name=spec.name if _keeps_name(spec, kw) else None, **kw)
            missing = spec.missing_params()
            if missing:
                raise ConfigError(f"metric {spec.name!r} needs parameter(s) {missing}",
                                  hint=f"pass them as --metric {spec.name}:{missing[0]}=VALUE")
            chosen.append(spec)
    else:
        base = list(only) if only is not None else [metrics.get(n) for n in metrics.names()]
        for spec in base:
            kw = params.get(spec.name)
            if kw:
                spec = spec.with_params(name=spec.name if _keeps_name(spec, kw) else None, **kw)
            if not spec.missing_params():
                chosen.append(spec)
    seen: dict[str, Metric] = {}
    for s in chosen:
        seen[s.name] = s
    return list(seen.values())


def check_params(spec: Metric, kw: dict[str, Any]) -> None:
    """Parameters given on the command line must be ones the metric's function takes, of the type of its
    default (an integer for ``k``): a bad one is a configuration error, not a failing metric."""
    import inspect

    try:
        sig = inspect.signature(spec.fn)
    except (TypeError, ValueError):
        return
    ps = [p for p in list(sig.parameters.values())[1:] if p.name != "unit"]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in ps):
        return
    by_name = {p.name: p for p in ps}
    current = spec.kw
    for k, v in kw.items():
        if k not in by_name:
            raise ConfigError(f"metric {spec.name!r} has no parameter {k!r}",
                              hint=f"its parameters: {', '.join(by_name) or 'none'}")
        ref = current.get(k, by_name[k].default)
        if ref is inspect.Parameter.empty or ref is None:
            continue
        ok = (isinstance(v, bool) if isinstance(ref, bool) else
              isinstance(v, int) and not isinstance(v, bool) if isinstance(ref, int) else
              isinstance(v, int | float) and not isinstance(v, bool) if isinstance(ref, float) else
              isinstance(v, type(ref)))
        if not ok:
            raise ConfigError(f"metric {spec.name!r}: parameter {k}={v!r} should be {type(ref).__name__} like its "
                              f"default {ref!r}", hint=f"e.g. --metric {spec.name}:{k}={ref!r}")
    spec.check_param_types(kw)  # against the function's annotations too (k: int | None takes no list)


def _keeps_name(spec: Metric, kw: dict[str, Any]) -> bool:
    # an input file (the reranker's scores) keeps the name: one reranker table per store, recomputed when
    # the file changes (its hash is part of the parameters); other parameters make a new name (pass_at_8)
    return set(kw) <= {"file"}


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
        meta = orjson.loads(raw) if raw else None
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


# -- computing one unit -------------------------------------------------------------------------------
class Subsets(dict[str, "np.ndarray | None"]):
    """Subset name -> boolean row mask (None: every row). ``order`` lists the rows grouped by category
    (row order kept within each), ``bounds`` each category's slice of it, so a metric's rows of one
    category are a slice instead of a pass over the whole unit."""

    order: np.ndarray | None = None
    bounds: dict[str, tuple[int, int]]


def subsets_of(table: pa.Table) -> Subsets:
    """``{"all": None}`` plus one boolean row mask per category value."""
    out = Subsets({ALL: None})
    out.bounds = {}
    if "category" in table.column_names and table.column("category").null_count < table.num_rows:
        enc = table.column("category").combine_chunks().dictionary_encode()
        idx = np.asarray(enc.indices.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
        out.order = np.argsort(idx, kind="stable")
        edges = np.searchsorted(idx[out.order], np.arange(len(enc.dictionary) + 1))
        for k, c in sorted(enumerate(enc.dictionary.to_pylist()), key=lambda x: str(x[1])):
            out[str(c)] = idx == k
            out.bounds[str(c)] = (int(edges[k]), int(edges[k + 1]))
    return out


def aggregate_rows(spec: Metric, cols: dict[str, Any], subsets: dict[str, np.ndarray | None]) -> dict[str, dict[str, Any]]:
    agg = aggregators.get(spec.aggregator)
    value = np.asarray(cols["value"], dtype=np.float64)
    applies = ~np.isnan(value)
    needed = {k: _numeric(cols[k]) for k in agg.needs if k in cols}
    missing = [k for k in agg.needs if k not in needed]
    if missing:
        raise ValueError(f"aggregator {agg.name!r} needs per-row column(s) {missing}; metric returned {list(cols)}")
    order = subsets.order if isinstance(subsets, Subsets) else None
    if order is not None:
        grouped = {k: v[order] for k, v in needed.items()}
        grouped_applies = applies[order]
    out: dict[str, dict[str, Any]] = {}
    for name, mask in subsets.items():
        if order is not None and name in subsets.bounds:  # the same rows in the same order, from a slice
            a, b = subsets.bounds[name]
            sel = grouped_applies[a:b]
            if not sel.any():
                continue
            cols = {k: v[a:b][sel] for k, v in grouped.items()}
        else:
            sel = applies if mask is None else applies & mask
            if not sel.any():
                continue
            cols = {k: v[sel] for k, v in needed.items()}
        res: Agg = agg(cols, spec.agg_kw)
        out[name] = {k: _clean(v) for k, v in res.as_dict().items()}
    return out


def _numeric(v: Any) -> np.ndarray:
    if isinstance(v, pa.ChunkedArray | pa.Array):
        return np.asarray(v.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False), dtype=np.float64)
    return np.asarray(v, dtype=np.float64)


def _clean(v: Any) -> Any:
    if isinstance(v, float | np.floating):
        v = float(v)
        return v if math.isfinite(v) or math.isinf(v) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


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


def score_table(spec: Metric, table: pa.Table, cols: dict[str, Any], meta: dict[str, Any]) -> pa.Table:
    arrays: dict[str, pa.Array] = {}  # no sample_id: row i is the unit's row i
    for k, v in cols.items():
        if isinstance(v, pa.Array):
            arrays[k] = v
        else:
            arr = np.asarray(v)
            if arr.dtype.kind == "f":
                arrays[k] = float_array(arr)
            else:
                arrays[k] = pa.array(arr)
    t = pa.table(arrays)
    return t.replace_schema_metadata({META_KEY: orjson.dumps(meta)})


def _spec_meta(spec: Metric, unit: Unit) -> dict[str, Any]:
    return {
        "metric": spec.name, "version": spec.version, "params_hash": spec.params_hash(),
        "params": {k: v for k, v in spec.kw.items()}, "aggregator": spec.aggregator, "agg_params": spec.agg_kw,
        "higher_is_better": spec.higher_is_better, "request_type": spec.request_type,
        "description": spec.description, "run_id": unit.run_id,
        "source_sha256": unit.manifest.get("rows_parquet_sha256"), "lm_eval_key": spec.lm_eval_key,
    }


def needed_columns(specs: Iterable[Metric]) -> set[str]:
    """The unit columns scoring ``specs`` reads: theirs, plus sample_id and category (the subsets)."""
    return {"sample_id", "category"} | {c for s in specs for c in s.columns}


def load_unit(unit: Unit, specs: Sequence[Metric]) -> tuple[pa.Table, set[str]]:
    """The columns ``specs`` need (plus sample_id and category) of a complete unit, checksum verified."""
    names = set(unit_columns(unit))
    return unit.read_table(columns=[c for c in sorted(needed_columns(specs)) if c in names]), names


def score_unit(store: Store, unit: Unit, specs: Sequence[Metric], loaded: tuple[pa.Table, set[str]] | None = None,
               writer: ThreadPoolExecutor | None = None) -> list[tuple[str, dict[str, Any]]]:
    """Compute ``specs`` on one complete unit and write their score files. Returns (file name, meta).

    With ``writer``, files are compressed and written on that thread while the next metric computes
    (Parquet encoding and file I/O release the GIL); every write has finished when this returns."""
    table, names = loaded if loaded is not None else load_unit(unit, specs)
    subsets = subsets_of(table)

    def read_more(columns: list[str]) -> pa.Table:
        return unit.read_table(columns=[c for c in columns if c in names])

    info = UnitInfo(run_id=unit.run_id, manifest=unit.manifest, read=read_more)
    d = scores_dir(store, unit.run_id)
    refuse_symlinks(store.root, d / INDEX)  # score files are written here, never through a link elsewhere
    written: list[tuple[str, dict[str, Any]]] = []
    pending: list[Future[None]] = []
    try:
        for spec in specs:
            name, meta, out = _score_one(spec, table, info, unit, subsets)
            if writer is not None:
                pending.append(writer.submit(write_score_file, d / name, out))
            else:
                write_score_file(d / name, out)
            written.append((name, meta))
    finally:
        for f in pending:
            f.result()
        sync_scores(d, [name for name, _ in written])
    _index_written(d, written)
    return written


def _score_one(spec: Metric, table: pa.Table, info: UnitInfo, unit: Unit,
               subsets: dict[str, np.ndarray | None]) -> tuple[str, dict[str, Any], pa.Table]:
    try:
        cols = spec.compute(table, info)
        meta = _spec_meta(spec, unit)
        meta["aggregates"] = aggregate_rows(spec, cols, subsets)
        meta["n_rows"] = table.num_rows
        meta["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        # a metric that applies to no row of the unit (SFT rates on GSM8K, say) stores no rows at all
        meta["applies"] = bool(meta["aggregates"])
        out = score_table(spec, table, cols, meta)
        if not meta["applies"]:
            out = out.slice(0, 0)
    except UserError:
        raise
    except (Exception, SystemExit) as e:  # sys.exit() in a metric is its failure, not the command's exit
        if os.environ.get("RESCORE_DEBUG"):
            raise
        from rescore.score.registry import failure, plugin_of

        where = f" from plugin {plugin_of(spec)}" if plugin_of(spec) else ""
        raise ScoreError(
            f"metric {spec.name!r} (version {spec.version}){where} failed on unit {unit.run_id[:12]} "
            f"({unit.describe()}): {failure(e)}",
            hint="fix the metric and run `rescore score` again (RESCORE_DEBUG=1 shows the traceback); "
                 "scores written before it are kept") from None
    return spec.file_name, meta, out


def unit_columns(unit: Unit) -> list[str]:
    """The columns of a complete unit's rows (raises :class:`CorruptArtifactError` naming a damaged file)."""
    return unit.columns()


_FORK_WORK: tuple[Store, list[tuple[Unit, list[Metric]]]] | None = None


def _can_fork() -> bool:
    import multiprocessing

    return "fork" in multiprocessing.get_all_start_methods()


def _score_unit_job(index: int) -> list[tuple[str, dict[str, Any]]]:
    assert _FORK_WORK is not None
    store, work = _FORK_WORK
    unit, specs = work[index]
    return score_unit(store, unit, specs)


# -- the whole store ----------------------------------------------------------------------------------
def plan_unit(store: Store, unit: Unit, specs: Sequence[Metric], force: bool,
              report: ScoreReport) -> list[Metric]:
    """The specs of ``specs`` that a complete unit still needs."""
    have = scan_scores(store, unit.run_id)
    sha = unit.manifest.get("rows_parquet_sha256")
    names = None
    todo = []
    for spec in specs:
        if spec.request_type != unit.request_type:
            continue
        if spec.families and (unit.manifest.get("task") or {}).get("family") not in spec.families:
            continue
        why = spec.available()
        if why:
            report.unavailable[spec.name] = why
            continue
        if not force and is_current(have.get(spec.file_name), spec, sha):
            report.up_to_date += 1
            continue
        names = names if names is not None else set(unit_columns(unit))
        lacking = [c for c in spec.columns if c not in names]
        if lacking:
            report.skipped.append(f"{spec.name} on {unit.run_id[:12]}: the unit has no column(s) {lacking}")
            continue
        todo.append(spec)
    return todo


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


def score_store(store: Store, specs: Sequence[Metric] | None = None, *, force: bool = False,
                jobs: int | None = None, progress: ProgressFn | None = None, rebuild: bool = True) -> ScoreReport:
    """Score every complete unit of ``store`` with ``specs`` (default: all runnable registered metrics),
    then rebuild ``results.parquet``. ``jobs``: worker processes (None: :func:`auto_jobs`)."""
    t0 = time.perf_counter()
    specs = list(specs) if specs is not None else select_metrics()
    report = ScoreReport()
    work: list[tuple[Unit, list[Metric]]] = []
    for unit in store.units():
        if not unit.complete:
            report.partial_units.append(unit.run_id)
            continue
        report.units_complete += 1
        try:
            # cheap (its size and footer): a damaged or misplaced rows.parquet is reported even when every
            # score of the unit is up to date
            unit.check_rows_file()
            todo = plan_unit(store, unit, specs, force, report)
        except CorruptArtifactError as e:  # one damaged unit never stops the others
            report.corrupt_units.append((unit.run_id, e.render()))
            continue
        if todo:
            work.append((unit, todo))
    # units whose manifest cannot be read are left out of everything: say which
    report.corrupt_units += [(d.name, message) for d, message in store.corrupt]
    # every file this run writes is checked for symbolic links before the first is written: all or nothing
    refuse_symlinks(store.root, *([store.results_path] if rebuild else []),
                    *(scores_dir(store, u.run_id) / n for u, todo in work for n in (INDEX, *(s.file_name for s in todo))))
    total = len(work)
    if jobs is None:
        jobs = auto_jobs(work)
    if progress:
        progress("scoring", 0, total)
    if jobs > 1 and total > 1 and _can_fork():
        report.jobs = min(jobs, total)
        import multiprocessing

        import rescore.children  # noqa: F401  (for the workers: their start-up imports nothing)

        # forked workers inherit the registered metrics (plugins included) and the work list, so specs
        # (closures, lambdas) never need pickling; each worker gets an index
        global _FORK_WORK
        # largest units first, so the last unit to finish is a small one (rows.parquet size tracks the cost)
        work.sort(key=lambda w: -_size(w[0]))
        _FORK_WORK = (store, work)
        pool = ProcessPoolExecutor(max_workers=min(jobs, total), mp_context=multiprocessing.get_context("fork"),
                                   initializer=_worker_signals, initargs=(os.getpid(),))
        try:
            with warnings.catch_warnings():
                # Python >= 3.12 warns about fork() in a process with threads (Arrow's idle pools here);
                # the workers only score and write their own files
                warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
                # the first submit forks every worker; until a worker has set its own handlers, a signal
                # waits (blocked), so it never runs this process's handlers in the fork
                mask = _block_stop_signals()
                try:
                    futs = [(u, pool.submit(_score_unit_job, i)) for i, (u, _) in enumerate(work)]
                finally:
                    _restore_signals(mask)
            for i, (u, fut) in enumerate(futs):
                try:
                    _record(report, u, fut.result())
                except CorruptArtifactError as e:
                    report.corrupt_units.append((u.run_id, e.render()))
                if progress:
                    progress(u.describe(), i + 1, total)
        except BrokenProcessPool:
            _stop(pool)
            raise ScoreError("a scoring process died (killed, or out of memory?)",
                             hint="run `rescore score` again with fewer processes (`--jobs 1` scores in this one); "
                                  "the scores written before it are kept") from None
        except BaseException:  # a failing metric, Ctrl-C, SIGTERM: stop the other workers now, not after the queue
            _stop(pool)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            _FORK_WORK = None
    elif work:
        # one thread reads the next unit and writes score files while this one computes
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="rescore-io") as io_pool:
            nxt = io_pool.submit(load_unit, *work[0])
            for i, (u, todo) in enumerate(work):
                try:
                    loaded = nxt.result()
                except CorruptArtifactError as e:  # one damaged unit never stops the others
                    loaded = None
                    report.corrupt_units.append((u.run_id, e.render()))
                if i + 1 < total:
                    nxt = io_pool.submit(load_unit, *work[i + 1])
                if loaded is not None:
                    try:  # a metric may read more columns of the unit (a damaged page is found then)
                        _record(report, u, score_unit(store, u, todo, loaded, writer=io_pool))
                    except CorruptArtifactError as e:
                        report.corrupt_units.append((u.run_id, e.render()))
                del loaded
                if progress:
                    progress(u.describe(), i + 1, total)
    if rebuild:
        table = build_results(store, specs_by_name=_registered_current(), damaged=report.damaged)
        write_results(store, table)
        report.results_rows = table.num_rows
    report.seconds = time.perf_counter() - t0
    return report


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
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        if proc.is_alive():
            proc.terminate()


def _size(unit: Unit) -> int:
    try:
        return unit.parquet_path.stat().st_size
    except OSError:
        return 0


def _record(report: ScoreReport, unit: Unit, written: list[tuple[str, dict[str, Any]]]) -> None:
    report.units_scored += 1
    for _, meta in written:
        report.computed.append((unit.run_id, meta["metric"], meta["version"]))
        if meta.get("applies"):
            report.applied.add(meta["metric"])


def _registered_current() -> dict[str, Metric]:
    load_builtin()
    out = {}
    for n in metrics.names():
        s = metrics.get(n)
        if not s.missing_params():
            out[n] = s
    return out


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
        by_name.setdefault(meta.get("metric", m.group("name")), []).append(meta)
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


def group_key(manifest: dict[str, Any]) -> str:
    """Units that differ only in their seed share this key (their seed aggregate is one row)."""
    resolved = manifest.get("resolved")
    if isinstance(resolved, dict):
        base = {k: v for k, v in resolved.items() if k != "seed"}
    else:
        task = dict(manifest.get("task") or {})
        cfg = dict(task.get("config") or {})
        cfg.pop("seeds", None)
        model = manifest.get("model") or {}
        base = {"model": {k: model.get(k) for k in ("name", "path", "precision", "step", "stage", "backend")},
                "task": {"name": task.get("name"), "config": cfg}, "data_fp": manifest.get("data_fp"),
                "gen": manifest.get("gen")}
    return content_hash({"suite": manifest.get("suite"), "base": base}, 20)


def infer_tier(manifest: dict[str, Any], metric_names: Iterable[str]) -> str:
    """The task's tier from its config, else: rolling -> tier2, loglikelihood -> tier3, generation with
    SFT checks -> tier4, other generation (GSM8K) -> tier3."""
    tier = (manifest.get("task") or {}).get("tier")
    if tier:
        return str(tier)
    rt = manifest.get("request_type")
    if rt == "rolling":
        return "tier2"
    if rt == "generate" and "all_checks_pass_rate" in set(metric_names):
        return "tier4"
    return "tier3"


def _unit_base(unit: Unit) -> dict[str, Any]:
    m = unit.manifest
    model = m.get("model") or {}
    task = m.get("task") or {}
    step = model.get("step")
    return {
        "model": model.get("name"), "checkpoint": model.get("path"),
        "step": int(step) if isinstance(step, int | float) and not isinstance(step, bool) else None,
        "stage": model.get("stage"), "suite": m.get("suite"), "task": task.get("name"),
        "precision": model.get("precision"), "family": task.get("family"), "request_type": m.get("request_type"),
        "data_fp": m.get("data_fp"),
    }


def build_results(store: Store, specs_by_name: dict[str, Metric] | None = None,
                  damaged: list[tuple[str, str]] | None = None) -> pa.Table:
    """The tidy long results table from every complete unit's current score files (``damaged`` collects
    the score files left out because they are unreadable or incomplete)."""
    specs_by_name = _registered_current() if specs_by_name is None else specs_by_name
    rows: list[dict[str, Any]] = []
    groups: dict[str, list[tuple[Unit, dict[str, dict[str, Any]]]]] = {}
    for unit in store.units():
        if not unit.complete:
            continue
        chosen = choose_files(scan_scores(store, unit.run_id, damaged), unit.manifest.get("rows_parquet_sha256"),
                              specs_by_name)
        if not chosen:
            continue
        groups.setdefault(group_key(unit.manifest), []).append((unit, chosen))
    for members in groups.values():
        members.sort(key=lambda x: _seed_sort(x[0].manifest.get("seed")))
        base = _unit_base(members[0][0])
        tier = infer_tier(members[0][0].manifest, {n for _, ch in members for n, meta in ch.items()
                                                   if meta.get("aggregates")})
        agg_cells: dict[tuple[str, int, str], list[tuple[str, dict[str, Any], dict[str, Any]]]] = {}
        for unit, chosen in members:
            seed = str(unit.manifest.get("seed"))
            for name, meta in chosen.items():
                for subset, a in (meta.get("aggregates") or {}).items():
                    rows.append(_row(base, tier, name, meta, subset, seed, a, unit.run_id))
                    agg_cells.setdefault((name, int(meta["version"]), subset), []).append((unit.run_id, meta, a))
        for (name, _version, subset), cells in agg_cells.items():
            rows.append(_agg_row(base, tier, name, subset, cells))
    rows.sort(key=lambda r: (str(r["model"]), r["step"] if r["step"] is not None else -1, str(r["checkpoint"]),
                             str(r["task"]), r["metric"], r["subset"] != ALL, r["subset"], r["seed"] == "agg", r["seed"]))
    return pa.Table.from_pylist(rows, schema=RESULTS_SCHEMA)


def _seed_sort(seed: Any) -> tuple[int, str]:
    return (0, f"{int(seed):012d}") if isinstance(seed, int) else (1, str(seed))


def _row(base: dict[str, Any], tier: str, name: str, meta: dict[str, Any], subset: str, seed: str,
         a: dict[str, Any], run_id: str) -> dict[str, Any]:
    return {**base, "subset": subset, "metric": name, "metric_version": int(meta["version"]), "seed": seed,
            "value": a.get("value"), "stderr": a.get("stderr"), "n": a.get("n"), "run_id": run_id,
            "std": None, "min": None, "max": None, "n_seeds": None, "ci_low": a.get("ci_low"),
            "ci_high": a.get("ci_high"), "higher_is_better": meta.get("higher_is_better"),
            "aggregator": meta.get("aggregator"), "tier": tier}


def _agg_row(base: dict[str, Any], tier: str, name: str, subset: str,
             cells: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """The seed aggregate: value = mean over seeds, stderr = std/sqrt(n_seeds); with one seed it repeats
    that seed's value, stderr and CI (std is then null)."""
    sa = seed_aggregate([a.get("value") for _, _, a in cells])
    meta = cells[0][1]
    row = _row(base, tier, name, meta, subset, "agg", {}, ",".join(r for r, _, _ in cells))
    k = sa["n_seeds"]
    row.update(value=sa["mean"], std=sa["std"], min=sa["min"], max=sa["max"], n_seeds=k,
               n=sum(int(a.get("n") or 0) for _, _, a in cells))
    if k == 1:
        only = next(a for _, _, a in cells if a.get("value") is not None)
        row.update(stderr=only.get("stderr"), ci_low=only.get("ci_low"), ci_high=only.get("ci_high"))
    elif k > 1:
        se = sa["stderr"]
        row.update(stderr=se, ci_low=sa["mean"] - 1.959963984540054 * se, ci_high=sa["mean"] + 1.959963984540054 * se)
    return row


class DamagedFileWarning(UserWarning):
    """A damaged derived file (results.parquet) was rebuilt instead of being read."""


_RESULTS_HINT = "run `rescore score` to rebuild it from the score files"


def write_results(store: Store, table: pa.Table) -> None:
    """results.parquet, atomically, sealed (a CRC-32 of the whole file in its footer; see :func:`read_results`)."""
    write_sealed_parquet(store.results_path, table, root=store.root)


def check_results(store: Store) -> None:
    """Raise :class:`CorruptArtifactError` when results.parquet is damaged (what ``verify`` checks)."""
    read_sealed_parquet(store.results_path, _RESULTS_HINT)


def read_results(store: Store) -> pa.Table:
    """results.parquet, its seal and every page CRC verified. A damaged file is never shown: it is rebuilt
    from the score files (and rewritten), with a warning."""
    p = store.results_path
    if not p.is_file():
        raise StoreError(f"no results in {store.root}", hint="run `rescore score` first")
    try:
        return read_sealed_parquet(p, _RESULTS_HINT)
    except CorruptArtifactError as e:
        if not store.gen_dir.is_dir():
            raise
        damaged = e.message
    table = build_results(store)
    try:
        write_results(store, table)
        warnings.warn(f"{damaged}; rebuilt it from the score files", DamagedFileWarning, stacklevel=2)
    except (OSError, StoreError) as e:  # a read-only store: show the rebuilt table anyway
        warnings.warn(f"{damaged}; rebuilt the results from the score files, but could not rewrite it "
                      f"({_first_line(e)})", DamagedFileWarning, stacklevel=2)
    return table


def read_scores(store: Store | str | Path, run_id: str, metric: str) -> pa.Table | None:
    """The current per-row scores of one metric on one unit, ``sample_id`` first (None when not computed).
    ``store`` is a :class:`Store` or its directory."""
    if not isinstance(store, Store):
        store = Store(Path(store))
    unit = store.unit(run_id)
    chosen = choose_files(scan_scores(store, unit.run_id), unit.manifest.get("rows_parquet_sha256"),
                          _registered_current())
    meta = chosen.get(metric)
    if meta is None:
        return None
    return read_unit_scores(unit, score_file_path(store, unit.run_id, meta))


def score_file_path(store: Store, run_id: str, meta: dict[str, Any]) -> Path:
    """The file holding the per-row scores that ``meta`` (from :func:`choose_files`, which names it)
    describes."""
    return scores_dir(store, run_id) / str(meta["file"])


__all__ = ["score_store", "select_metrics", "build_results", "read_results", "read_scores", "ScoreReport",
           "ScoreError", "RESULTS_SCHEMA", "ALL", "canonical_json"]

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

The parts: :mod:`rescore.score.select` (which metrics, their parameters), :mod:`rescore.score.files` (the
score-file format and its index), :mod:`rescore.score.parallel` (worker processes, how many, stopping them),
:mod:`rescore.score.results` (the results table) and this module (computing units, the run over a store).
Their public names stay importable from here.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from rescore.artifacts.io import refuse_symlinks
from rescore.artifacts.store import Store, Unit
from rescore.core import canonical_json
from rescore.errors import CorruptArtifactError, UserError
from rescore.score.columns import float_array
from rescore.score.files import (  # noqa: F401  (re-exported: importable from the engine as before)
    INDEX,
    META_KEY,
    _index_checksum,
    _index_written,
    check_score_file,
    choose_files,
    forget_score_files,
    is_current,
    read_score_file,
    read_unit_scores,
    scan_scores,
    score_file_path,
    score_files,
    scores_dir,
    sync_scores,
    write_score_file,
)
from rescore.score.parallel import (  # noqa: F401  (re-exported: importable from the engine as before)
    _block_stop_signals,
    _can_fork,
    _restore_signals,
    _size,
    _stop,
    _unit_memory,
    _worker_signals,
    auto_jobs,
    needed_columns,
)
from rescore.score.results import (  # noqa: F401  (re-exported: importable from the engine as before)
    ALL,
    RESULTS_SCHEMA,
    DamagedFileWarning,
    _registered_current,
    build_results,
    check_results,
    infer_tier,
    read_results,
    read_scores,
    write_results,
)
from rescore.score.select import check_params, select_metrics  # noqa: F401  (re-exported)
from rescore.score.spec import Agg, Metric, UnitInfo, aggregators


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
        bounds = subsets.bounds if isinstance(subsets, Subsets) else {}
        if order is not None and name in bounds:  # the same rows in the same order, from a slice
            a, b = bounds[name]
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

    info = UnitInfo(run_id=unit.run_id, manifest=unit.manifest, read=read_more, unit=unit)
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
        if unit.request_type not in (spec.request_type, *spec.also_request_types):
            continue
        if spec.families and (unit.manifest.get("task") or {}).get("family") not in spec.families:
            continue
        if spec.applies is not None and not spec.applies(unit.manifest):
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
        if lacking == ["dist_positions"]:  # a unit that stores no distributions: nothing to say
            continue
        if lacking:
            report.skipped.append(f"{spec.name} on {unit.run_id[:12]}: the unit has no column(s) {lacking}")
            continue
        todo.append(spec)
    return todo


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


def _record(report: ScoreReport, unit: Unit, written: list[tuple[str, dict[str, Any]]]) -> None:
    report.units_scored += 1
    for _, meta in written:
        report.computed.append((unit.run_id, meta["metric"], meta["version"]))
        if meta.get("applies"):
            report.applied.add(meta["metric"])


__all__ = ["score_store", "select_metrics", "build_results", "read_results", "read_scores", "ScoreReport",
           "ScoreError", "RESULTS_SCHEMA", "ALL", "canonical_json"]

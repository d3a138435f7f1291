"""``results.parquet``: the results table, rebuilt from the score files after every scoring run.

One row per unit (seed) and metric and subset, and one ``seed="agg"`` row per group of units that differ only
in their seed. The file is sealed and checked when read; a damaged one is rebuilt from the score files.
See :data:`RESULTS_SCHEMA`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa

from rescore.artifacts.integrity import first_line as _first_line
from rescore.artifacts.integrity import (
    read_sealed_parquet,
    write_sealed_parquet,
)
from rescore.artifacts.store import Store, Unit
from rescore.core import content_hash
from rescore.errors import CorruptArtifactError, StoreError
from rescore.score.aggregate import seed_aggregate
from rescore.score.files import choose_files, read_unit_scores, scan_scores, score_file_path
from rescore.score.registry import load_builtin
from rescore.score.spec import Metric, metrics

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


def _registered_current() -> dict[str, Metric]:
    load_builtin()
    out = {}
    for n in metrics.names():
        s = metrics.get(n)
        if not s.missing_params():
            out[n] = s
    return out


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

"""Checkpoints against a baseline (``rescore compare``): deltas, paired bootstrap, policy gates.

For every compared checkpoint, task and metric (the metrics the baseline has on that task, except
``sum`` counts such as ``tokens``): the delta ``value - base`` on the samples both sides scored
(``delta_ppl = ppl_step - ppl_bridge``, want <= 0; ``delta_acc = acc_step - acc_bridge``, want >= 0; the
wanted sign comes from the metric's ``higher_is_better``), the relative delta ``delta / |base|``, and a
paired bootstrap over the shared sample ids (see :mod:`rescore.report.bootstrap`) giving a CI and a
p-value; the draw is seeded by (``seed``, task, the two checkpoints, the shared ids), so the metrics of a
task pair share one draw and every number is reproducible. Seeds: the seeds both sides have (each side averaged over them), or every seed of each side when
they share none. Per-row values come from the scorer's per-row files ``scores/<run_id>/<metric>@<v>.parquet``
(the same current files ``results.parquet`` is built from), aggregated exactly as the scorer aggregates
them: a mean, or sum(num)/sum(den) for perplexities and other ratios.

Checkpoints and the baseline are resolved by :mod:`rescore.report.catalog`, runs that differ in precision,
dtype, tokenizer or chat template are refused by :mod:`rescore.report.guard`, and the comparison is rendered
by :mod:`rescore.report.results`.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rescore.artifacts.store import Store, Unit
from rescore.core import content_hash
from rescore.errors import ConfigError
from rescore.plan.policy import Policy
from rescore.report import MAX_RESAMPLES
from rescore.report.bootstrap import DEFAULT_LEVEL, DEFAULT_RESAMPLES, CountsCache, aggregate_fn, paired_bootstrap
from rescore.report.catalog import Catalog, Checkpoint, build_catalog, resolve_baseline, select_models
from rescore.report.guard import MixedRunsError, guard_mixed, guard_result_rows
from rescore.report.kl import UNIT_METRICS, kl_rows
from rescore.report.kl import wanted as kl_wanted
from rescore.report.policy import evaluate
from rescore.report.results import COMPARE_COLUMNS as COLUMNS
from rescore.report.results import compare_csv as to_csv
from rescore.report.results import compare_json as to_json
from rescore.report.results import compare_markdown as to_markdown
from rescore.report.results import compare_summary as summary_line
from rescore.report.results import render_compare as render
from rescore.score.engine import (
    choose_files,
    infer_tier,
    read_unit_scores,
    scan_scores,
    score_file_path,
    select_metrics,
)


# -- per-row scores ----------------------------------------------------------------------------------------
def current_specs() -> dict[str, Any]:
    """The registered metrics now (``score`` registers a store's lm-eval metrics, whose versions depend on
    that store's task configs: never cached across stores)."""
    return {s.name: s for s in select_metrics()}


def unit_metrics(store: Store, unit: Unit, specs: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """metric -> score-file metadata of the unit's current score files (as results.parquet uses them)."""
    return choose_files(scan_scores(store, unit.run_id), unit.manifest.get("rows_parquet_sha256"),
                        current_specs() if specs is None else specs)


def read_rows(store: Store, unit: Unit, meta: dict[str, Any], columns: Sequence[str]) -> dict[str, np.ndarray]:
    """sample ids (object array) and the numeric columns of rows where the metric applies (value not null)."""
    cols = ["sample_id", *dict.fromkeys(["value", *columns])]
    t = read_unit_scores(unit, score_file_path(store, unit.run_id, meta), cols)
    out = {"sample_id": np.asarray(t.column("sample_id").to_pylist(), dtype=object)}
    for c in cols[1:]:
        out[c] = np.asarray(t.column(c).to_numpy(zero_copy_only=False), dtype=np.float64)
    keep = ~np.isnan(out["value"])
    return {k: v[keep] for k, v in out.items()}


# -- comparing ---------------------------------------------------------------------------------------------
@dataclass
class CompareRow:
    model: str
    baseline: str
    task: str
    tier: str | None
    metric: str
    higher_is_better: bool
    base: float | None = None
    value: float | None = None
    delta: float | None = None
    rel_delta: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    stderr: float | None = None
    n: int = 0
    seeds: str = ""
    step: int | None = None
    stage: str | None = None
    precision: str | None = None
    metric_version: int | None = None
    aggregator: str | None = None
    status: str = ""  # pass | fail | skip | missing | "" (not gated)
    reason: str = ""
    rule: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Comparison:
    baseline: str
    rows: list[CompareRow]
    notes: list[str]
    resamples: int
    level: float
    seed: int
    policy: Policy | None

    @property
    def failed(self) -> list[CompareRow]:
        return [r for r in self.rows if r.status in ("fail", "missing-fail")]

    @property
    def gated(self) -> list[CompareRow]:
        return [r for r in self.rows if r.status in ("pass", "fail", "missing-fail")]


def compare(store: Store, baseline: str | None = None, *, matrix: str | Path | None = None,
            models: Sequence[str] | None = None, suites: Sequence[str] | None = None,
            tasks: Sequence[str] | None = None, metrics: Sequence[str] | None = None, policy: Policy | None = None,
            allow_mixed: bool = False, resamples: int = DEFAULT_RESAMPLES, level: float = DEFAULT_LEVEL,
            seed: int = 0) -> Comparison:
    """Compare every selected checkpoint (all but the baseline by default) with ``baseline``; or, with only
    ``matrix``, each stage's checkpoints with that stage's bridge on the stage's suites."""
    if not 0 < level < 1:
        raise ConfigError(f"--level must be between 0 and 1, got {level}")
    if not 1 <= resamples <= MAX_RESAMPLES:
        raise ConfigError(f"--resamples must be between 1 and {MAX_RESAMPLES:,}, got {resamples}")
    if baseline is None and matrix is None:
        raise ConfigError("nothing to compare against", hint="pass --baseline CHECKPOINT or --matrix FILE")
    cat = build_catalog(store, suites=suites, tasks=tasks)
    notes = list(cat.notes)
    rows: list[CompareRow] = []
    if baseline is not None:
        base = resolve_baseline(cat, baseline)
        others = [c for c in select_models(cat, models) if c != base]
        if not others:
            raise ConfigError(f"nothing to compare with baseline {cat.labels[base]}",
                              hint="generate other checkpoints, or widen --models/--suite")
        pairs: list[StagePair] = [StagePair(None, base, others, None)]
        label = cat.labels[base]
    else:
        assert matrix is not None
        m = load_matrix_file(matrix)
        pairs = matrix_pairs(cat, m.config, select_models(cat, models) if models else None)
        label = f"each stage's bridge (matrix {m.config.name})"
        if not pairs and not any(s.bridge for s in m.config.stages):
            raise ConfigError(f"matrix {m.config.name!r} names no bridge, so no stage has a baseline to compare with",
                              hint="add `bridge: STAGE` to a stage of the matrix (its baseline is that stage's last "
                                   "checkpoint), or pass --baseline CHECKPOINT instead of --matrix")
        if not pairs:
            raise ConfigError(f"matrix {m.config.name!r} has no bridged stage with checkpoints in {store.root}",
                              hint="`rescore plan MATRIX` shows what to generate")
    comparer = _Comparer(store, cat, resamples=resamples, level=level, seed=seed, notes=notes)
    for pair in pairs:
        if pair.base is None:
            notes.append(f"stage {pair.stage}: its bridge {pair.missing_bridge} is not in the store; "
                         "run `rescore backfill MATRIX` to generate it")
            row = CompareRow(model=f"stage {pair.stage}", baseline=str(pair.missing_bridge), task="*", tier=None,
                             metric="*", higher_is_better=True, stage=pair.stage, status="missing",
                             reason="bridge not generated")
            if policy is not None and policy.missing == "fail":
                row.status = "missing-fail"
            rows.append(row)
            continue
        notes += guard_mixed(cat, [pair.base, *pair.others], allow_mixed=allow_mixed)
        rows += comparer.rows(pair.base, pair.others, pair.tasks, metrics, policy, both_sides=pair.stage is not None)
    return Comparison(label, rows, notes, resamples, level, seed, policy)


@dataclass
class StagePair:
    """Checkpoints compared with one baseline, on ``tasks`` (None: every task of the baseline)."""

    stage: str | None
    base: Checkpoint | None
    others: list[Checkpoint]
    tasks: set[str] | None
    missing_bridge: str | None = None


@dataclass
class MatrixFile:
    config: Any  # rescore.plan.matrix.MatrixConfig
    policy: Policy | None


def load_matrix_file(path: str | Path) -> MatrixFile:
    """A checkpoint matrix (validated as ``rescore plan`` does) and its optional ``policy:`` mapping."""
    from rescore.config import ConfigProblems, read_yaml
    from rescore.plan.matrix import MatrixConfig, matrix_problems
    from rescore.plan.policy import policy_from

    data = read_yaml(path)
    pol = None
    if isinstance(data, dict) and "policy" in data:
        data = dict(data)
        pol = policy_from(data.pop("policy"), str(path))
    problems = matrix_problems(data, str(path))
    if problems:
        raise ConfigProblems(str(path), problems)
    return MatrixFile(MatrixConfig(**data), pol)


def matrix_pairs(cat: Catalog, m: Any, selected: Sequence[Checkpoint] | None) -> list[StagePair]:
    """Per bridged stage: (its bridge checkpoint, the stage's checkpoints in the store, its suites' tasks)."""
    from rescore.plan.matrix import checkpoint_name
    from rescore.tasks.suites import load_suite

    by_name = {s.name: s for s in m.stages}
    out = []
    for s in m.stages:
        if not s.bridge:
            continue
        b = by_name[s.bridge]
        last = max(b.steps)
        bridge = [c for c in cat.units if c.stage == b.name and c.step == last
                  and c.name == checkpoint_name(b.name, last) and c.precision == m.precision]
        others = [c for c in cat.checkpoints if c.stage == s.name and c.precision == m.precision
                  and (selected is None or c in selected)]
        if not others:
            continue
        tasks = {t.name for suite in (s.suites or m.suites) for t in load_suite(suite).tasks}
        if not bridge:
            out.append(StagePair(s.name, None, others, tasks, missing_bridge=checkpoint_name(b.name, last)))
        else:
            out.append(StagePair(s.name, bridge[0], others, tasks))
    return out


class _Comparer:
    """Rows of checkpoints against a baseline; caches score metadata and per-row values across pairs."""

    def __init__(self, store: Store, cat: Catalog, *, resamples: int, level: float, seed: int, notes: list[str]) -> None:
        self.store, self.cat, self.notes = store, cat, notes
        self.kw = {"resamples": resamples, "level": level, "seed": seed}
        self._metas: dict[str, dict[str, dict[str, Any]]] = {}
        self._rows: dict[tuple[str, str], dict[str, np.ndarray]] = {}
        self.counts = CountsCache()
        self._specs = current_specs()

    def metas_of(self, u: Unit) -> dict[str, dict[str, Any]]:
        if u.run_id not in self._metas:
            self._metas[u.run_id] = unit_metrics(self.store, u, self._specs)
        return self._metas[u.run_id]

    def rows_of(self, u: Unit, meta: dict[str, Any], needs: Sequence[str]) -> dict[str, np.ndarray]:
        key = (u.run_id, meta["metric"])
        if key not in self._rows:
            self._rows[key] = read_rows(self.store, u, meta, needs)
        return self._rows[key]

    def rows(self, base: Checkpoint, others: Sequence[Checkpoint], tasks: set[str] | None,
             metrics: Sequence[str] | None, policy: Policy | None, *, both_sides: bool = False) -> list[CompareRow]:
        """Rows for the baseline's tasks; with ``both_sides`` (a matrix stage, whose suites say what must be
        compared) also for the checkpoints' tasks that the baseline lacks, as missing."""
        cat = self.cat
        out: list[CompareRow] = []
        base_tasks = {t: u for t, u in cat.units[base].items() if tasks is None or t in tasks}
        for ck in others:
            label = cat.labels[ck]
            if both_sides:
                out += self._baseline_lacks(base, ck, tasks, base_tasks, metrics, policy)
            for task in sorted(base_tasks):
                b_units = base_tasks[task]
                b_meta = _metric_union(b_units.values(), self.metas_of)
                tier = infer_tier(next(iter(b_units.values())).manifest, b_meta)
                c_units = cat.units[ck].get(task, {})
                c_meta = _metric_union(c_units.values(), self.metas_of) if c_units else {}
                # the metrics of either side: one the baseline lacks (never scored, or its score file is
                # damaged) is a missing row, as one the checkpoint lacks
                for metric in sorted(set(b_meta) | set(c_meta)):
                    meta = b_meta.get(metric) or c_meta[metric]
                    side = b_units if metric in b_meta else c_units
                    if meta.get("aggregator") == "sum" or not _applies(side.values(), metric, self.metas_of):
                        continue  # counts (tokens) are not a quality to compare; nor a metric no row applies to
                    if metrics and not any(fnmatch.fnmatchcase(metric, p) for p in metrics):
                        continue
                    if metric in UNIT_METRICS:  # compared from the stored distributions below (kl_rows)
                        continue
                    row = CompareRow(model=label, baseline=cat.labels[base], task=task, tier=tier, metric=metric,
                                     higher_is_better=bool(meta.get("higher_is_better", True)), step=ck.step,
                                     stage=ck.stage, precision=ck.precision, metric_version=meta.get("version"),
                                     aggregator=meta.get("aggregator"))
                    if metric not in b_meta:
                        row.status, row.reason = "missing", (f"the baseline {cat.labels[base]} has no {metric} scores "
                                                             f"on {task} (`rescore score` computes them)")
                    elif metric in c_meta:
                        _fill(row, self.store, b_units, c_units, metric, self.metas_of, self.rows_of,
                              notes=self.notes, cache=self.counts, **self.kw)  # type: ignore[arg-type]
                    else:
                        row.status, row.reason = "missing", (f"{label} has no {task} units" if not c_units
                                                             else f"{label} has no {metric} scores on {task}")
                    _gate(row, policy)
                    out.append(row)
                if kl_names := kl_wanted(metrics):  # KL of stored distributions: asked for by -M only

                    def empty(metric: str, task: str = task, tier: str | None = tier, label: str = label,
                              ck: Checkpoint = ck) -> CompareRow:
                        return CompareRow(model=label, baseline=cat.labels[base], task=task, tier=tier, metric=metric,
                                          higher_is_better=False, step=ck.step, stage=ck.stage,
                                          precision=ck.precision)

                    for row in kl_rows(empty, task, b_units, c_units, kl_names, model=label, baseline=cat.labels[base],
                                       cache=self.counts, **self.kw):  # type: ignore[arg-type]
                        _gate(row, policy)
                        out.append(row)
        return out

    def _baseline_lacks(self, base: Checkpoint, ck: Checkpoint, tasks: set[str] | None,
                        base_tasks: dict[str, dict[str, Unit]], metrics: Sequence[str] | None,
                        policy: Policy | None) -> list[CompareRow]:
        out = []
        blabel, label = self.cat.labels[base], self.cat.labels[ck]
        for task, units in sorted(self.cat.units[ck].items()):
            if task in base_tasks or (tasks is not None and task not in tasks):
                continue
            c_meta = _metric_union(units.values(), self.metas_of)
            tier = infer_tier(next(iter(units.values())).manifest, c_meta)
            for metric, meta in sorted(c_meta.items()):
                if not _selected(meta, metric, metrics):
                    continue
                row = CompareRow(model=label, baseline=blabel, task=task, tier=tier, metric=metric,
                                 higher_is_better=bool(meta.get("higher_is_better", True)), step=ck.step,
                                 stage=ck.stage, precision=ck.precision, metric_version=meta.get("version"),
                                 aggregator=meta.get("aggregator"), status="missing",
                                 reason=f"the baseline {blabel} has no {task} units")
                _gate(row, policy)
                out.append(row)
        return out


def _selected(meta: dict[str, Any], metric: str, metrics: Sequence[str] | None) -> bool:
    return meta.get("aggregator") != "sum" and bool((meta.get("aggregates") or {}).get("all")) and (
        not metrics or any(fnmatch.fnmatchcase(metric, p) for p in metrics))


def _metric_union(units: Iterable[Unit], metas_of: Any) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for u in units:
        for name, meta in metas_of(u).items():
            out.setdefault(name, meta)
    return out


def _applies(units: Iterable[Unit], metric: str, metas_of: Any) -> bool:
    return any(((metas_of(u).get(metric) or {}).get("aggregates") or {}).get("all") for u in units)


def _fill(row: CompareRow, store: Store, b_units: dict[str, Unit], c_units: dict[str, Unit], metric: str,
          metas_of: Any, rows_of: Any, *, resamples: int, level: float, seed: int, notes: list[str],
          cache: CountsCache | None = None) -> None:
    shared = sorted(set(b_units) & set(c_units), key=_seed_key)
    b_seeds = shared or sorted(b_units, key=_seed_key)
    c_seeds = shared or sorted(c_units, key=_seed_key)
    b_list = [(b_units[s], metas_of(b_units[s]).get(metric)) for s in b_seeds]
    c_list = [(c_units[s], metas_of(c_units[s]).get(metric)) for s in c_seeds]
    b_list = [(u, m) for u, m in b_list if m is not None]
    c_list = [(u, m) for u, m in c_list if m is not None]
    meta = b_list[0][1]
    needs, agg = aggregate_fn(str(meta.get("aggregator", "mean")), meta.get("agg_params"))
    versions = {m.get("version") for _, m in b_list + c_list}
    if len(versions) > 1:
        notes.append(f"{row.task}/{metric}: {row.model} and {row.baseline} were scored with different metric "
                     f"versions {sorted(versions)}; run `rescore score` to bring them up to date")
    b_rows = [rows_of(u, m, needs) for u, m in b_list]
    c_rows = [rows_of(u, m, needs) for u, m in c_list]
    ids = set(b_rows[0]["sample_id"])
    for r in b_rows[1:] + c_rows:
        ids &= set(r["sample_id"])
    order = sorted(ids)
    n_all = max(len(r["sample_id"]) for r in b_rows + c_rows)
    if len(order) < n_all:
        notes.append(f"{row.task}/{metric}: {row.model} vs {row.baseline} paired on {len(order)} shared samples "
                     f"of up to {n_all}")
    b_cols = [_align(r, order, needs) for r in b_rows]
    c_cols = [_align(r, order, needs) for r in c_rows]
    # one draw per (task, checkpoint pair, shared samples): the metrics of a task reuse it (cache)
    rng_seed = int(content_hash({"seed": seed, "task": row.task, "model": row.model, "baseline": row.baseline,
                                 "ids": content_hash(order, 16)}, 15), 16)
    res = paired_bootstrap(b_cols, c_cols, agg, resamples=resamples, seed=rng_seed, level=level, cache=cache)
    row.base, row.value, row.delta = _num(res.base), _num(res.value), _num(res.delta)
    row.ci_low, row.ci_high, row.p_value, row.stderr, row.n = res.ci_low, res.ci_high, res.p_value, res.stderr, res.n
    if row.delta is not None and row.base not in (None, 0):
        row.rel_delta = row.delta / abs(row.base)  # type: ignore[arg-type]
    row.seeds = ",".join(shared) if shared else f"{','.join(b_seeds)} vs {','.join(c_seeds)}"


def _align(r: dict[str, np.ndarray], order: list[str], needs: Sequence[str]) -> dict[str, np.ndarray]:
    pos = {sid: i for i, sid in enumerate(r["sample_id"])}
    idx = np.fromiter((pos[s] for s in order), dtype=np.int64, count=len(order))
    return {k: r[k][idx] for k in needs}


def _seed_key(s: str) -> tuple[int, str]:
    return (0, f"{int(s):012d}") if s.isdigit() else (1, s)


def _num(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _gate(row: CompareRow, policy: Policy | None) -> None:
    if policy is None:
        return
    rule = policy.rule_for(row.tier, row.task, row.metric)
    if rule is None:
        return
    row.rule = rule.describe()
    if row.status == "missing":
        if rule.skip or policy.missing == "ignore":
            return
        row.status = "missing-fail"
        return
    row.status, row.reason = evaluate(rule, base=row.base, delta=row.delta, ci_low=row.ci_low, ci_high=row.ci_high,
                                      p_value=row.p_value, higher_is_better=row.higher_is_better)


__all__ = ["compare", "Comparison", "CompareRow", "Checkpoint", "Catalog", "build_catalog", "resolve_baseline",
           "guard_mixed", "guard_result_rows", "MixedRunsError", "render", "summary_line", "to_markdown", "to_csv",
           "to_json", "COLUMNS", "load_matrix_file", "matrix_pairs", "unit_metrics", "read_rows"]

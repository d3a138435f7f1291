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

A *checkpoint* is a (model name, path, step, stage, precision) found in the unit manifests; its label is
``name@step``. The baseline is named by label (``bridge@1000``), model name, checkpoint path, step, or
run-id prefix (the checkpoint of that unit); an ambiguous name is an error listing the candidates.

Runs are put side by side only when they agree on precision, dtype, tokenizer hash and (for chat tasks)
chat template hash; otherwise :class:`MixedRunsError` names the runs that differ (``--allow-mixed``
overrides it).
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from rescore.artifacts.store import Store, Unit
from rescore.core import content_hash
from rescore.errors import ConfigError, UserError
from rescore.report import MAX_RESAMPLES
from rescore.report.bootstrap import DEFAULT_LEVEL, DEFAULT_RESAMPLES, CountsCache, aggregate_fn, paired_bootstrap
from rescore.plan.policy import Policy
from rescore.report.policy import evaluate
from rescore.score.engine import (
    choose_files,
    infer_tier,
    read_unit_scores,
    scan_scores,
    score_file_path,
    select_metrics,
)

GUARDED = ("precision", "dtype", "tokenizer_hash", "chat_template_hash")


class MixedRunsError(UserError):
    """Runs with different precision, dtype, tokenizer or chat template would be compared."""


# -- checkpoints and the catalog of units -----------------------------------------------------------------
@dataclass(frozen=True)
class Checkpoint:
    name: str
    path: str
    step: int | None
    stage: str | None
    precision: str

    @classmethod
    def of(cls, manifest: dict[str, Any]) -> Checkpoint:
        m = manifest.get("model") or {}
        step = m.get("step")
        return cls(name=str(m.get("name")), path=str(m.get("path")),
                   step=int(step) if isinstance(step, int | float) and not isinstance(step, bool) else None,
                   stage=m.get("stage"), precision=str(m.get("precision")))

    @property
    def sort_key(self) -> tuple[Any, ...]:
        return (series_name(self), self.step if self.step is not None else -1, self.name, self.path, self.precision)


@dataclass
class Catalog:
    """Complete units by checkpoint, task and seed (the newest unit when a cell has several)."""

    store: Store
    units: dict[Checkpoint, dict[str, dict[str, Unit]]] = field(default_factory=dict)
    labels: dict[Checkpoint, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def checkpoints(self) -> list[Checkpoint]:
        return sorted(self.units, key=lambda c: c.sort_key)

    def all_units(self, ckpts: Iterable[Checkpoint] | None = None) -> list[Unit]:
        return [u for c in (ckpts if ckpts is not None else self.units) for t in self.units[c].values() for u in t.values()]


def suite_tasks(store: Store, suite: str) -> set[str] | None:
    """Task names of a suite (shipped name or YAML path); falls back to the manifests' suite field."""
    try:
        from rescore.tasks.suites import load_suite

        return {t.name for t in load_suite(suite).tasks}
    except ConfigError:
        names = {(u.manifest.get("task") or {}).get("name") for u in store.units() if u.manifest.get("suite") == suite}
        if names:
            return {n for n in names if n}
        raise


def build_catalog(store: Store, *, suites: Sequence[str] | None = None, tasks: Sequence[str] | None = None) -> Catalog:
    if not store.gen_dir.is_dir():
        raise UserError(f"no generation units in {store.root}", hint="run `rescore gen` first, or pass --store")
    allowed: set[str] | None = None
    for s in suites or []:
        allowed = (allowed or set()) | (suite_tasks(store, s) or set())
    cat = Catalog(store)
    seen: set[str] = set()  # the tasks --task may name
    for u in store.units():
        if not u.complete:
            continue
        task = str((u.manifest.get("task") or {}).get("name"))
        if allowed is not None and task not in allowed:
            continue
        seen.add(task)
        if tasks and not any(fnmatch.fnmatchcase(task, p) for p in tasks):
            continue
        ck = Checkpoint.of(u.manifest)
        seed = str(u.manifest.get("seed"))
        cell = cat.units.setdefault(ck, {}).setdefault(task, {})
        old = cell.get(seed)
        if old is not None:
            keep, drop = sorted([old, u], key=lambda x: str(x.manifest.get("completed_at")), reverse=True)
            cat.notes.append(f"{task} seed {seed} of {ck.name}@{ck.step} has several units; using the newest "
                             f"{keep.run_id[:12]}, not {drop.run_id[:12]}")
            u = keep
        cell[seed] = u
    if tasks:  # a --task that matches nothing is named, not reported as an empty store
        from rescore.report.results import check_patterns

        what = f"complete unit of suite(s) {', '.join(suites)}" if suites else "complete unit"
        check_patterns("task", tasks, seen, what=what, listing="tasks of the complete units")
    if not cat.units:
        what = f" for suite(s) {', '.join(suites)}" if suites else ""
        raise UserError(f"no complete units in {store.root}{what}", hint="`rescore status` shows what has been generated")
    cat.labels = unique_labels(cat.units)
    return cat


def unique_labels(ckpts: Iterable[Checkpoint]) -> dict[Checkpoint, str]:
    """``name@step`` (``name`` when it has no step or already ends with it, as a matrix's ``stage1-step300``),
    with ``[precision]`` and then the path added where needed to be unique."""
    cks = list(ckpts)
    labels = {c: c.name if c.step is None or names_step(c.name, c.step) else f"{c.name}@{c.step}" for c in cks}
    for extra in (lambda c: c.precision, lambda c: c.path):
        counts: dict[str, int] = {}
        for lab in labels.values():
            counts[lab] = counts.get(lab, 0) + 1
        for c in cks:
            if counts[labels[c]] > 1:
                labels[c] = f"{labels[c]}[{extra(c)}]"
    return labels


def names_step(name: str, step: int) -> bool:
    """Whether ``name`` ends with its step (``stage1-step300``, ``ckpt_300``)."""
    return re.search(rf"(?:^|[-_.@]|step)0*{step}$", name) is not None


def series_name(c: Checkpoint) -> str:
    """The name of the run a checkpoint belongs to: its model name without a trailing step."""
    if c.step is None or not names_step(c.name, c.step):
        return c.name
    return re.sub(rf"[-_.@]*(?:step)?[-_]?0*{c.step}$", "", c.name) or c.name


def select_models(cat: Catalog, patterns: Sequence[str] | None) -> list[Checkpoint]:
    """Checkpoints whose name, label or path matches one of the globs (all when none given)."""
    if not patterns:
        return cat.checkpoints
    out = [c for c in cat.checkpoints
           if any(fnmatch.fnmatchcase(s, p) for p in patterns for s in (c.name, cat.labels[c], c.path))]
    if not out:
        raise ConfigError(f"no checkpoint matches --models {' '.join(patterns)}",
                          hint="checkpoints here: " + ", ".join(cat.labels[c] for c in cat.checkpoints))
    return out


_HEX = re.compile(r"^[0-9a-f]{4,}$")


def resolve_baseline(cat: Catalog, spec: str) -> Checkpoint:
    """The checkpoint named by ``spec``: a label, a model name, a checkpoint path, a step or a run-id prefix.

    The first kind that matches anything decides; several matches of that kind are an error."""
    cks = cat.checkpoints
    kinds: list[tuple[str, list[Checkpoint]]] = [
        ("label", [c for c in cks if cat.labels[c] == spec]),
        ("model name", [c for c in cks if c.name == spec]),
        ("checkpoint path", [c for c in cks if c.path == spec]),
        ("step", [c for c in cks if spec.isdigit() and c.step == int(spec)]),
        ("run id", [c for c in cks if _HEX.match(spec)
                    and any(u.run_id.startswith(spec) for t in cat.units[c].values() for u in t.values())]),
    ]
    for kind, found in kinds:
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise ConfigError(f"baseline {spec!r} is ambiguous: {len(found)} checkpoints have that {kind} "
                              f"({', '.join(cat.labels[c] for c in found)})",
                              hint="name one by its label (NAME@STEP) or a run id prefix from `rescore ls`")
    labels = [cat.labels[c] for c in cks]
    close = difflib.get_close_matches(spec, labels + sorted({c.name for c in cks}), n=3)
    hint = (f"did you mean {', '.join(close)}? " if close else "") + "checkpoints here: " + ", ".join(labels)
    raise ConfigError(f"no checkpoint matches baseline {spec!r}", hint=hint)


# -- the precision guard --------------------------------------------------------------------------------------
def _uses_chat(unit: Unit) -> bool:
    cfg = (unit.manifest.get("task") or {}).get("config") or {}
    res = ((unit.manifest.get("resolved") or {}).get("task") or {})
    return bool(cfg.get("chat") or res.get("chat"))


def guard_mixed(cat: Catalog, ckpts: Sequence[Checkpoint], *, allow_mixed: bool = False) -> list[str]:
    """Refuse (MixedRunsError) when runs of the same task differ in precision, dtype, tokenizer hash or
    (chat tasks) chat template hash. With ``allow_mixed`` the differences are returned as warnings."""
    diffs: dict[str, dict[str, dict[str, str]]] = {}  # field -> value -> label -> example run id
    tasks = sorted({t for c in ckpts for t in cat.units.get(c, {})})
    for task in tasks:
        for fld in GUARDED:
            seen: dict[str, dict[str, str]] = {}
            for c in ckpts:
                for u in cat.units.get(c, {}).get(task, {}).values():
                    if fld == "chat_template_hash" and not _uses_chat(u):
                        continue
                    val = str((u.manifest.get("model") or {}).get(fld))
                    seen.setdefault(val, {}).setdefault(cat.labels[c], u.run_id[:12])
            if len(seen) > 1:
                for val, who in seen.items():
                    diffs.setdefault(fld, {}).setdefault(val, {}).update(who)
    if not diffs:
        return []
    parts = []
    for fld, vals in diffs.items():
        groups = "; ".join(f"{val}: " + ", ".join(f"{lab} (run {rid})" for lab, rid in sorted(who.items()))
                           for val, who in sorted(vals.items()))
        parts.append(f"{fld} differs ({groups})")
    msg = "runs differ: " + " | ".join(parts)
    if not allow_mixed:
        raise MixedRunsError(f"refusing to put runs side by side, {msg}",
                             hint="select runs that agree with --models or --suite, "
                                  "or pass --allow-mixed to put them side by side anyway")
    return [msg]


# -- per-row scores ----------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _current_specs() -> dict[str, Any]:
    return {s.name: s for s in select_metrics()}


def unit_metrics(store: Store, unit: Unit) -> dict[str, dict[str, Any]]:
    """metric -> score-file metadata of the unit's current score files (as results.parquet uses them)."""
    return choose_files(scan_scores(store, unit.run_id), unit.manifest.get("rows_parquet_sha256"), _current_specs())


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

    def metas_of(self, u: Unit) -> dict[str, dict[str, Any]]:
        if u.run_id not in self._metas:
            self._metas[u.run_id] = unit_metrics(self.store, u)
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


# -- output ------------------------------------------------------------------------------------------------
COLUMNS = ("model", "step", "stage", "precision", "baseline", "task", "tier", "metric", "higher_is_better", "base",
           "value", "delta", "rel_delta", "ci_low", "ci_high", "p_value", "stderr", "n", "seeds", "metric_version",
           "status", "reason", "rule")


def _f(v: float | None, digits: int = 4) -> str:
    if v is None:
        return "—"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.2f}" if abs(v) >= 1000 else f"{v:.{digits}f}"


def _signed(v: float | None) -> str:
    return "—" if v is None else ("+" if v > 0 else "") + _f(v)


def _status(r: CompareRow) -> str:
    return {"pass": "pass", "fail": "**FAIL**", "missing-fail": "**FAIL** (missing)", "missing": "missing",
            "skip": "skip", "": "—"}.get(r.status, r.status)


def to_markdown(c: Comparison) -> str:
    pct = f"{c.level:.0%}"
    out = [f"# Compared with {c.baseline}\n",
           f"Delta = model - baseline on the samples both scored; {pct} CI and two-sided p-value from a paired "
           f"bootstrap ({c.resamples} resamples, seed {c.seed}). ↑ higher is better, ↓ lower is better.\n"]
    by_model: dict[tuple[str, str], list[CompareRow]] = {}
    for r in c.rows:
        by_model.setdefault((r.model, r.baseline), []).append(r)
    for (model, baseline), rows in by_model.items():
        out.append(f"## {model} vs {baseline}\n")
        out.append(f"| Task | Metric | {baseline} | {model} | Δ | Δ% | {pct} CI | p | n | Policy |")
        out.append("|---|---|---:|---:|---:|---:|---|---:|---:|---|")
        for r in rows:
            arrow = "↑" if r.higher_is_better else "↓"
            rel = "—" if r.rel_delta is None else f"{r.rel_delta:+.2%}"
            ci = "—" if r.ci_low is None else f"[{_signed(r.ci_low)}, {_signed(r.ci_high)}]"
            p = "—" if r.p_value is None else f"{r.p_value:.3g}"
            status = _status(r) + (f": {r.reason}" if r.status in ("fail", "missing", "missing-fail") and r.reason else "")
            out.append(f"| {r.task} | {r.metric} {arrow} | {_f(r.base)} | {_f(r.value)} | {_signed(r.delta)} | {rel} "
                       f"| {ci} | {p} | {r.n} | {status} |")
        out.append("")
    out.append(summary_line(c))
    for n in c.notes:
        out.append(f"\nnote: {n}")
    return "\n".join(out).rstrip() + "\n"


def summary_line(c: Comparison) -> str:
    if c.policy is None:
        return f"{len(c.rows)} rows compared; no policy given (--policy FILE gates them)."
    failed = c.failed
    verdict = "FAILED" if failed else "passed"
    return (f"policy {verdict}: {len(failed)} of {len(c.gated)} gated rows failed"
            + (" (" + ", ".join(f"{r.model} {r.task}/{r.metric}" for r in failed[:8])
               + (", ..." if len(failed) > 8 else "") + ")" if failed else "") + ".")


def to_csv(c: Comparison) -> str:
    from rescore.report.results import to_csv as _csv

    return _csv([r.as_dict() for r in c.rows], COLUMNS)


def to_json(c: Comparison) -> str:
    import json

    def clean(v: Any) -> Any:
        return None if isinstance(v, float) and not math.isfinite(v) else v

    doc = {"baseline": c.baseline, "resamples": c.resamples, "level": c.level, "seed": c.seed,
           "policy": None if c.policy is None else c.policy.model_dump(exclude_defaults=True),
           "passed": None if c.policy is None else not c.failed,
           "rows": [{k: clean(v) for k, v in r.as_dict().items()} for r in c.rows], "notes": c.notes}
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def render(c: Comparison, fmt: str) -> str:
    formats = {"markdown": to_markdown, "csv": to_csv, "json": to_json}
    if fmt not in formats:
        raise ConfigError(f"unknown --format {fmt!r}", hint="choose markdown, csv or json")
    return formats[fmt](c)


__all__ = ["compare", "Comparison", "CompareRow", "Checkpoint", "Catalog", "build_catalog", "resolve_baseline",
           "guard_mixed", "MixedRunsError", "render", "to_markdown", "to_csv", "to_json"]


def guard_result_rows(store: Store, rows: Sequence[dict[str, Any]], *, allow_mixed: bool = False) -> list[str]:
    """The precision guard for a results table: the checkpoints and tasks of ``rows`` must agree in
    precision, dtype, tokenizer and chat template (see :func:`guard_mixed`)."""
    if not rows:
        return []
    tasks = sorted({str(r["task"]) for r in rows})
    shown = {(str(r["model"]), r.get("step")) for r in rows}
    try:
        cat = build_catalog(store, tasks=tasks)
    except UserError:
        return []
    ckpts = [c for c in cat.checkpoints if (c.name, c.step) in shown]
    try:
        return guard_mixed(cat, ckpts, allow_mixed=allow_mixed)
    except MixedRunsError as e:
        raise MixedRunsError(e.message, hint="select runs that agree with --model or --task, "
                                             "or pass --allow-mixed to show them side by side anyway") from None

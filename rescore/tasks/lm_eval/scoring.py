"""lm-eval's metrics computed on a CPU from the stored rows of ``lm_eval`` units.

The task objects are rebuilt from lm-eval's config with each task's documents taken from the rows (no
dataset), the stored responses become lm-eval ``Instance`` s (``(loglikelihood, is_greedy)`` per choice,
the summed loglikelihood of a rolling document, the generated text of each repeat), and lm-eval itself
runs its filters, ``process_results`` and aggregation (``_process_results``: groups' weighted averages,
its stderr, bootstrap included).

Each (metric, filter) is a rescore metric named ``lm-eval.<metric>`` (filter ``none``) or
``lm-eval.<metric>.<filter>`` with ``lm_eval_key`` ``"<metric>,<filter>"``: they never collide with the
built-ins. Per row its value is lm-eval's per-sample value (an item that is not a number, e.g. a
perplexity's ``(loglikelihood, words)``, is the task's aggregation of that one item); the aggregator
``lm_eval`` reports lm-eval's own aggregate of the rows' task (a group's subset per task) or group. A
metric's version is derived from lm-eval's version and the hashes of the task configs that define it in
the store, so an lm-eval upgrade or a changed filter rescores.

The score command calls :func:`register_store_metrics` (``rescore.score`` never imports this module).
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow as pa

from rescore.config import TaskConfig
from rescore.core import content_hash

PREFIX = "lm-eval."
COLUMNS = {"loglikelihood": ("meta", "choice_sum_logprob", "choice_is_greedy"), "rolling": ("meta", "sum_logprob"),
           "generate": ("meta", "candidates")}
AUX = ("lm_sub", "lm_sub_value", "lm_sub_stderr", "lm_top_value", "lm_top_stderr")
_cache: dict[str, dict[str, Any]] = {}


def metric_name(metric: str, filt: str) -> str:
    base = metric if filt == "none" else f"{metric}.{filt}"
    return PREFIX + re.sub(r"[^a-z0-9_.-]+", "-", base.lower()).strip("-")


def _task_config(manifest: dict[str, Any]) -> TaskConfig:
    from rescore.tasks.lm_eval.imported import is_imported, task_config

    if is_imported(manifest):
        return task_config(manifest)
    return TaskConfig.model_validate((manifest.get("task") or {}).get("config") or {})


def _loaded(task: TaskConfig, metas: list[dict[str, Any]]) -> tuple[Any, dict[str, Any]]:
    from rescore.tasks.base import task_params
    from rescore.tasks.lm_eval.loading import LmEvalParams, load

    p = task_params(task, LmEvalParams)
    if metas and metas[0].get("include_path"):
        p = p.model_copy(update={"include_path": metas[0]["include_path"]})
    docs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for m in metas:
        docs[m["lm_task"]].append(m["doc"])
    return p, load(task, p, docs=dict(docs))


def evaluate(manifest: dict[str, Any], table: pa.Table) -> dict[str, Any]:
    """lm-eval's per-row metric values and aggregates for one unit's rows (in row order)."""
    from lm_eval.api.instance import Instance
    from lm_eval.evaluator_utils import _process_results

    from rescore.tasks.lm_eval.imported import is_imported, read_metas

    rt = str(manifest.get("request_type"))
    metas = read_metas(manifest, table) if is_imported(manifest) else [json.loads(m) for m in table.column("meta").to_pylist()]
    task = _task_config(manifest)
    _, loaded = _loaded(task, metas)
    resp_cols = {c: table.column(c).to_pylist() for c in COLUMNS[rt][1:]}
    rows_of: dict[str, list[int]] = defaultdict(list)
    for i, m in enumerate(metas):
        rows_of[m["lm_task"]].append(i)
    acc: dict[str, Any] = {}
    per_row: list[dict[tuple[str, str], Any]] = [{} for _ in metas]
    for name, t in loaded["tasks"].items():
        rows = rows_of.get(name, [])
        if not rows:
            continue
        insts, by_row = [], []
        for i in rows:
            m = metas[i]
            mine = []
            for j, (args, idx) in enumerate(zip(m["args"], m["idx"], strict=True)):
                inst = Instance(request_type=m["type"], doc=m["doc"], arguments=tuple(args), idx=idx,
                                metadata=(name, m["doc_id"], m["repeats"]))
                inst.resps = m["resps"][j] if "resps" in m else _responses(rt, resp_cols, i, j, m["repeats"])
                mine.append(inst)
            insts += mine
            by_row.append((i, mine))
        t._instances = insts
        t.apply_filters()
        raw: dict[tuple[str, str], list[Any]] = defaultdict(list)
        for filt in insts[0].filtered_resps:
            for i, mine in by_row:
                for metric, value in t.process_results(metas[i]["doc"], [x.filtered_resps[filt] for x in mine]).items():
                    raw[(metric, filt)].append(value)
                    per_row[i][(metric, filt)] = value
        acc[name] = {"task": t, "raw_metrics": raw, "logged_samples": []}
    res = _process_results(acc, loaded["groups"], 100000)._to_eval_results()
    return {"results": res["results"], "per_row": per_row, "metas": metas, "tasks": loaded["tasks"],
            "top": _top(task, loaded)}


def _top(task: TaskConfig, loaded: dict[str, Any]) -> str:
    from rescore.tasks.base import task_params
    from rescore.tasks.lm_eval.loading import LmEvalParams, lm_task_name

    name = lm_task_name(task, task_params(task, LmEvalParams))
    if name in loaded["tasks"] or name in loaded["groups"]:
        return name
    return next(iter(loaded["tasks"]))  # a tag: its tasks have no aggregate of their own


def _responses(rt: str, cols: dict[str, list[Any]], i: int, j: int, repeats: int) -> list[Any]:
    if rt == "loglikelihood":
        return [(float(cols["choice_sum_logprob"][i][j]), bool(cols["choice_is_greedy"][i][j]))] * repeats
    if rt == "rolling":
        return [float(cols["sum_logprob"][i])] * repeats
    cands = list(cols["candidates"][i] or [])
    return (cands * repeats)[:repeats] if len(cands) < repeats else cands[:repeats]


def _cached(unit: Any, table: pa.Table) -> dict[str, Any]:
    key = f"{unit.run_id}:{unit.manifest.get('rows_parquet_sha256')}:{table.num_rows}"
    if key not in _cache:
        _cache.clear()
        try:
            _cache[key] = evaluate(dict(unit.manifest), table)
        except LookupError as e:  # nltk's data (IFEval's punkt_tab): a multi-line message of its own
            what = next((w for w in ("punkt_tab", "punkt", "wordnet", "stopwords") if w in str(e)), None)
            if what is None:
                raise
            from rescore.errors import ConfigError

            raise ConfigError(f"scoring lm-eval task {(unit.manifest.get('task') or {}).get('name')!r} needs nltk's "
                              f"{what!r} data, which is not installed here",
                              hint=f"run `python -m nltk.downloader {what}` where `rescore score` runs") from None
    return _cache[key]


def _num(v: Any) -> float:
    if v is None or v == "N/A":
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _row_value(task: Any, metric: str, item: Any) -> float:
    if isinstance(item, bool | int | float | np.floating | np.integer):
        return float(item)
    fn = task.aggregation().get(metric)
    try:
        return _num(fn([item])) if fn is not None else math.nan
    except Exception:  # noqa: BLE001 - an aggregation that needs more than one item
        return math.nan


def _metric_fn(metric: str, filt: str) -> Any:
    def fn(table: pa.Table, unit: Any = None) -> dict[str, Any]:
        ev = _cached(unit, table)
        n = table.num_rows
        out = {k: np.full(n, np.nan) for k in ("value", *AUX)}
        names = sorted({m["lm_task"] for m in ev["metas"]})
        top = ev["results"].get(ev["top"], {})
        for i, m in enumerate(ev["metas"]):
            item = ev["per_row"][i].get((metric, filt))
            if item is None and (metric, filt) not in ev["per_row"][i]:
                continue
            t = ev["tasks"][m["lm_task"]]
            sub = ev["results"].get(m["lm_task"], {})
            out["value"][i] = _row_value(t, metric, item)
            out["lm_sub"][i] = names.index(m["lm_task"])
            out["lm_sub_value"][i] = _num(sub.get(f"{metric},{filt}"))
            out["lm_sub_stderr"][i] = _num(sub.get(f"{metric}_stderr,{filt}"))
            out["lm_top_value"][i] = _num(top.get(f"{metric},{filt}"))
            out["lm_top_stderr"][i] = _num(top.get(f"{metric}_stderr,{filt}"))
        return out

    fn.__module__ = __name__
    return fn


def _aggregate(cols: Any, p: Any) -> Any:
    from rescore.score.spec import Agg

    n = len(cols["value"])
    if n == 0:
        return Agg(None, None, 0)
    one = len(np.unique(cols["lm_sub"])) == 1
    v = cols["lm_sub_value" if one else "lm_top_value"][0]
    s = cols["lm_sub_stderr" if one else "lm_top_stderr"][0]
    return Agg(None if math.isnan(v) else float(v), None if math.isnan(s) else float(s), n)


def register_aggregator() -> None:
    from rescore.score.spec import Aggregator, aggregators

    if "lm_eval" not in aggregators:
        aggregators.register("lm_eval", Aggregator(
            name="lm_eval", description="lm-evaluation-harness's own aggregate (and stderr) of the rows' task or group",
            direct=_aggregate, needs=("value", *AUX)))


def unit_keys(manifest: dict[str, Any], metas: list[dict[str, Any]]) -> tuple[list[tuple[str, str, bool]], list[str]]:
    """((metric, filter, higher_is_better) of the unit's tasks, their config hashes), with no dataset."""
    from rescore.tasks.lm_eval.loading import config_hash

    _, loaded = _loaded(_task_config(manifest), metas)
    keys: dict[tuple[str, str], bool] = {}
    hashes = []
    for t in loaded["tasks"].values():
        hib = t.higher_is_better()
        for f in t._filters:
            for metric in t._metric_fn_list:
                keys.setdefault((metric, f.name), bool(hib.get(metric, True)))
        hashes.append(config_hash(t))
    return [(m, f, h) for (m, f), h in keys.items()], hashes


def _applies(imported: frozenset[str]) -> Any:
    """The units lm-eval's metrics score: the ``lm_eval`` family's, and the imported ones whose task is known."""
    def applies(manifest: Any) -> bool:
        return (manifest.get("task") or {}).get("family") == "lm_eval" or manifest.get("run_id") in imported

    return applies


def register_store_metrics(store: Any, notes: list[str] | None = None) -> list[str]:
    """Register the lm-eval metrics of the store's ``lm_eval`` units and of its units imported from lm-eval
    runs (:mod:`rescore.tasks.lm_eval.imported`); returns their names. Imported units whose task lm-eval
    does not know here get none, and a line in ``notes``."""
    from rescore.tasks.lm_eval.imported import has_docs, is_imported, read_metas, resolve, unknown_note

    units = [u for u in store.units() if u.complete and ((u.manifest.get("task") or {}).get("family") == "lm_eval"
                                                         or is_imported(u.manifest))]
    if not units:
        return []
    from rescore.score.spec import Metric, metrics, register_metric
    from rescore.tasks.lm_eval.loading import lm_eval_version

    version = lm_eval_version()
    register_aggregator()
    found: dict[tuple[str, str], dict[str, Any]] = {}
    scored: set[str] = set()
    for u in units:
        imported = is_imported(u.manifest)
        if imported:
            _, why = resolve(u.manifest)
            if why is not None:
                if notes is not None:
                    notes.append(unknown_note(u.manifest, why))
                continue
        try:
            table = u.read_table(columns=list(COLUMNS[u.request_type]) if imported else ["meta"])
            raw = [json.loads(m) for m in table.column("meta").to_pylist()]
        except Exception:  # noqa: BLE001 - a damaged unit is reported by the scorer itself
            continue
        if imported and not has_docs(raw):
            if notes is not None:
                notes.append(unknown_note(u.manifest, "it was imported before rescore kept the documents of rolling "
                                                      "tasks", fix="import the run again"))
            continue
        metas = read_metas(u.manifest, table) if imported else raw
        if imported:
            scored.add(u.run_id)
        keys, hashes = unit_keys(u.manifest, metas)
        for metric, filt, hib in keys:
            e = found.setdefault((metric, filt), {"rts": set(), "hashes": set(), "hib": hib})
            e["rts"].add(u.request_type)
            e["hashes"].update(hashes)
    names = []
    for (metric, filt), e in sorted(found.items()):
        v = int(content_hash({"lm_eval": version, "configs": sorted(e["hashes"])}, 7), 16) + 1
        for rt in sorted(e["rts"]):
            name = metric_name(metric, filt) + (f".{rt}" if len(e["rts"]) > 1 else "")
            if name in metrics and not getattr(metrics.get(name).fn, "__module__", "").startswith(__name__):
                continue
            register_metric(Metric(
                name=name, fn=_metric_fn(metric, filt), columns=COLUMNS[rt], request_type=rt,
                higher_is_better=e["hib"], aggregator="lm_eval", version=v, needs_unit=True,
                applies=_applies(frozenset(scored)),
                description=f"lm-evaluation-harness {version} {metric} (filter {filt})",
                lm_eval_key=f"{metric},{filt}"))
            names.append(name)
    return names

"""Exports of the results: the tier layout dashboards read, and lm-evaluation-harness-style JSON.

``rescore export tiers OUTDIR`` writes, per checkpoint::

    OUTDIR/by_checkpoint/step_<STEP>/tier2_ppl.json                  perplexity tasks (tier2)
    OUTDIR/by_checkpoint/step_<STEP>/tier3_cf.json                   multiple-choice / answer tasks (tier3)
    OUTDIR/by_checkpoint/step_<STEP>/tier4_sft_native.json           summary / by_category / prompts (tier4)
    OUTDIR/by_checkpoint/step_<STEP>/tier4_sft_native_generations.jsonl   one line per generated candidate

``STEP`` is the manifest's ``model.step``; when it is missing, a number in the checkpoint directory name
(``step_1200``, ``checkpoint-1200``, ``ckpt1200``, ``iter_1200``) is used, else ``unknown`` (and the JSON
says ``"step": null``). Two different checkpoints with the same step are an error unless ``--model``
picks one. A task's tier is its suite's ``tier`` (else rolling -> tier2, multiple choice and GSM8K ->
tier3, SFT-native prompts -> tier4). Values are the seed aggregates (``seed="agg"``: mean over seeds,
with ``std``/``n_seeds``).

Nothing is written through a symbolic link below OUTDIR, and names read from the store become file names only
through :mod:`rescore.names` (sanitised), so no stored name can point outside OUTDIR.

``rescore export lm-eval OUTDIR`` writes ``OUTDIR/<model>/results.json`` per checkpoint, shaped like
lm-eval's results file (``results`` with ``"acc,none"`` / ``"acc_stderr,none"`` keys, ``versions``,
``n-samples``, ``higher_is_better``, ``config``), so tools that read lm-eval output can read ours.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from rescore.artifacts.io import atomic_write_bytes, atomic_write_json, refuse_symlinks
from rescore.artifacts.store import Store
from rescore.errors import ConfigError, StoreError
from rescore.names import child, sanitize

TIER_FILES = {"tier2": "tier2_ppl.json", "tier3": "tier3_cf.json", "tier4": "tier4_sft_native.json"}
GENERATIONS = "tier4_sft_native_generations.jsonl"
_STEP_RE = re.compile(r"(?:step|checkpoint|ckpt|iter|global_step)[-_]?(\d+)", re.IGNORECASE)


def resolve_step(step: Any, checkpoint: str | None) -> int | None:
    if isinstance(step, int) and not isinstance(step, bool):
        return step
    if checkpoint:
        m = _STEP_RE.findall(Path(str(checkpoint)).name) or _STEP_RE.findall(str(checkpoint))
        if m:
            return int(m[-1])
    return None


def _clean(v: Any) -> Any:
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    return v


def _cell(r: dict[str, Any]) -> dict[str, Any]:
    out = {"value": r["value"], "stderr": r["stderr"], "n": r["n"], "metric_version": r["metric_version"],
           "higher_is_better": r["higher_is_better"]}
    if (r.get("n_seeds") or 0) > 1:
        out.update(std=r["std"], min=r["min"], max=r["max"], n_seeds=r["n_seeds"])
    else:
        out["n_seeds"] = r.get("n_seeds")
    return {k: _clean(v) for k, v in out.items()}


def _checkpoints(rows: list[dict[str, Any]]) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    out: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault((r["model"], r["checkpoint"], r["step"], r["precision"], r["stage"]), []).append(r)
    return out


def _agg_rows(store: Store, models: Sequence[str] | None) -> list[dict[str, Any]]:
    from rescore.report.results import check_filters, filter_results
    from rescore.score.engine import read_results

    table = read_results(store)
    check_filters(table, model=models)  # a --model that matches nothing is named, with the closest names
    rows = filter_results(table, model=models, seed=["agg"], subset=None)
    if not rows:
        raise StoreError("no results to export" + (f" for model(s) {list(models)}" if models else ""),
                         hint="run `rescore score` first; `rescore results` lists what is there")
    return rows


def export_tiers(store: Store, outdir: Path, models: Sequence[str] | None = None) -> list[Path]:
    rows = _agg_rows(store, models)
    by_ckpt = _checkpoints(rows)
    dirs: dict[str, tuple[Any, ...]] = {}
    for key in by_ckpt:
        step = resolve_step(key[2], key[1])
        d = f"step_{step}" if step is not None else "step_unknown"
        if d in dirs and dirs[d][:2] != key[:2]:
            raise ConfigError(f"checkpoints {dirs[d][0]!r} ({dirs[d][1]}) and {key[0]!r} ({key[1]}) both export to {d}",
                              hint="export one model at a time with --model NAME")
        dirs.setdefault(d, key)
    # every document is built before the first is written: an export that fails (missing per-prompt
    # scores, say) leaves an earlier export in OUTDIR as it was, never half old and half new
    docs: list[tuple[Path, Any]] = []
    for d, key in dirs.items():
        crow = [r for k, rs in by_ckpt.items() if k[:2] == key[:2] for r in rs]
        step = resolve_step(key[2], key[1])
        head = {"model": key[0], "checkpoint": key[1], "step": step, "precision": key[3], "stage": key[4]}
        base = child(outdir, "by_checkpoint", d, kind="step directory")
        for tier, fname in TIER_FILES.items():
            trows = [r for r in crow if r.get("tier") == tier]
            if trows:
                docs.append((base / fname, tier4_doc(store, head, trows) if tier == "tier4" else tier_doc(head, trows)))
        t4 = [r for r in crow if r.get("tier") == "tier4"]
        if t4:
            docs.append((base / GENERATIONS, b"".join(orjson.dumps(x) + b"\n" for x in generation_lines(store, t4))))
    refuse_symlinks(outdir, *(path for path, _ in docs))  # before the first write: all or nothing
    for path, doc in docs:
        if isinstance(doc, bytes):
            atomic_write_bytes(path, doc, root=outdir)
        else:
            atomic_write_json(path, doc, root=outdir)
    return [path for path, _ in docs]


def tier_doc(head: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """{model..., tasks: {task: {metrics: {metric: cell}, slices: {slice: {metric: cell}}}}}."""
    tasks: dict[str, dict[str, Any]] = {}
    for r in rows:
        t = tasks.setdefault(r["task"], {"suite": r["suite"], "family": r["family"], "metrics": {}, "slices": {}})
        if r["subset"] == "all":
            t["metrics"][r["metric"]] = _cell(r)
        else:
            t["slices"].setdefault(r["subset"], {})[r["metric"]] = _cell(r)
    for t in tasks.values():
        if not t["slices"]:
            del t["slices"]
    return {**head, "tasks": tasks}


def _unit_ids(rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """task -> run ids of its units (from the seed-aggregate rows)."""
    out: dict[str, list[str]] = {}
    for r in rows:
        ids = [x for x in str(r.get("run_id") or "").split(",") if x]
        cur = out.setdefault(r["task"], [])
        for i in ids:
            if i not in cur:
                cur.append(i)
    return out


SFT_PROMPT_METRICS = ("instruction_match_rate", "format_valid_rate", "chat_clean_rate", "code_parse_rate",
                      "json_valid_rate", "concise_rate")


def tier4_doc(store: Store, head: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """summary: task -> metric -> cell; by_category: task -> category -> metric -> cell; prompts: one entry
    per SFT prompt (and seed) with each check's result on candidate 0."""
    summary: dict[str, dict[str, Any]] = {}
    by_cat: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        if r["subset"] == "all":
            summary.setdefault(r["task"], {})[r["metric"]] = _cell(r)
        else:
            by_cat.setdefault(r["task"], {}).setdefault(r["subset"], {})[r["metric"]] = _cell(r)
    prompts: list[dict[str, Any]] = []
    for task, ids in _unit_ids([r for r in rows if r["metric"] == "all_checks_pass_rate"]).items():
        for run_id in ids:
            prompts.extend(_prompt_entries(store, task, run_id))
    return {**head, "summary": summary, "by_category": by_cat, "prompts": prompts}


def _prompt_entries(store: Store, task: str, run_id: str) -> list[dict[str, Any]]:
    from rescore.score.engine import read_scores

    main = read_scores(store, run_id, "all_checks_pass_rate")
    if main is None:  # results.parquet has its aggregate, so the per-prompt file was lost or damaged since
        from rescore.errors import StoreError

        raise StoreError(f"the per-prompt all_checks_pass_rate scores of unit {run_id[:12]} ({task}) are missing "
                         "or damaged", hint="run `rescore score` (it recomputes them), then export again")
    unit = store.unit(run_id)
    info = unit.read_table(columns=["sample_id", "category"]).to_pylist()
    cat = {r["sample_id"]: r["category"] for r in info}
    extra: dict[str, dict[str, Any]] = {}
    for name in SFT_PROMPT_METRICS:
        t = read_scores(store, run_id, name)
        if t is not None:
            extra[name] = dict(zip(t.column("sample_id").to_pylist(), t.column("value").to_pylist(), strict=True))
    out = []
    for r in main.select(["sample_id", "value", "checks"]).to_pylist():
        if r["checks"] is None:
            continue
        sid = r["sample_id"]
        entry = {"task": task, "seed": unit.manifest.get("seed"), "sample_id": sid, "category": cat.get(sid),
                 "checks": orjson.loads(r["checks"]), "all_checks_pass": _bool(r["value"])}
        for name, vals in extra.items():
            v = vals.get(sid)
            entry[name.removesuffix("_rate")] = v if name == "instruction_match_rate" else _bool(v)
        out.append({k: _clean(v) for k, v in entry.items()})
    return out


def _bool(v: Any) -> bool | None:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return bool(v)


def generation_lines(store: Store, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per (unit, prompt, candidate) of the tier4 tasks: prompt, response, finish reason, and the
    candidate's check results (SFT prompts) or extracted answer and correctness (answer tasks)."""
    from rescore.score.checks import run_checks
    from rescore.score.extract import exact_match_norm, flexible_extract, strict_extract

    lines: list[dict[str, Any]] = []
    for task, ids in _unit_ids(rows).items():
        for run_id in ids:
            unit = store.unit(run_id)
            if unit.request_type != "generate":
                continue
            have = set(unit.columns())
            cols = [c for c in ("sample_id", "category", "prompt", "messages", "target", "meta", "candidates",
                                "cand_finish_reason") if c in have]
            for r in unit.read_table(columns=cols).to_pylist():
                meta = orjson.loads(r["meta"]) if r.get("meta") else {}
                checks = meta.get("checks") if isinstance(meta, dict) else None
                ref = r.get("target") if r.get("target") is not None else (meta or {}).get("answer")
                reasons = r.get("cand_finish_reason") or []
                for i, text in enumerate(r.get("candidates") or []):
                    line: dict[str, Any] = {
                        "task": task, "run_id": run_id, "seed": unit.manifest.get("seed"), "sample_id": r["sample_id"],
                        "candidate": i, "category": r.get("category"),
                        "prompt": r.get("prompt") if r.get("prompt") is not None else r.get("messages"),
                        "response": text, "finish_reason": reasons[i] if i < len(reasons) else None,
                    }
                    if checks:
                        res = run_checks(checks, text)
                        line["checks"] = res
                        ev = [v for v in res.values() if v is not None]
                        line["all_checks_pass"] = all(ev) if ev else None
                    elif ref is not None:
                        ref_n = exact_match_norm(str(ref))
                        s, f = strict_extract(text or ""), flexible_extract(text or "")
                        line.update(answer_strict=s, answer_flexible=f, reference=ref_n,
                                    exact_match_strict=exact_match_norm(s) == ref_n,
                                    exact_match_flexible=exact_match_norm(f) == ref_n)
                    lines.append(line)
    return lines


# -- lm-eval style ------------------------------------------------------------------------------------
def lm_eval_key(metric: str) -> tuple[str, str]:
    """(value key, stderr key), e.g. ("acc,none", "acc_stderr,none"), ("exact_match,strict-match", ...)."""
    from rescore.score.registry import load_builtin
    from rescore.score.spec import metrics

    load_builtin()
    key = metrics.get(metric).lm_eval_key if metric in metrics else None
    if key is None and metric.startswith("lm-eval."):  # an lm_eval task's metric: lm-eval.<metric>[.<filter>]
        name, _, filt = metric.removeprefix("lm-eval.").partition(".")
        key = f"{name},{filt or 'none'}"
    key = key or f"{metric},none"
    name, _, filt = key.partition(",")
    return key, f"{name}_stderr,{filt or 'none'}"


def export_lm_eval(store: Store, outdir: Path, models: Sequence[str] | None = None) -> list[Path]:
    rows = _agg_rows(store, models)
    docs: list[tuple[Path, dict[str, Any]]] = []
    by_ckpt = _checkpoints(rows)
    used: set[str] = set()
    for key, crow in by_ckpt.items():
        doc = lm_eval_doc(store, key, crow)
        base = sanitize(key[0], fallback="model")  # a stored name, made safe: never "../x" or "/abs"
        dname, k = base, 1
        while dname in used:  # checkpoints of one model (or names that sanitise alike) get -2, -3, ...
            k += 1
            dname = f"{base}-{k}"
        used.add(dname)
        doc["model_name_sanitized"] = dname
        docs.append((child(outdir, dname, "results.json", kind="model directory"), doc))
    refuse_symlinks(outdir, *(path for path, _ in docs))  # before the first write: all or nothing
    for path, doc in docs:
        atomic_write_json(path, doc, root=outdir)
    return [path for path, _ in docs]


def lm_eval_doc(store: Store, key: tuple[Any, ...], rows: list[dict[str, Any]]) -> dict[str, Any]:
    results: dict[str, dict[str, Any]] = {}
    hib: dict[str, dict[str, bool]] = {}
    n_samples: dict[str, dict[str, int]] = {}
    versions: dict[str, Any] = {}
    n_shot: dict[str, int] = {}
    configs: dict[str, Any] = {}
    for r in rows:
        lm_family = r["family"] == "lm_eval"
        if lm_family and not str(r["metric"]).startswith("lm-eval."):
            continue  # lm-eval's own metrics of the task are its results; the built-ins would take their keys
        if r["subset"] == r["task"]:
            continue  # a slice named after its task holds the whole task: the task's own entry has it
        name = r["task"] if r["subset"] == "all" else r["subset"] if lm_family else subtask_key(r["task"], r["subset"])
        entry = results.setdefault(name, {"alias": r["task"] if r["subset"] == "all" else f" - {r['subset']}"})
        vkey, skey = lm_eval_key(r["metric"])
        entry[vkey] = _clean(r["value"])
        entry[skey] = _clean(r["stderr"]) if r["stderr"] is not None else "N/A"
        hib.setdefault(name, {})[vkey.partition(",")[0]] = bool(r["higher_is_better"])
        n_samples[name] = {"original": int(r["n"] or 0), "effective": int(r["n"] or 0)}
        if r["subset"] == "all" and r["task"] not in configs:
            ids = [x for x in str(r["run_id"]).split(",") if x]
            manifest = store.unit(ids[0]).manifest if ids else {}
            tcfg = (manifest.get("task") or {}).get("config") or {}
            n_shot[name] = int(tcfg.get("num_fewshot") or 0)
            configs[name] = {"task": r["task"], "output_type": _output_type(r["request_type"]),
                             "num_fewshot": n_shot[name], "metadata": {"family": r["family"], "suite": r["suite"],
                                                                       "data_fp": r["data_fp"], "run_ids": ids,
                                                                       "rescore_metric_versions": {}}}
        if r["subset"] == "all" and name in configs:
            configs[name]["metadata"]["rescore_metric_versions"][r["metric"]] = r["metric_version"]
            # lm-eval's versions are one number per task: the highest version of the task's metrics here
            versions[name] = max(float(r["metric_version"] or 0), versions.get(name, 0.0))
    return {
        "results": results, "groups": {}, "configs": configs, "versions": versions, "n-shot": n_shot,
        "higher_is_better": hib, "n-samples": n_samples,
        "config": {"model": "rescore", "model_args": f"pretrained={key[1]}", "precision": key[3]},
        "model_name": key[0], "model_name_sanitized": key[0],
        "rescore": {"checkpoint": key[1], "step": resolve_step(key[2], key[1]), "stage": key[4], "precision": key[3]},
    }


def subtask_key(task: str, subset: str) -> str:
    """lm-eval's key of a task's slice: ``{task}_{slice}`` in lower case with every run of other characters
    than letters, digits, ``-`` and ``.`` as one ``_`` (``hellaswag_education_and_communications``)."""
    return f"{task}_{re.sub(r'[^a-z0-9.-]+', '_', subset.lower()).strip('_')}"


def _output_type(request_type: str | None) -> str:
    return {"loglikelihood": "multiple_choice", "rolling": "loglikelihood_rolling", "generate": "generate_until"}.get(
        str(request_type), str(request_type))

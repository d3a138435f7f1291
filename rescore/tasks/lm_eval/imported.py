"""lm-eval's metrics for units imported from an lm-eval ``--log_samples`` run (``rescore import lm-eval``).

Such a unit gets the ``lm-eval.*`` metrics of a unit generated with the ``lm_eval`` family: the installed
lm-eval's task of the same name is rebuilt with the unit's documents (the processed documents lm-eval
logged) and runs its filters, ``process_results`` and aggregation over the responses the run saved. Values,
names and versions are therefore those of a generated unit of the same task by construction; the per-sample
values lm-eval logged stay in each row's meta (``lm_eval``) for reference.

The task is looked up, in this order, in the ``--include-path`` given at import, in the directory of the
YAML the run was made from (``metadata.config_source`` of the run's config) when that file is still there,
and in the installed lm-eval's own tasks. A unit whose task none of them knows gets no ``lm-eval.*``
metrics and one note; its other metrics are computed as before.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from rescore.config import TaskConfig
from rescore.errors import ConfigError

# lm-eval output type -> the request type of its instances
INSTANCE_TYPES = {"multiple_choice": "loglikelihood", "loglikelihood": "loglikelihood",
                  "loglikelihood_rolling": "loglikelihood_rolling", "generate_until": "generate_until"}


def is_imported(manifest: dict[str, Any]) -> bool:
    return (manifest.get("import") or {}).get("kind") == "lm-eval"


def _cfg(manifest: dict[str, Any]) -> dict[str, Any]:
    return dict((manifest.get("task") or {}).get("config") or {})


def resolve(manifest: dict[str, Any]) -> tuple[str | None, str | None]:
    """``(include_path, None)`` when lm-eval here knows the unit's task (include_path None: its own tasks),
    else ``(None, why)``. lm-eval missing raises ConfigError."""
    cfg = _cfg(manifest)
    src = ((cfg.get("lm_eval") or {}).get("metadata") or {}).get("config_source")
    return _resolve(str(cfg.get("lm_eval_task")), cfg.get("include_path"), src if isinstance(src, str) else None)


@lru_cache(maxsize=64)
def _resolve(name: str, given: str | None, src: str | None) -> tuple[str | None, str | None]:
    import lm_eval

    from rescore.tasks.lm_eval.loading import lm_eval_version, task_manager

    lm_eval_version()  # lm-eval missing: one ConfigError for the whole store
    if given is not None:
        if not Path(given).is_dir():
            return None, f"its --include-path {given} is not a directory here"
        if name in task_manager(given).all_tasks:
            return given, None
        return None, f"lm-eval has no task {name!r} here, not even in its --include-path {given}"
    own = Path(lm_eval.__file__).resolve().parent
    if src and Path(src).is_file() and own not in Path(src).resolve().parents:
        ip = str(Path(src).resolve().parent)
        if name in task_manager(ip).all_tasks:
            return ip, None
    if name in task_manager(None).all_tasks:
        return None, None
    where = f" (the run's YAML {src} is not on this machine)" if src and not Path(src).is_file() else ""
    return None, f"lm-eval has no task {name!r} here{where}"


def unknown_note(manifest: dict[str, Any], why: str,
                 fix: str = "import the run with --include-path DIR (the directory of its task YAMLs)") -> str:
    task = (manifest.get("task") or {}).get("name")
    return f"imported unit {str(manifest.get('run_id'))[:12]} ({task}): no lm-eval.* metrics, {why}; {fix} to get them"


def task_config(manifest: dict[str, Any]) -> TaskConfig:
    """The ``lm_eval`` family's task config that rebuilds the unit's lm-eval task."""
    cfg = _cfg(manifest)
    ip, why = resolve(manifest)
    if why is not None:
        raise ConfigError(unknown_note(manifest, why))
    params: dict[str, Any] = {"task": cfg.get("lm_eval_task")}
    if ip is not None:
        params["include_path"] = ip
    n_shot = cfg.get("num_fewshot")
    return TaskConfig.model_validate({
        "name": (manifest.get("task") or {}).get("name"), "family": "lm_eval", "params": params,
        "num_fewshot": n_shot if isinstance(n_shot, int) and n_shot > 0 else 0, "chat": bool(cfg.get("chat"))})


def has_docs(raw: list[dict[str, Any]]) -> bool:
    """Units imported before the rolling rows kept lm-eval's documents cannot be rescored."""
    return all("doc" in m for m in raw)


def metas(manifest: dict[str, Any], raw: list[dict[str, Any]], cols: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The rows' meta in the layout of a generated unit's (task, document, instance type, repeats), with each
    request's responses as lm-eval saved them (``resps``). Instance arguments stay empty: lm-eval's filters
    and ``process_results`` read the document and the responses only."""
    cfg = _cfg(manifest)
    lm = cfg.get("lm_eval") or {}
    otype = str(lm.get("output_type"))
    typ = INSTANCE_TYPES[otype]
    repeats = int(lm.get("repeats") or 1)
    ip, _ = resolve(manifest)
    out = []
    for i, m in enumerate(raw):
        if typ == "loglikelihood":
            pairs = [(float(v), bool(g)) for v, g in zip(cols["choice_sum_logprob"][i], cols["choice_is_greedy"][i],
                                                         strict=True)]
            pairs += [(float(v), bool(g)) for v, g in m.get("unconditional") or []]
            resps: list[list[Any]] = [[p] * repeats for p in pairs]
        elif typ == "loglikelihood_rolling":
            resps = [[float(cols["sum_logprob"][i])] * repeats]
        else:
            cands = list(cols["candidates"][i] or [])
            resps = [(cands * repeats)[:repeats] if len(cands) < repeats else cands[:repeats]]
        out.append({"lm_task": cfg.get("lm_eval_task"), "doc_id": m["doc_id"], "doc": m["doc"], "type": typ,
                    "repeats": repeats, "args": [[] for _ in resps], "idx": list(range(len(resps))), "resps": resps,
                    **({"include_path": ip} if ip is not None else {})})
    return out


def read_metas(manifest: dict[str, Any], table: Any) -> list[dict[str, Any]]:
    from rescore.tasks.lm_eval.scoring import COLUMNS

    raw = [json.loads(m) for m in table.column("meta").to_pylist()]
    rt = str(manifest.get("request_type"))
    cols = {c: table.column(c).to_pylist() for c in COLUMNS[rt][1:]}
    return metas(manifest, raw, cols)

"""lm-eval's requests as rescore rows and requests.

``rows_of`` runs lm-eval's own ``build_all_requests`` (its prompts, few-shot sampler and seed, target
delimiter, generation kwargs, repeats, chat turns) and keeps, per document, the document and the
instances' arguments: that is all scoring needs, so it needs no dataset. Chat prompts are recorded as
their messages (lm-eval's ``chat_template`` callable is a recorder here) and rendered with the model's
template when the requests are built, as lm-eval's ``HFLM.apply_chat_template`` renders them.

Output types map onto request types: ``multiple_choice`` and ``loglikelihood`` -> ``loglikelihood`` (one
choice per instance), ``loglikelihood_rolling`` -> ``rolling``, ``generate_until`` -> ``generate``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from rescore.core import Request, RequestType
from rescore.errors import ConfigError

REQUEST_TYPES: dict[str, RequestType] = {"loglikelihood": "loglikelihood", "loglikelihood_rolling": "rolling",
                                         "generate_until": "generate"}
_CHAT = "\x00rescore-chat:"
_CHAT_RE = re.compile(re.escape(_CHAT) + r"(.*?)\x00", re.S)


def _record_chat(history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    return _CHAT + json.dumps({"messages": history, "agp": add_generation_prompt}, ensure_ascii=False) + "\x00"


def _plain(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str, ensure_ascii=False))


def rows_of(loaded: dict[str, Any], *, limit: int | None, chat: bool, fewshot_as_multiturn: bool,
            system_instruction: str | None) -> list[dict[str, Any]]:
    """One row per (task, document), in lm-eval's task order then document order."""
    rows: list[dict[str, Any]] = []
    group = len(loaded["tasks"]) > 1 or bool(loaded.get("groups"))
    for name, t in loaded["tasks"].items():
        t.build_all_requests(limit=limit, system_instruction=system_instruction, apply_chat_template=chat,
                             fewshot_as_multiturn=fewshot_as_multiturn,
                             chat_template=_record_chat if chat else None, tokenizer_name="")
        by_doc: dict[int, list[Any]] = {}
        for inst in t.instances:
            by_doc.setdefault(inst.doc_id, []).append(inst)
        for doc_id in sorted(by_doc):
            insts = sorted(by_doc[doc_id], key=lambda x: x.idx)
            kinds = {i.request_type for i in insts}
            if len(kinds) != 1 or next(iter(kinds)) not in REQUEST_TYPES:
                raise ConfigError(f"lm-eval task {name!r} asks for requests of type(s) {sorted(kinds)} per document",
                                  hint="rescore runs tasks of one request type: loglikelihood, "
                                       "loglikelihood_rolling or generate_until")
            doc = insts[0].doc
            target = t.doc_to_target(doc)
            gold = target if t.OUTPUT_TYPE == "multiple_choice" and isinstance(target, int) else None
            counts = _rolling_counts(t, doc) if t.OUTPUT_TYPE == "loglikelihood_rolling" else {}
            rows.append({
                **counts, "lm_task": name, "doc_id": int(doc_id), "group": group, "output_type": t.OUTPUT_TYPE,
                "type": insts[0].request_type, "repeats": int(insts[0].repeats or 1),
                "args": [_plain(list(i.args)) for i in insts], "idx": [int(i.idx) for i in insts],
                "doc": _plain(doc), "gold": gold, "target": None if isinstance(target, int | list) else str(target),
            })
    return rows


def _rolling_counts(t: Any, doc: Any) -> dict[str, int]:
    """The word and byte counts the task's own ``process_results`` divides a rolling document's loglikelihood
    by (wikitext counts the raw page, not the detokenized text it scores), so that rescore's word and byte
    perplexities of the row are lm-eval's, as those of an imported lm-eval run are. Empty when the task's
    results carry no (loglikelihood, count) pairs: rescore counts the scored text then."""
    try:
        res = t.process_results(doc, [0.0])
    except Exception:  # noqa: BLE001 - a task whose results need more than a loglikelihood
        return {}
    out = {}
    for key, metric in (("n_words", "word_perplexity"), ("n_bytes", "byte_perplexity")):
        v = res.get(metric) if isinstance(res, dict) else None
        if isinstance(v, tuple | list) and len(v) == 2 and isinstance(v[1], int) and not isinstance(v[1], bool):
            out[key] = v[1]
    return out


def request_type_of(rows: Sequence[dict[str, Any]]) -> RequestType:
    kinds = {r["type"] for r in rows}
    if len(kinds) != 1:
        raise ConfigError(f"an lm-eval group mixes request types {sorted(kinds)}",
                          hint="give its tasks as separate suite tasks (one request type each)")
    return REQUEST_TYPES[next(iter(kinds))]


def sample_id(row: dict[str, Any]) -> str:
    return f"{row['lm_task']}.{row['doc_id']:08d}" if row["group"] else f"{row['doc_id']:08d}"


def render(text: str, tokenizer: Any, task: str) -> str:
    """``text`` with each recorded chat replaced by the model's template, as ``HFLM.apply_chat_template``."""
    if _CHAT not in text:
        return text

    def one(m: re.Match[str]) -> str:
        rec = json.loads(m.group(1))
        if not getattr(tokenizer, "chat_template", None) or not hasattr(tokenizer, "apply_chat_template"):
            raise ConfigError(f"task {task!r} applies a chat template but the model's tokenizer has none",
                              hint="use a chat checkpoint, or set chat: false for this task")
        kw = {"tokenize": False, "add_generation_prompt": rec["agp"], "continue_final_message": not rec["agp"]}
        try:
            return str(tokenizer.apply_chat_template(rec["messages"], **kw))
        except Exception as e:  # noqa: BLE001 - lm-eval drops the system turn when the template refuses it
            if type(e).__name__ != "TemplateError":
                raise
            msgs = [x for x in rec["messages"] if x["role"] != "system"]
            return str(tokenizer.apply_chat_template(msgs, **kw))

    return _CHAT_RE.sub(one, text)


def build(task_name: str, rows: Sequence[dict[str, Any]], tokenizer: Any) -> list[Request]:
    out = []
    for r in rows:
        rt = REQUEST_TYPES[r["type"]]
        args = [[render(a[0], tokenizer, task_name), *a[1:]] if rt != "rolling" else a for a in r["args"]]
        meta = {"lm_task": r["lm_task"], "doc_id": r["doc_id"], "type": r["type"], "doc": r["doc"], "args": args,
                "idx": r["idx"], "repeats": r["repeats"], **({"include_path": r["include_path"]} if r.get("include_path") else {})}
        category = r["lm_task"] if r["group"] else None
        common = {"sample_id": sample_id(r), "task": task_name, "request_type": rt, "category": category,
                  "meta": meta, "gold": r["gold"], "target": r["target"]}
        if rt == "loglikelihood":
            out.append(Request(**common, contexts=tuple(a[0] for a in args), continuations=tuple(a[1] for a in args)))
        elif rt == "rolling":
            out.append(Request(**common, text=r["args"][0][0], n_words=r.get("n_words"), n_bytes=r.get("n_bytes")))
        else:
            out.append(Request(**common, prompt=args[0][0]))
    return out


def gen_kwargs(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The generation kwargs every generate row shares (lm-eval's are per task)."""
    seen = {json.dumps(r["args"][0][1], sort_keys=True) for r in rows}
    if len(seen) != 1:
        raise ConfigError(f"the lm-eval tasks of this suite task generate with {len(seen)} different settings",
                          hint="give its tasks as separate suite tasks")
    reps = {r["repeats"] for r in rows}
    if len(reps) != 1:
        raise ConfigError("the lm-eval tasks of this suite task repeat requests differently",
                          hint="give its tasks as separate suite tasks")
    return {**json.loads(seen.pop()), "_repeats": reps.pop()}

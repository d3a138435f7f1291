"""lm-eval samples to rescore rows, per lm-eval output type."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rescore.core import canonical_json
from rescore.importers.common import (
    fail,
    gsm8k_answer,
    meta_json,
)
from rescore.importers.lm_eval.model_args import chat_applied
from rescore.importers.lm_eval.samples import Sample, bool_field, float_field, str_field

OUTPUT_TYPES = {
    "multiple_choice": ("loglikelihood", "multiple_choice", "tier3"),
    "loglikelihood": ("loglikelihood", "loglikelihood", "tier3"),
    "loglikelihood_rolling": ("rolling", "ppl", "tier2"),
    "generate_until": ("generate", "generate", "tier3"),
}


# -- rows per output type ----------------------------------------------------------------------------
@dataclass
class Checks:
    """Row-by-row agreement of rescore's definitions with lm-eval's per-sample values."""

    counts: dict[str, list[int]] = field(default_factory=dict)  # metric -> [rows compared, disagreements]
    gold_deduced: int = 0
    gold_unknown: int = 0

    def add(self, metric: str, ours: bool, theirs: Any) -> None:
        if not isinstance(theirs, int | float) or isinstance(theirs, bool):
            return
        c = self.counts.setdefault(metric, [0, 0])
        c[0] += 1
        c[1] += int(ours != (theirs == 1))

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {m: {"rows": n, "disagree": d} for m, (n, d) in sorted(self.counts.items())}
        if self.gold_deduced:
            out["gold_deduced_from_acc"] = self.gold_deduced
        if self.gold_unknown:
            out["gold_unknown"] = self.gold_unknown
        return out

    def notes(self) -> list[str]:
        out = [f"{m}: rescore's definition disagrees with lm-eval's per-sample value on {d} of {n} rows"
               for m, (n, d) in sorted(self.counts.items()) if d]
        if self.gold_unknown:
            out.append(f"{self.gold_unknown} rows have no recoverable gold index and are not scored")
        return out


def _argmax(x: Sequence[float]) -> int:
    """numpy's argmax: the first maximum, or the first NaN."""
    best = -1
    for i, v in enumerate(x):
        if math.isnan(v):
            return i
        if best < 0 or v > x[best]:
            best = i
    return best


def _div(a: float, b: float) -> float:
    if b == 0:
        return math.nan if a == 0 or math.isnan(a) else math.copysign(math.inf, a)
    return a / b


def mc_rows(path: Path, samples: list[Sample], task: str, cfg: dict[str, Any], res: dict[str, Any],
            checks: Checks) -> list[dict[str, Any]]:
    delim = cfg.get("target_delimiter", " ")
    delim = delim if isinstance(delim, str) else " "
    gen_prefix = cfg.get("gen_prefix")
    if chat_applied(res) and not (gen_prefix and not gen_prefix[-1:].isspace()):
        delim = ""  # lm-eval drops the delimiter under a chat template without a gen_prefix
    fewshot_delim = cfg.get("fewshot_delimiter", "\n\n") or "\n\n"
    n_shot = int((res.get("n-shot") or {}).get(task) or cfg.get("num_fewshot") or 0)
    metric_names = {m.get("metric") for m in cfg.get("metric_list") or [] if isinstance(m, dict)}
    rows = []
    for s in samples:
        pairs = s.args
        lls, greedy = [], []
        for i, r in enumerate(s.resps):
            val = r[0] if isinstance(r, list) and len(r) == 1 and isinstance(r[0], list) else r
            if not isinstance(val, list) or len(val) != 2:
                raise fail(path, s.line, f"resps[{i}]", f"must hold [loglikelihood, is_greedy], got {val!r}")
            lls.append(float_field(path, s.line, f"resps[{i}][0]", val[0]))
            greedy.append(bool_field(path, s.line, f"resps[{i}][1]", val[1]))
        for i, a in enumerate(pairs):
            if len(a) < 2:
                raise fail(path, s.line, f"arguments.gen_args_{i}", "must hold a context and a continuation")
            str_field(path, s.line, f"arguments.gen_args_{i}.arg_0", a[0])
            str_field(path, s.line, f"arguments.gen_args_{i}.arg_1", a[1])
        k = len(pairs)
        uncond = None
        if "acc_mutual_info" in metric_names and k % 2 == 0 and all(a[0] == "" for a in pairs[k // 2 :]):
            k //= 2  # the second half are lm-eval's unconditional requests (kept in meta for lm-eval's metrics)
            uncond = [[v, g] for v, g in zip(lls[k:], greedy[k:], strict=True)]
            pairs, lls, greedy = pairs[:k], lls[:k], greedy[:k]
        ctxs = [a[0] for a in pairs]
        conts = [a[1] for a in pairs]
        partial = k > 1 and len(set(conts)) == 1 and len(set(ctxs)) > 1
        if partial:
            cut = _fewshot_prefix(ctxs, fewshot_delim) if n_shot or cfg.get("description") else 0
            choice_strs = [c[cut:] for c in ctxs]
        else:
            choice_strs = [c[len(delim):] if delim and c.startswith(delim) else c for c in conts]
        gold = _gold(s, cfg, choice_strs, partial)
        pred = _argmax(lls)
        chars = [float(len(c)) for c in choice_strs]
        pred_norm = _argmax([_div(v, n) for v, n in zip(lls, chars, strict=True)])
        acc_l = s.metrics.get("acc,none")
        accn_l = s.metrics.get("acc_norm,none")
        if gold is None and isinstance(acc_l, int | float):
            # lm-eval's per-sample acc says whether argmax is the gold; with two choices that decides it
            if acc_l == 1:
                gold = pred
            elif k == 2:
                gold = 1 - pred
            elif accn_l == 1:
                gold = pred_norm
            checks.gold_deduced += gold is not None
        if gold is None:
            checks.gold_unknown += 1
        else:
            checks.add("acc", pred == gold, acc_l)
            checks.add("acc_norm", pred_norm == gold, accn_l)
        meta = {"doc_id": s.doc_id, "doc": s.doc, "lm_eval": s.metrics,
                "choice_chars": [len(c) for c in choice_strs],
                "choice_bytes": [len(c.encode("utf-8")) for c in choice_strs]}
        if uncond is not None:
            meta["unconditional"] = uncond
        rows.append({
            "sample_id": f"{s.doc_id:08d}", "task": task, "request_type": "loglikelihood", "target": s.target,
            "gold": gold, "category": None, "meta": meta_json(meta),
            "prompt": None if partial else ctxs[0], "prompt_token_ids": None,
            "contexts": ctxs if partial else None, "choices": conts, "choice_token_ids": None,
            "choice_logprobs": None, "choice_sum_logprob": lls, "choice_is_greedy": greedy,
            "choice_n_tokens": None, "choice_n_chars": [len(c) for c in conts],
            "choice_n_bytes": [len(c.encode("utf-8")) for c in conts],
            "choice_topk_ids": None, "choice_topk_logprobs": None, "per_token_available": False,
        })
    return rows


def _fewshot_prefix(ctxs: list[str], fewshot_delim: str) -> int:
    """Length of the few-shot prefix the per-choice contexts share: their common prefix, cut back to just
    after its last few-shot delimiter (0 when there is none)."""
    n = min(len(c) for c in ctxs)
    i = 0
    while i < n and all(c[i] == ctxs[0][i] for c in ctxs):
        i += 1
    j = ctxs[0].rfind(fewshot_delim, 0, i)
    return j + len(fewshot_delim) if j >= 0 else 0


def _gold(s: Sample, cfg: dict[str, Any], choices: list[str], partial: bool) -> int | None:
    """lm-eval's gold index (``-100`` when its target is not one of the choices, as lm-eval does)."""
    if partial:
        key = cfg.get("doc_to_text")
        if isinstance(key, str) and isinstance(s.doc, dict) and isinstance(s.doc.get(key), int):
            g = s.doc[key]
            return g if 0 <= g < len(choices) else -100
        return None
    t = s.target.strip()
    if re.fullmatch(r"\d+", t):
        g = int(t)
        return g if g < len(choices) else -100
    if t.startswith("["):
        return None  # several gold answers: rescore's rows hold one
    return choices.index(s.target) if s.target in choices else -100


def loglikelihood_rows(path: Path, samples: list[Sample], task: str) -> list[dict[str, Any]]:
    rows = []
    for s in samples:
        if len(s.args) != 1 or len(s.args[0]) < 2:
            raise fail(path, s.line, "arguments", "a loglikelihood sample needs one (context, continuation) request")
        r = s.resps[0]
        val = r[0] if isinstance(r, list) and len(r) == 1 and isinstance(r[0], list) else r
        if not isinstance(val, list) or len(val) != 2:
            raise fail(path, s.line, "resps[0]", f"must hold [loglikelihood, is_greedy], got {val!r}")
        ctx = str_field(path, s.line, "arguments.gen_args_0.arg_0", s.args[0][0])
        cont = str_field(path, s.line, "arguments.gen_args_0.arg_1", s.args[0][1])
        rows.append({
            "sample_id": f"{s.doc_id:08d}", "task": task, "request_type": "loglikelihood", "target": s.target,
            "gold": None, "category": None, "meta": meta_json({"doc_id": s.doc_id, "doc": s.doc, "lm_eval": s.metrics}),
            "prompt": ctx, "choices": [cont], "choice_sum_logprob": [float_field(path, s.line, "resps[0][0]", val[0])],
            "choice_is_greedy": [bool_field(path, s.line, "resps[0][1]", val[1])], "choice_n_chars": [len(cont)],
            "choice_n_bytes": [len(cont.encode("utf-8"))], "per_token_available": False,
        })
    return rows


def rolling_rows(path: Path, samples: list[Sample], task: str) -> list[dict[str, Any]]:
    rows = []
    for s in samples:
        if len(s.args) != 1 or not s.args[0]:
            raise fail(path, s.line, "arguments", "a loglikelihood_rolling sample needs one request (the text)")
        text = str_field(path, s.line, "arguments.gen_args_0.arg_0", s.args[0][0])
        r = s.resps[0]
        val = r[0] if isinstance(r, list) and len(r) == 1 else r
        ll = float_field(path, s.line, "resps[0]", val)
        words = _count(path, s, "word_perplexity", ll)
        nbytes = _count(path, s, "byte_perplexity", ll)
        if words is None:
            words = len(re.split(r"\s+", s.target))  # lm-eval's count_words of the target
        if nbytes is None:
            nbytes = len(s.target.encode("utf-8"))
        rows.append({
            "sample_id": f"{s.doc_id:08d}", "task": task, "request_type": "rolling", "target": None,
            "gold": None, "category": None,
            "meta": meta_json({"doc_id": s.doc_id, "doc": s.doc, "lm_eval": s.metrics}),
            "prompt": text, "sum_logprob": ll, "n_tokens": None, "n_bytes": nbytes, "n_words": words,
            "per_token_available": False,
        })
    return rows


def _count(path: Path, s: Sample, metric: str, ll: float) -> int | None:
    """The unit count of lm-eval's per-sample ``(loglikelihood, units)`` pair, checked against ``ll``."""
    pair = s.metrics.get(f"{metric},none")
    if pair is None:
        return None
    if not (isinstance(pair, list) and len(pair) == 2):
        raise fail(path, s.line, metric, f"must be a [loglikelihood, count] pair, got {pair!r}")
    got = float_field(path, s.line, metric, pair[0])
    if not (got == ll or (math.isnan(got) and math.isnan(ll))):
        raise fail(path, s.line, metric, f"loglikelihood {got!r} differs from resps {ll!r}")
    n = pair[1]
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise fail(path, s.line, metric, f"count must be a non-negative integer, got {n!r}")
    return n


def generate_rows(path: Path, samples: list[Sample], task: str, res: dict[str, Any], seed: int,
                  ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    rows = []
    kwargs0: dict[str, Any] | None = None
    n0 = None
    chat = chat_applied(res)
    for s in samples:
        if len(s.args) != 1 or not s.args[0]:
            raise fail(path, s.line, "arguments", "a generate_until sample needs one request (context, kwargs)")
        ctx = str_field(path, s.line, "arguments.gen_args_0.arg_0", s.args[0][0])
        kwargs = s.args[0][1] if len(s.args[0]) > 1 else {}
        if not isinstance(kwargs, dict):
            raise fail(path, s.line, "arguments.gen_args_0.arg_1", "must be the generation kwargs object")
        cands = s.resps[0]
        if not isinstance(cands, list) or not all(isinstance(c, str) for c in cands):
            raise fail(path, s.line, "resps[0]", "must be a list of generated strings")
        if kwargs0 is None:
            kwargs0, n0 = kwargs, len(cands)
        meta: dict[str, Any] = {"doc_id": s.doc_id, "doc": s.doc, "lm_eval": s.metrics}
        ans = gsm8k_answer(s.target)
        if ans is not None:
            meta["answer"] = ans
        rows.append({
            "sample_id": f"{s.doc_id:08d}", "task": task, "request_type": "generate", "target": s.target,
            "gold": None, "category": None, "meta": meta_json(meta), "prompt": ctx, "prompt_token_ids": None,
            "chat": chat, "messages": None, "seed": seed, "sampling": canonical_json(kwargs),
            "candidates": list(cands),
        })
    return rows, (_gen_params(kwargs0, n0 or 1) if kwargs0 is not None else None)


def _gen_params(kw: dict[str, Any], n: int) -> dict[str, Any]:
    """lm-eval's generation kwargs in rescore's GenParams layout (plus the originals)."""
    sample = bool(kw.get("do_sample"))
    until = kw.get("until") or []
    return {
        "temperature": float(kw.get("temperature", 1.0 if sample else 0.0)) if sample else 0.0,
        "top_p": float(kw.get("top_p", 1.0) or 1.0), "top_k": int(kw.get("top_k", 0) or 0),
        "max_new_tokens": int(kw.get("max_gen_toks", 256)), "stop": [until] if isinstance(until, str) else list(until),
        "n": n, "logprobs_topk": 0, "lm_eval": kw,
    }

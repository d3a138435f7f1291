"""Import lm-evaluation-harness (0.4.x) output written with ``--log_samples``.

An output directory holds, per run, ``results_<date>.json`` and ``samples_<task>_<date>.jsonl`` for each
task (lm-eval writes them under ``<output_path>/<model_name_sanitized>/``; any depth is searched). Each task
with a samples file becomes one unit:

- ``multiple_choice`` -> ``loglikelihood`` rows: per choice the loglikelihood sum and greedy flag exactly as
  lm-eval saved them (it writes them as strings; Python's float repr round-trips). Per-token logprobs and
  token counts are not in the samples, so ``choice_logprobs``/``choice_n_tokens`` are null and
  ``per_token_available`` is false. The gold index is lm-eval's (``target``), for partial scoring
  (winogrande style, where lm-eval's target is the shared continuation) the config's ``doc_to_text``
  feature, else deduced from lm-eval's own per-sample ``acc``. lm-eval's ``acc_norm`` divides by the length
  of its choice string, which is the continuation without the target delimiter (or, for partial scoring, the
  per-choice context without the few-shot prefix); those lengths are pinned in the row's meta
  (``choice_chars``/``choice_bytes``) so the scorer uses exactly them.
- ``loglikelihood`` (a single continuation, e.g. lambada) -> ``loglikelihood`` rows with one choice and no
  gold (rescore has no greedy-accuracy metric; the greedy flag is stored).
- ``loglikelihood_rolling`` -> ``rolling`` rows: the document loglikelihood, and the word and byte counts
  lm-eval used (its per-sample ``word_perplexity``/``byte_perplexity`` pairs; else counted on the target).
- ``generate_until`` -> ``generate`` rows: the raw responses before filters (one candidate per repeat), the
  doc, the target and, for GSM8K-style targets, ``meta["answer"]``.

Every row's meta keeps lm-eval's per-sample metric values (``lm_eval``: ``{"acc,none": 1.0, ...}``), and
the import checks that rescore's acc/acc_norm agree with them row by row (``import.checks`` in the manifest).
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rescore.artifacts.store import Store
from rescore.core import canonical_json, content_hash
from rescore.importers.common import (
    ImportFormatError,
    ImportResult,
    ImportUnit,
    checked_name,
    data_fingerprint,
    fail,
    gsm8k_answer,
    meta_json,
    outputs_fingerprint,
    precision_of,
    read_json,
    read_jsonl,
    safe_name,
    source_file,
    write_unit,
)

RESULTS_RE = re.compile(r"^results_(?P<date>.+)\.json$")
OUTPUT_TYPES = {
    "multiple_choice": ("loglikelihood", "multiple_choice", "tier3"),
    "loglikelihood": ("loglikelihood", "loglikelihood", "tier3"),
    "loglikelihood_rolling": ("rolling", "ppl", "tier2"),
    "generate_until": ("generate", "generate", "tier3"),
}
# per-sample fields lm-eval writes that are not metric values
SAMPLE_KEYS = {"doc_id", "doc", "target", "arguments", "resps", "filtered_resps", "filter", "metrics",
               "doc_hash", "prompt_hash", "target_hash"}


@dataclass
class LmEvalRun:
    results_path: Path
    results: dict[str, Any]
    date: str
    samples: dict[str, Path] = field(default_factory=dict)  # lm-eval task name -> samples file
    no_samples: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Options:
    model_name: str | None = None
    step: int | None = None
    stage: str | None = None
    suite: str = "lm-eval"
    tasks: tuple[str, ...] = ()  # globs over lm-eval task names; empty = all


# -- finding runs -------------------------------------------------------------------------------------
def find_runs(root: Path) -> list[LmEvalRun]:
    root = Path(root)
    if root.is_file():
        paths = [root]
    elif root.is_dir():
        paths = sorted(p for p in root.rglob("results_*.json") if p.is_file())
    else:
        raise ImportFormatError(f"{root}: no such file or directory")
    runs = []
    for p in paths:
        m = RESULTS_RE.match(p.name)
        if not m:
            raise ImportFormatError(f"{p}: not an lm-eval results file (expected results_<date>.json)")
        res = read_json(p)
        if not isinstance(res, dict) or not isinstance(res.get("configs"), dict):
            raise fail(p, None, "configs", "is missing: this is not an lm-evaluation-harness 0.4 results file")
        run = LmEvalRun(p, res, m.group("date"))
        for task in res["configs"]:
            if not isinstance(task, str) or "/" in task or "\\" in task or "\x00" in task or task in (".", ".."):
                raise fail(p, None, "configs", f"names a task {task!r} that cannot be part of a file name "
                                               "(samples_<task>_<date>.jsonl)", hint="the file was modified or damaged")
            s = p.parent / f"samples_{task}_{run.date}.jsonl"
            if s.is_file():
                run.samples[task] = s
            else:
                run.no_samples.append(task)
        runs.append(run)
    if not runs:
        raise ImportFormatError(f"{root}: no results_*.json found",
                                hint="point at lm-eval's --output_path of a run made with --log_samples")
    if not any(r.samples for r in runs):
        raise ImportFormatError(f"{root}: results found but no samples_<task>_<date>.jsonl next to them",
                                hint="lm-eval writes per-sample outputs only with --log_samples; re-run with it")
    return runs


# -- model and task identity --------------------------------------------------------------------------
def model_args(res: dict[str, Any]) -> dict[str, Any]:
    """lm-eval's model_args as a dict (0.4.x writes a dict or a ``k=v,k=v`` string)."""
    cfg = res.get("config") or {}
    raw = cfg.get("model_args")
    if isinstance(raw, dict):
        return dict(raw)
    out: dict[str, Any] = {}
    if isinstance(raw, str):
        for part in filter(None, (x.strip() for x in raw.split(","))):
            k, _, v = part.partition("=")
            out[k.strip()] = v.strip()
    return out


def model_identity(res: dict[str, Any], opts: Options) -> dict[str, Any]:
    cfg = res.get("config") or {}
    args = model_args(res)
    path = args.get("pretrained") or args.get("model") or res.get("model_name") or cfg.get("model")
    if opts.model_name:
        name = checked_name(opts.model_name, "model name")
    else:
        base = Path(str(path)).name if path else str(cfg.get("model") or "model")
        name = safe_name(base or "model", "model name")
    precision = precision_of(args.get("dtype") or _torch_dtype(cfg.get("model_dtype")),
                             load_in_8bit=args.get("load_in_8bit"), load_in_4bit=args.get("load_in_4bit"))
    return {
        "name": name, "path": str(path) if path is not None else None, "backend": f"lm-eval:{cfg.get('model')}",
        "precision": precision, "step": opts.step, "stage": opts.stage,
        "args": {k: str(v) for k, v in sorted(args.items())},
        "dtype": cfg.get("model_dtype"), "revision": cfg.get("model_revision"), "sha": cfg.get("model_sha"),
        "chat_template_sha": res.get("chat_template_sha"),
    }


def _torch_dtype(s: Any) -> str | None:
    return str(s).removeprefix("torch.") if s else None


def chat_applied(res: dict[str, Any]) -> bool:
    return bool(res.get("chat_template"))


# -- samples ------------------------------------------------------------------------------------------
@dataclass
class Sample:
    line: int
    doc_id: int
    doc: Any
    target: str
    args: list[list[Any]]  # per request: its arguments
    resps: list[Any]  # per request: its raw responses
    metrics: dict[str, Any] = field(default_factory=dict)  # "metric,filter" -> value


def read_samples(path: Path) -> list[Sample]:
    """Samples of one task, one per doc (lm-eval writes a doc once per filter; their responses must agree)."""
    by_id: dict[int, Sample] = {}
    for line, obj in read_jsonl(path):
        for key in ("doc_id", "arguments", "resps"):
            if key not in obj:
                raise fail(path, line, key, "is missing (not an lm-eval --log_samples line)",
                           hint=f"a samples line has {', '.join(sorted(SAMPLE_KEYS))} and metric values")
        doc_id = obj["doc_id"]
        if not isinstance(doc_id, int) or isinstance(doc_id, bool) or doc_id < 0:
            raise fail(path, line, "doc_id", f"must be a non-negative integer, got {doc_id!r}")
        args = _arguments(path, line, obj["arguments"])
        resps = obj["resps"]
        if not isinstance(resps, list) or len(resps) != len(args):
            raise fail(path, line, "resps", f"must be a list with one entry per request ({len(args)})")
        flt = obj.get("filter", "none")
        vals = {f"{k},{flt}": v for k, v in obj.items() if k not in SAMPLE_KEYS}
        old = by_id.get(doc_id)
        if old is None:
            target = obj.get("target")
            by_id[doc_id] = Sample(line, doc_id, obj.get("doc"), "" if target is None else str(target), args, resps, vals)
            continue
        if old.resps != resps or old.args != args:
            raise fail(path, line, "resps", f"doc {doc_id} appears again (filter {flt!r}) with different responses")
        old.metrics.update(vals)
    return [by_id[k] for k in sorted(by_id)]


def _arguments(path: Path, line: int, raw: Any) -> list[list[Any]]:
    """lm-eval writes ``{"gen_args_0": {"arg_0": ..., "arg_1": ...}, ...}`` (older versions: lists)."""
    if isinstance(raw, list):
        return [list(a) if isinstance(a, list | tuple) else [a] for a in raw]
    if not isinstance(raw, dict):
        raise fail(path, line, "arguments", "must be an object of gen_args_<i>")
    out = []
    for i in range(len(raw)):
        a = raw.get(f"gen_args_{i}")
        if not isinstance(a, dict):
            raise fail(path, line, f"arguments.gen_args_{i}", "is missing or not an object")
        out.append([a.get(f"arg_{j}") for j in range(len(a))])
    return out


def _float(path: Path, line: int, fld: str, v: Any) -> float:
    try:
        if isinstance(v, bool):
            raise ValueError
        return float(v)
    except (TypeError, ValueError):
        raise fail(path, line, fld, f"is not a number: {v!r}") from None


def _bool(path: Path, line: int, fld: str, v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if v in ("True", "true", 1, "1"):
        return True
    if v in ("False", "false", 0, "0"):
        return False
    raise fail(path, line, fld, f"is not a boolean: {v!r}")


def _str(path: Path, line: int, fld: str, v: Any) -> str:
    if not isinstance(v, str):
        raise fail(path, line, fld, f"must be a string, got {type(v).__name__}")
    return v


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
            lls.append(_float(path, s.line, f"resps[{i}][0]", val[0]))
            greedy.append(_bool(path, s.line, f"resps[{i}][1]", val[1]))
        for i, a in enumerate(pairs):
            if len(a) < 2:
                raise fail(path, s.line, f"arguments.gen_args_{i}", "must hold a context and a continuation")
            _str(path, s.line, f"arguments.gen_args_{i}.arg_0", a[0])
            _str(path, s.line, f"arguments.gen_args_{i}.arg_1", a[1])
        k = len(pairs)
        if "acc_mutual_info" in metric_names and k % 2 == 0 and all(a[0] == "" for a in pairs[k // 2 :]):
            k //= 2  # the second half are lm-eval's unconditional requests
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
        ctx = _str(path, s.line, "arguments.gen_args_0.arg_0", s.args[0][0])
        cont = _str(path, s.line, "arguments.gen_args_0.arg_1", s.args[0][1])
        rows.append({
            "sample_id": f"{s.doc_id:08d}", "task": task, "request_type": "loglikelihood", "target": s.target,
            "gold": None, "category": None, "meta": meta_json({"doc_id": s.doc_id, "doc": s.doc, "lm_eval": s.metrics}),
            "prompt": ctx, "choices": [cont], "choice_sum_logprob": [_float(path, s.line, "resps[0][0]", val[0])],
            "choice_is_greedy": [_bool(path, s.line, "resps[0][1]", val[1])], "choice_n_chars": [len(cont)],
            "choice_n_bytes": [len(cont.encode("utf-8"))], "per_token_available": False,
        })
    return rows


def rolling_rows(path: Path, samples: list[Sample], task: str) -> list[dict[str, Any]]:
    rows = []
    for s in samples:
        if len(s.args) != 1 or not s.args[0]:
            raise fail(path, s.line, "arguments", "a loglikelihood_rolling sample needs one request (the text)")
        text = _str(path, s.line, "arguments.gen_args_0.arg_0", s.args[0][0])
        r = s.resps[0]
        val = r[0] if isinstance(r, list) and len(r) == 1 else r
        ll = _float(path, s.line, "resps[0]", val)
        words = _count(path, s, "word_perplexity", ll)
        nbytes = _count(path, s, "byte_perplexity", ll)
        if words is None:
            words = len(re.split(r"\s+", s.target))  # lm-eval's count_words of the target
        if nbytes is None:
            nbytes = len(s.target.encode("utf-8"))
        rows.append({
            "sample_id": f"{s.doc_id:08d}", "task": task, "request_type": "rolling", "target": None,
            "gold": None, "category": None,
            "meta": meta_json({"doc_id": s.doc_id, "lm_eval": s.metrics}),
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
    got = _float(path, s.line, metric, pair[0])
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
        ctx = _str(path, s.line, "arguments.gen_args_0.arg_0", s.args[0][0])
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


# -- the whole import ---------------------------------------------------------------------------------
def build_units(run: LmEvalRun, opts: Options) -> tuple[list[ImportUnit], list[str]]:
    res = run.results
    model = model_identity(res, opts)
    cfg_all = res.get("config") or {}
    seed = cfg_all.get("random_seed", 0)
    seed = int(seed) if isinstance(seed, int) else 0
    units, notes = [], []
    versions = {"lm_eval": str(res.get("lm_eval_version")), "transformers": str(res.get("transformers_version"))}
    for lm_task in run.no_samples:
        if _wanted(lm_task, opts):
            notes.append(f"{lm_task}: no samples file next to {run.results_path.name} (skipped)")
    for lm_task, spath in sorted(run.samples.items()):
        if not _wanted(lm_task, opts):
            continue
        cfg = res["configs"][lm_task]
        if not isinstance(cfg, dict):
            raise fail(run.results_path, None, f"configs.{lm_task}", "must be an object")
        otype = cfg.get("output_type")
        if otype not in OUTPUT_TYPES:
            notes.append(f"{lm_task}: output_type {otype!r} is not supported (skipped)")
            continue
        rt, family, tier = OUTPUT_TYPES[otype]
        task = safe_name(lm_task, "task name")
        samples = read_samples(spath)
        if not samples:
            raise ImportFormatError(f"{spath}: no samples in the file")
        expected = ((res.get("n-samples") or {}).get(lm_task) or {}).get("effective")
        if isinstance(expected, int) and expected != len(samples):
            raise ImportFormatError(
                f"{spath}: {len(samples)} docs, but {run.results_path.name} says lm-eval scored {expected}",
                hint="the samples file is incomplete or from another run")
        checks = Checks()
        gen = None
        if otype == "multiple_choice":
            rows = mc_rows(spath, samples, task, cfg, res, checks)
        elif otype == "loglikelihood":
            rows = loglikelihood_rows(spath, samples, task)
        elif otype == "loglikelihood_rolling":
            rows = rolling_rows(spath, samples, task)
        else:
            rows, gen = generate_rows(spath, samples, task, res, seed)
        if family == "generate" and any(r["meta"] and '"answer"' in r["meta"] for r in rows):
            family = "gsm8k"
        n_shot = (res.get("n-shot") or {}).get(lm_task, cfg.get("num_fewshot"))
        task_cfg = {"lm_eval_task": lm_task, "num_fewshot": n_shot, "chat": chat_applied(res),
                    "params": {"target_delimiter": cfg.get("target_delimiter", " ")}, "lm_eval": cfg}
        inputs = [(r["sample_id"], content_hash([s.doc, s.target, s.args], 16)) for r, s in zip(rows, samples, strict=True)]
        units.append(ImportUnit(
            kind="lm-eval", request_type=rt, model=model,
            task={"name": task, "family": family, "tier": tier, "config": task_cfg},
            suite=opts.suite, data_fp=data_fingerprint(inputs), seed=seed, gen=gen, rows=rows,
            outputs_fp=outputs_fingerprint(rows),
            sources=[source_file(run.results_path), source_file(spath)],
            info={"lm_eval_task": lm_task, "lm_eval_results": {k: v for k, v in (res.get("results") or {}).get(lm_task, {}).items()},
                  "checks": checks.as_dict(), "date": run.date},
            versions=versions,
        ))
        notes += [f"{lm_task}: {n}" for n in checks.notes()]
    return units, notes


def _wanted(task: str, opts: Options) -> bool:
    return not opts.tasks or any(fnmatch.fnmatchcase(task, g) for g in opts.tasks)


def import_lm_eval(store: Store, root: Path, opts: Options = Options(), command: str | None = None,
                   ) -> tuple[list[ImportResult], list[str]]:
    """Import every run under ``root``; returns one result per unit and notes (skipped tasks, checks).
    Everything is parsed and checked before the first unit is written."""
    runs = find_runs(root)
    planned: list[ImportUnit] = []
    notes: list[str] = []
    for run in runs:
        units, n = build_units(run, opts)
        planned += units
        notes += n
    if not planned:
        raise ImportFormatError(f"{root}: nothing to import" + (f" ({'; '.join(notes)})" if notes else ""),
                                hint="check --task and that the run was made with --log_samples")
    return [write_unit(store, u, command) for u in planned], notes


__all__ = ["import_lm_eval", "find_runs", "read_samples", "Options", "LmEvalRun"]

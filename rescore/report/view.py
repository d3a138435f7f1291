"""``rescore view OUT.html``: a per-sample viewer of a store, as one self-contained HTML file.

The page embeds the samples of the selected tasks and checkpoints (gzip-compressed JSON, unpacked by the
browser with ``DecompressionStream``; no network, no server) and renders them with a small script:

- per task, a table of samples with a text search and filters (correct / incorrect on a checkpoint, category,
  a metric's value range), rendered a page at a time so that 10,000 samples x 10 checkpoints stay responsive;
- a sample page (``#task=T&sample=ID``): the prompt (chat turns as turns); for multiple choice each choice's
  loglikelihood, its per-character score and the gold marked, per checkpoint; for generations every candidate
  with its seed, finish reason, per-metric results and its tokens shaded by logprob (top-k on hover); for
  perplexity rows the least likely tokens;
- flips: with two checkpoints (``--baseline`` and ``--against``), the samples whose result changed in each
  direction, sorted by the change of the gold choice's loglikelihood.

Every value comes from the store's checked readers (rows, score files); a damaged unit is named in the page's
notes and the others are shown.
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rescore.artifacts.store import Store, Unit
from rescore.errors import ConfigError, UserError
from rescore.report.catalog import Catalog, Checkpoint, build_catalog, resolve_baseline, select_models
from rescore.report.compare import current_specs, read_rows, unit_metrics

PRIMARY = ("acc", "acc_norm", "exact_match_flexible", "exact_match_strict", "pass_at_1", "all_checks_pass_rate",
           "token_perplexity", "lm-eval.acc", "lm-eval.exact_match")
MAX_TOPK = 5  # top-k alternatives kept per token for the hover
WORST = 12  # least likely tokens shown per perplexity row


def _f(v: Any, digits: int = 4) -> float | None:
    if v is None:
        return None
    x = float(v)
    return None if math.isnan(x) or math.isinf(x) else round(x, digits)


def _tokenizer(unit: Unit) -> Any:
    """A ``tokenizers`` tokenizer of the unit's checkpoint when its directory is here, else None (ids shown)."""
    path = Path(str((unit.manifest.get("model") or {}).get("path") or "")) / "tokenizer.json"
    try:
        if path.is_file():
            from tokenizers import Tokenizer

            return Tokenizer.from_file(str(path))
    except Exception:  # noqa: BLE001 - no tokenizers package, or a file it cannot read: ids are shown
        return None
    return None


def _tok_text(tok: Any, ids: Sequence[int] | None) -> list[str] | None:
    if ids is None:
        return None
    if tok is None:
        return [f"#{i}" for i in ids]
    return [tok.decode([int(i)], skip_special_tokens=False) for i in ids]


def _topk(tok: Any, ids: Any, lps: Any) -> list[list[list[Any]]] | None:
    if ids is None or lps is None:
        return None
    out: list[list[list[Any]]] = []
    for pos_ids, pos_lps in zip(ids, lps, strict=False):
        if pos_ids is None:
            out.append([])
            continue
        names = _tok_text(tok, list(pos_ids)[:MAX_TOPK]) or []
        out.append([[n, _f(lp, 3)] for n, lp in zip(names, list(pos_lps)[:MAX_TOPK], strict=False)])
    return out


def _detail(rt: str, r: dict[str, Any], tok: Any) -> dict[str, Any]:
    if rt == "loglikelihood":
        return {"ll": [_f(x) for x in r.get("choice_sum_logprob") or []],
                "nc": list(r.get("choice_n_chars") or []), "gr": list(r.get("choice_is_greedy") or [])}
    if rt == "rolling":
        ids, lps = r.get("token_ids") or [], r.get("logprobs") or []
        order: Any = np.argsort(np.asarray(lps, dtype=np.float64))[:WORST] if lps else []
        texts = _tok_text(tok, [ids[i] for i in order]) or []
        return {"sum": _f(r.get("sum_logprob")), "n": r.get("n_tokens"),
                "worst": [[int(i), t, _f(lps[i], 3)] for i, t in zip(order, texts, strict=False)]}
    cands = []
    ids_all, lps_all = r.get("cand_token_ids") or [], r.get("cand_logprobs") or []
    tk_ids, tk_lps = r.get("cand_topk_ids") or [], r.get("cand_topk_logprobs") or []
    for j, text in enumerate(r.get("candidates") or []):
        ids = ids_all[j] if j < len(ids_all) else None
        lps = lps_all[j] if j < len(lps_all) else None
        cands.append({"t": text, "s": str((r.get("cand_seed") or [None] * (j + 1))[j]),
                      "f": (r.get("cand_finish_reason") or [None] * (j + 1))[j],
                      "tok": _tok_text(tok, ids), "lp": [_f(x, 3) for x in lps] if lps is not None else None,
                      "top": _topk(tok, tk_ids[j] if j < len(tk_ids) else None, tk_lps[j] if j < len(tk_lps) else None)})
    return {"c": cands, "seed": r.get("seed")}


def _sample(r: dict[str, Any]) -> dict[str, Any]:
    msgs = r.get("messages")
    return {"id": r["sample_id"], "cat": r.get("category"), "prompt": r.get("prompt"),
            "msgs": json.loads(msgs) if isinstance(msgs, str) else None, "target": r.get("target"),
            "gold": r.get("gold"), "choices": r.get("choices"), "ctx": r.get("contexts")}


COLUMNS = {
    "loglikelihood": ["sample_id", "category", "prompt", "messages", "target", "gold", "choices", "contexts",
                      "choice_sum_logprob", "choice_n_chars", "choice_is_greedy"],
    "rolling": ["sample_id", "category", "prompt", "token_ids", "logprobs", "sum_logprob", "n_tokens"],
    "generate": ["sample_id", "category", "prompt", "messages", "target", "seed", "candidates", "cand_token_ids",
                 "cand_logprobs", "cand_topk_ids", "cand_topk_logprobs", "cand_finish_reason", "cand_seed"],
}


def _task_data(store: Store, cat: Catalog, task: str, ckpts: list[Checkpoint], notes: list[str]) -> dict[str, Any] | None:
    samples: dict[str, dict[str, Any]] = {}
    per_ck: list[dict[str, Any]] = []
    rt = None
    hib: dict[str, bool] = {}
    specs = current_specs()
    for c in ckpts:
        units = cat.units.get(c, {}).get(task, {})
        values: dict[str, dict[str, list[float]]] = {}
        detail: dict[str, dict[str, Any]] = {}
        for seed in sorted(units, key=lambda s: (len(s), s)):
            u = units[seed]
            rt = u.request_type
            try:
                names = set(u.columns())
                t = u.read_table(columns=[x for x in COLUMNS[rt] if x in names])
                tok = _tokenizer(u)
                for r in t.to_pylist():
                    samples.setdefault(r["sample_id"], _sample(r))
                    d = _detail(rt, r, tok)
                    if rt == "generate" and r["sample_id"] in detail:  # another seed: its candidates follow
                        detail[r["sample_id"]]["c"] += d["c"]
                    else:
                        detail[r["sample_id"]] = d
                for metric, meta in unit_metrics(store, u, specs).items():
                    hib[metric] = bool(meta.get("higher_is_better", True))
                    got = read_rows(store, u, meta, [])
                    vals = values.setdefault(metric, {})
                    for sid, v in zip(got["sample_id"], got["value"], strict=True):
                        vals.setdefault(str(sid), []).append(float(v))
            except (UserError, OSError) as e:
                notes.append(f"{cat.labels[c]} / {task} seed {seed} ({u.run_id[:12]}) not shown: {e}")
        per_ck.append({"values": values, "detail": detail})
    if not samples:
        return None
    ids = sorted(samples)
    index = {s: i for i, s in enumerate(ids)}
    metrics = sorted({m for p in per_ck for m in p["values"]})
    primary = next((m for m in PRIMARY if m in metrics), metrics[0] if metrics else None)
    vals_out, detail_out = [], []
    for p in per_ck:
        vals_out.append({m: [(_f(float(np.mean(p["values"][m][s]))) if s in p["values"].get(m, {}) else None)
                             for s in ids] for m in metrics})
        det = [None] * len(ids)
        for s, d in p["detail"].items():
            det[index[s]] = d
        detail_out.append(det)
    return {"name": task, "type": rt, "metrics": metrics, "primary": primary,
            "hib": {m: hib.get(m, True) for m in metrics}, "samples": [samples[s] for s in ids],
            "values": vals_out, "detail": detail_out}


def view_data(store: Store, *, models: Sequence[str] | None = None, tasks: Sequence[str] | None = None,
              suites: Sequence[str] | None = None, baseline: str | None = None, against: str | None = None) -> dict[str, Any]:
    """What the page embeds: checkpoints, flips pair, and per task its samples, values and details."""
    cat = build_catalog(store, suites=suites, tasks=tasks)
    ckpts = select_models(cat, models)
    pair = None
    if (baseline is None) != (against is None):
        raise ConfigError("flips need two checkpoints", hint="give both --baseline CHECKPOINT and --against CHECKPOINT")
    if baseline is not None and against is not None:
        b, a = resolve_baseline(cat, baseline), resolve_baseline(cat, against)
        if a == b:
            raise ConfigError(f"--baseline and --against name the same checkpoint ({cat.labels[a]})",
                              hint="name two checkpoints, e.g. --baseline bridge@1000 --against stage2@20000")
        ckpts = [b, a] + [c for c in ckpts if c not in (a, b)]
        pair = [0, 1]
    if not ckpts:
        raise ConfigError("no checkpoint to view", hint="check --models against `rescore status`")
    notes = list(cat.notes)
    names = sorted({t for c in ckpts for t in cat.units.get(c, {})})
    out = [d for t in names if (d := _task_data(store, cat, t, ckpts, notes)) is not None]
    if not out:
        raise UserError("no complete unit of the selected checkpoints and tasks has rows to show",
                        hint="run `rescore gen` (and `rescore score` for metric values), or widen --task/--models")
    return {"store": str(store.root), "checkpoints": [cat.labels[c] for c in ckpts], "flips": pair,
            "tasks": out, "notes": notes}


def build_view(store: Store, **kw: Any) -> str:
    return render(view_data(store, **kw))


def render(data: dict[str, Any]) -> str:
    """The page for ``data`` (:func:`view_data`'s form): the template with the data packed in."""
    raw = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    packed = base64.b64encode(gzip.compress(raw, mtime=0)).decode("ascii")
    title = f"rescore view: {data['store']}"
    page = Path(__file__).with_name("view.html").read_text(encoding="utf-8")
    return (page.replace("__TITLE__", html.escape(title)).replace("__DATA__", packed)
            )


def write_view(store: Store, out: Path, **kw: Any) -> Path:
    from rescore.report.html import write_page

    return write_page(out, lambda: build_view(store, **kw), example="view.html")


__all__ = ["build_view", "render", "view_data", "write_view"]

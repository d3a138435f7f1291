"""SFT-native metrics: the prompt's own checks (``meta["checks"]``, vocabulary in
:mod:`rescore.score.checks`) evaluated on candidate 0. Rows without checks do not apply.

- ``instruction_match_rate``: passed checks / evaluated checks, pooled over prompts (instruction level,
  like IFEval's inst_level accuracy; ratio aggregator).
- ``all_checks_pass_rate``: prompts whose every check passes (prompt level). Its per-row scores keep each
  check's result (``checks`` column, JSON): the per-prompt table.
- ``format_valid_rate``: prompts with at least one format check (bullets, numbered, json, python_parses,
  one_line, lowercase, uppercase) whose format checks all pass.
- ``chat_clean_rate``: non-empty responses free of role markers / special tokens (every SFT prompt).
- ``code_parse_rate``: python_code prompts (category, or a python_parses check): the code parses.
- ``json_valid_rate``: strict_json prompts (category, or a json check): the whole response is strict JSON
  of the requested kind (required keys are an instruction, counted by the other rates).
- ``concise_rate``: concise prompts: their max_words / max_sentences checks pass.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from rescore.score.checks import FORMAT_CHECKS, chat_clean, json_valid, python_check, run_checks
from rescore.score.columns import memo, metas, pylist
from rescore.score.metrics_answer import _cands
from rescore.score.spec import Metric, register_metric


def _texts(table: pa.Table) -> list[str | None]:
    """Candidate 0 of each row (None when the row has no candidates)."""

    def f() -> list[str | None]:
        flat, off = _cands(table)
        return [flat[off[i]] if off[i + 1] > off[i] else None for i in range(table.num_rows)]

    return memo(table, "sft:texts", f)


def _checks(table: pa.Table) -> list[dict[str, Any] | None]:
    def f() -> list[dict[str, Any] | None]:
        out: list[dict[str, Any] | None] = []
        has = np.ones(table.num_rows, dtype=bool)
        if "meta" in table.column_names:
            has = np.asarray(pc.match_substring(table.column("meta"), '"checks"').fill_null(False)
                             .to_numpy(zero_copy_only=False), dtype=bool)
        ms = metas(table) if has.any() else None
        for i in range(table.num_rows):
            c = ms[i].get("checks") if ms is not None and has[i] else None  # type: ignore[index]
            out.append(c if isinstance(c, dict) and c else None)
        return out

    return memo(table, "sft:checks", f)


def _results(table: pa.Table) -> list[dict[str, bool | None] | None]:
    def f() -> list[dict[str, bool | None] | None]:
        texts = _texts(table)
        return [None if c is None or texts[i] is None else run_checks(c, texts[i])
                for i, c in enumerate(_checks(table))]

    return memo(table, "sft:results", f)


def _categories(table: pa.Table) -> list[str | None]:
    return pylist(table, "category") if "category" in table.column_names else [None] * table.num_rows


def instruction_match_rate(table: pa.Table) -> dict[str, Any]:
    res = _results(table)
    num = np.full(len(res), np.nan)
    den = np.full(len(res), np.nan)
    for i, r in enumerate(res):
        if r is None:
            continue
        ev = [v for v in r.values() if v is not None]
        if ev:
            num[i], den[i] = sum(ev), len(ev)
    with np.errstate(invalid="ignore"):
        return {"value": num / den, "num": num, "den": den}


def all_checks_pass_rate(table: pa.Table) -> dict[str, Any]:
    res = _results(table)
    value = np.full(len(res), np.nan)
    detail: list[str | None] = []
    for i, r in enumerate(res):
        if r is None:
            detail.append(None)
            continue
        ev = [v for v in r.values() if v is not None]
        if ev:
            value[i] = float(all(ev))
        detail.append(orjson.dumps(r).decode())
    return {"value": value, "checks": pa.array(detail, pa.string())}


def format_valid_rate(table: pa.Table) -> np.ndarray:
    res = _results(table)
    value = np.full(len(res), np.nan)
    for i, r in enumerate(res):
        if r is None:
            continue
        ev = [v for k, v in r.items() if k in FORMAT_CHECKS and v is not None]
        if ev:
            value[i] = float(all(ev))
    return value


def chat_clean_rate(table: pa.Table) -> np.ndarray:
    texts = _texts(table)
    return np.array([np.nan if c is None or texts[i] is None else float(chat_clean(texts[i]))
                     for i, c in enumerate(_checks(table))], dtype=np.float64)


def _category_rate(table: pa.Table, category: str, check: str, fn: Any, reuse: bool) -> np.ndarray:
    texts = _texts(table)
    cats = _categories(table)
    res = _results(table)
    value = np.full(table.num_rows, np.nan)
    for i, c in enumerate(_checks(table)):
        if c is None or texts[i] is None:
            continue
        if cats[i] == category or check in c:
            done = res[i].get(check) if reuse and res[i] is not None else None
            value[i] = float(done if done is not None else fn(texts[i], c.get(check) or {}))
    return value


def code_parse_rate(table: pa.Table) -> np.ndarray:
    return _category_rate(table, "python_code", "python_parses", python_check, reuse=True)


def json_valid_rate(table: pa.Table) -> np.ndarray:
    return _category_rate(table, "strict_json", "json", json_valid, reuse=False)


def concise_rate(table: pa.Table) -> np.ndarray:
    res = _results(table)
    cats = _categories(table)
    value = np.full(len(res), np.nan)
    for i, r in enumerate(res):
        if r is None or cats[i] != "concise":
            continue
        ev = [v for k, v in r.items() if k in ("max_words", "max_sentences") and v is not None]
        if ev:
            value[i] = float(all(ev))
    return value


_SFT = ("candidates", "meta", "category")
for spec in (
    Metric("instruction_match_rate", instruction_match_rate, _SFT, "generate", True, "ratio", 1,
           "passed checks / evaluated checks, pooled over SFT prompts (instruction level)"),
    Metric("all_checks_pass_rate", all_checks_pass_rate, _SFT, "generate", True, "mean", 1,
           "SFT prompts whose every check passes (prompt level)"),
    Metric("format_valid_rate", format_valid_rate, _SFT, "generate", True, "mean", 1,
           "SFT prompts with format checks whose format checks all pass"),
    Metric("chat_clean_rate", chat_clean_rate, _SFT, "generate", True, "mean", 1,
           "non-empty responses without role markers or special tokens"),
    Metric("code_parse_rate", code_parse_rate, _SFT, "generate", True, "mean", 1,
           "python_code prompts whose code block parses with ast.parse"),
    Metric("json_valid_rate", json_valid_rate, _SFT, "generate", True, "mean", 1,
           "strict_json prompts whose whole response is strict JSON of the requested kind"),
    Metric("concise_rate", concise_rate, _SFT, "generate", True, "mean", 1,
           "concise prompts whose length limits (max_words, max_sentences) hold"),
):
    register_metric(spec)

SFT_METRICS = ("instruction_match_rate", "all_checks_pass_rate", "format_valid_rate", "chat_clean_rate",
               "code_parse_rate", "json_valid_rate", "concise_rate")

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

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from rescore.score import checks as ck
from rescore.score.checks import CHECKS, FORMAT_CHECKS, json_valid, python_check
from rescore.score.columns import _parse_meta, memo
from rescore.score.metrics_answer import _cands_arrow
from rescore.score.spec import metric

# result codes of one check on one response
ABSENT, FAILED, PASSED, NOT_EVALUATED = -1, 0, 1, 2


@dataclass(frozen=True)
class Checked:
    """Every row's check results, column-wise. ``codes[i, j]`` is row i's result for check ``names[j]``
    (``ABSENT`` when the row does not run it). A row applies when it has checks and a candidate;
    ``group[i]`` indexes its checks dict in ``dicts`` (rows with the same meta share one)."""

    applies: np.ndarray
    group: np.ndarray
    dicts: list[dict[str, Any]]
    names: list[str]
    codes: np.ndarray

    def evaluated(self, names: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """(passed, evaluated) counts per row over ``names`` (default: every check)."""
        cols = [j for j, n in enumerate(self.names) if names is None or n in names]
        c = self.codes[:, cols]
        return (c == PASSED).sum(axis=1), ((c == PASSED) | (c == FAILED)).sum(axis=1)


def _check_groups(table: pa.Table) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """(index of the row's checks dict, -1 for rows without checks; the distinct checks dicts). Each
    distinct meta string is parsed once."""

    def f() -> tuple[np.ndarray, list[dict[str, Any]]]:
        group = np.full(table.num_rows, -1, dtype=np.int64)
        dicts: list[dict[str, Any]] = []
        if "meta" not in table.column_names or not pc.any(pc.match_substring(table.column("meta"), '"checks"')).as_py():
            return group, dicts
        enc = table.column("meta").combine_chunks().dictionary_encode()
        of_value = np.full(len(enc.dictionary), -1, dtype=np.int64)
        for j, s in enumerate(enc.dictionary.to_pylist()):
            if s is None or '"checks"' not in s:
                continue
            c = _parse_meta(s).get("checks")
            if isinstance(c, dict) and c:
                of_value[j] = len(dicts)
                dicts.append(c)
        idx = np.asarray(enc.indices.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
        group = np.where(idx >= 0, of_value[np.maximum(idx, 0)], -1)
        return group, dicts

    return memo(table, "sft:groups", f)


def _first_texts(table: pa.Table, rows: np.ndarray) -> pa.Array:
    """Candidate 0 of ``rows`` (every one has a candidate; null candidates read as "")."""
    flat, off = _cands_arrow(table)
    return flat.take(pa.array(off[rows]))


def _applying(table: pa.Table) -> np.ndarray:
    group, _ = _check_groups(table)
    _, off = _cands_arrow(table)
    return (group >= 0) & (np.diff(off) > 0)


def _param_each(ps: list[Any], fn: Callable[[Any], int]) -> list[int | None]:
    """``fn`` of every group's parameters (None where run_checks would find them malformed)."""
    out: list[int | None] = []
    for p in ps:
        try:
            v = fn(p)
        except (TypeError, ValueError, KeyError):
            out.append(None)
            continue
        out.append(min(max(int(v), -(1 << 62)), 1 << 62))  # counts never come near; keeps int64 compares exact
    return out


def _compare(values: np.ndarray, thresholds: list[int | None], gpos: np.ndarray,
             op: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    thr = np.array([0 if t is None else t for t in thresholds], dtype=np.int64)
    bad = np.array([t is None for t in thresholds], dtype=bool)
    res = np.where(op(values, thr[gpos]), PASSED, FAILED).astype(np.int8)
    res[bad[gpos]] = NOT_EVALUATED
    return res


def _codes(name: str, texts: pa.Array, params: list[Any], gpos: np.ndarray,
           py_texts: Callable[[], list[str]]) -> np.ndarray:
    """Result codes of check ``name`` on ``texts``; row k has the parameters ``params[gpos[k]]``. Equal to
    ``run_checks`` row by row."""
    if name not in CHECKS:
        return np.full(len(texts), NOT_EVALUATED, dtype=np.int8)
    if name == "bullets":
        return _compare(ck.bullet_counts(texts), _param_each(params, ck._count), gpos, np.equal)
    if name in ("max_words", "min_words"):
        op = np.less_equal if name == "max_words" else np.greater_equal
        return _compare(ck.word_counts(texts), _param_each(params, int), gpos, op)
    if name in ("no_role_leak", "refusal"):
        hit = ck.role_leaks(texts) if name == "no_role_leak" else ck.refusals(texts)
        return np.where(hit if name == "refusal" else ~hit, PASSED, FAILED).astype(np.int8)
    fn = CHECKS[name]
    out = np.empty(len(texts), dtype=np.int8)
    for k, (t, g) in enumerate(zip(py_texts(), gpos.tolist(), strict=True)):
        try:
            out[k] = PASSED if fn(t, params[g]) else FAILED
        except (TypeError, ValueError, KeyError):
            out[k] = NOT_EVALUATED
    return out


def checked(table: pa.Table) -> Checked:
    """Run every row's checks on its candidate 0 (memoised per table)."""

    def f() -> Checked:
        group, dicts = _check_groups(table)
        applies = _applying(table)
        rows = np.flatnonzero(applies)
        names: list[str] = []
        for d in dicts:
            names.extend(k for k in d if k not in names)
        codes = np.full((table.num_rows, len(names)), ABSENT, dtype=np.int8)
        if len(rows) == 0:
            return Checked(applies, group, dicts, names, codes)
        texts = _first_texts(table, rows)
        rgroup = group[rows]
        for j, name in enumerate(names):
            # the groups that run this check (run_checks skips parameters False and None)
            runs = [g for g, d in enumerate(dicts) if name in d and d[name] is not False and d[name] is not None]
            if not runs:
                continue
            pos_of = np.full(len(dicts), -1, dtype=np.int64)
            pos_of[runs] = np.arange(len(runs))
            gpos = pos_of[rgroup]
            sel = np.flatnonzero(gpos >= 0)
            if len(sel) == 0:
                continue
            sub = texts if len(sel) == len(rows) else texts.take(pa.array(sel))
            cache: list[list[str]] = []

            def py_texts(sub: pa.Array = sub, cache: list[list[str]] = cache) -> list[str]:
                if not cache:
                    cache.append(sub.to_pylist())
                return cache[0]

            codes[rows[sel], j] = _codes(name, sub, [dicts[g][name] for g in runs], gpos[sel], py_texts)
        return Checked(applies, group, dicts, names, codes)

    return memo(table, "sft:checked", f)


def _category_is(table: pa.Table, category: str) -> np.ndarray:
    if "category" not in table.column_names:
        return np.zeros(table.num_rows, dtype=bool)
    return np.asarray(pc.equal(table.column("category"), category).fill_null(False).to_numpy(zero_copy_only=False),
                      dtype=bool)


def _all_pass(passed: np.ndarray, ev: np.ndarray, rows: np.ndarray) -> np.ndarray:
    value = np.full(len(passed), np.nan)
    ok = rows & (ev > 0)
    value[ok] = (passed[ok] == ev[ok]).astype(np.float64)
    return value


@metric("instruction_match_rate", version=1, request_type="generate", columns=("candidates", "meta", "category"), aggregator="ratio",
        description="passed checks / evaluated checks, pooled over SFT prompts (instruction level)")
def instruction_match_rate(table: pa.Table) -> dict[str, Any]:
    c = checked(table)
    passed, ev = c.evaluated()
    ok = c.applies & (ev > 0)
    num = np.full(table.num_rows, np.nan)
    den = np.full(table.num_rows, np.nan)
    num[ok], den[ok] = passed[ok], ev[ok]
    with np.errstate(invalid="ignore"):
        return {"value": num / den, "num": num, "den": den}


def _details(c: Checked) -> pa.Array:
    """Each applying row's check results as JSON (check order as in its meta; null elsewhere)."""
    rows = np.flatnonzero(c.applies)
    out: list[str | None] = [None] * len(c.applies)
    if len(rows) == 0:
        return pa.array(out, pa.string())
    k = len(c.names)
    if 2 * k + len(c.dicts).bit_length() <= 62:  # (group, codes) packed into one integer, 2 bits a code
        packed = c.group[rows] << (2 * k)
        for j in range(k):
            packed |= (c.codes[rows, j].astype(np.int64) + 1) << (2 * j)
        uniq_packed, inv = np.unique(packed, return_inverse=True)
        uniq = [[u >> (2 * k)] + [((u >> (2 * j)) & 3) - 1 for j in range(k)] for u in uniq_packed.tolist()]
    else:
        key = np.concatenate([c.group[rows, None], c.codes[rows].astype(np.int64)], axis=1)
        uniq_rows, inv = np.unique(key, axis=0, return_inverse=True)
        uniq = uniq_rows.tolist()
    col = {n: j for j, n in enumerate(c.names)}
    value = {ABSENT: None, FAILED: False, PASSED: True, NOT_EVALUATED: None}
    strings = []
    for u in uniq:
        d = c.dicts[u[0]]
        strings.append(orjson.dumps({k: value[u[1 + col[k]]] for k in d if u[1 + col[k]] != ABSENT}).decode())
    idx = np.full(len(c.applies), -1, dtype=np.int64)
    idx[rows] = np.asarray(inv).reshape(-1)
    return pa.array(strings, pa.string()).take(pa.array(idx, mask=idx < 0))


@metric("all_checks_pass_rate", version=1, request_type="generate", columns=("candidates", "meta", "category"), aggregator="mean",
        description="SFT prompts whose every check passes (prompt level)")
def all_checks_pass_rate(table: pa.Table) -> dict[str, Any]:
    c = checked(table)
    passed, ev = c.evaluated()
    return {"value": _all_pass(passed, ev, c.applies), "checks": _details(c)}


@metric("format_valid_rate", version=1, request_type="generate", columns=("candidates", "meta", "category"), aggregator="mean",
        description="SFT prompts with format checks whose format checks all pass")
def format_valid_rate(table: pa.Table) -> np.ndarray:
    c = checked(table)
    passed, ev = c.evaluated(FORMAT_CHECKS)
    return _all_pass(passed, ev, c.applies)


@metric("chat_clean_rate", version=1, request_type="generate", columns=("candidates", "meta", "category"), aggregator="mean",
        description="non-empty responses without role markers or special tokens")
def chat_clean_rate(table: pa.Table) -> np.ndarray:
    applies = _applying(table)
    rows = np.flatnonzero(applies)
    value = np.full(table.num_rows, np.nan)
    if len(rows):
        texts = _first_texts(table, rows)
        value[rows] = (ck.nonblank(texts) & ~ck.role_leaks(texts)).astype(np.float64)
    return value


def _category_rate(table: pa.Table, category: str, check: str, fn: Any, reuse: bool) -> np.ndarray:
    """Rows of ``category`` (or with ``check`` among their checks): ``fn`` on candidate 0, or with
    ``reuse`` the check's own result where it ran."""
    c = checked(table)
    value = np.full(table.num_rows, np.nan)
    has = np.array([check in d for d in c.dicts] + [False], dtype=bool)  # group -1 -> last
    rows = np.flatnonzero(c.applies & (_category_is(table, category) | has[c.group]))
    if len(rows) == 0:
        return value
    todo = rows
    if reuse and check in c.names:
        code = c.codes[rows, c.names.index(check)]
        done = (code == PASSED) | (code == FAILED)
        value[rows[done]] = (code[done] == PASSED).astype(np.float64)
        todo = rows[~done]
    if len(todo):
        texts = _first_texts(table, todo).to_pylist()
        value[todo] = [float(fn(t, c.dicts[g].get(check) or {})) for t, g in zip(texts, c.group[todo].tolist(), strict=True)]
    return value


@metric("code_parse_rate", version=1, request_type="generate", columns=("candidates", "meta", "category"), aggregator="mean",
        description="python_code prompts whose code block parses with ast.parse")
def code_parse_rate(table: pa.Table) -> np.ndarray:
    return _category_rate(table, "python_code", "python_parses", python_check, reuse=True)


@metric("json_valid_rate", version=1, request_type="generate", columns=("candidates", "meta", "category"), aggregator="mean",
        description="strict_json prompts whose whole response is strict JSON of the requested kind")
def json_valid_rate(table: pa.Table) -> np.ndarray:
    return _category_rate(table, "strict_json", "json", json_valid, reuse=False)


@metric("concise_rate", version=1, request_type="generate", columns=("candidates", "meta", "category"), aggregator="mean",
        description="concise prompts whose length limits (max_words, max_sentences) hold")
def concise_rate(table: pa.Table) -> np.ndarray:
    c = checked(table)
    passed, ev = c.evaluated(("max_words", "max_sentences"))
    return _all_pass(passed, ev, c.applies & _category_is(table, "concise"))


SFT_METRICS = ("instruction_match_rate", "all_checks_pass_rate", "format_valid_rate", "chat_clean_rate",
               "code_parse_rate", "json_valid_rate", "concise_rate")

"""Multiple-choice (loglikelihood) metrics, with lm-evaluation-harness's definitions
(``lm_eval/api/task.py`` ConfigurableTask.process_results, output_type multiple_choice):

- ``acc``: ``argmax(lls) == gold`` (numpy argmax: the first maximum wins ties).
- ``acc_norm``: ``argmax(lls / completion_len) == gold`` where ``completion_len`` is the *character* length
  of lm-eval's choice string (``doc_to_choice``), which is the continuation without the target delimiter
  (the task's ``params.target_delimiter``, default ``" "``). For partial scoring (winogrande: one context
  per choice, one shared continuation) lm-eval's choice string is the per-choice context without the
  few-shot examples: zero-shot rows use their contexts' lengths, few-shot rows the lengths the task pinned
  in their meta (``choice_chars`` / ``choice_bytes``; rows generated before the pin fall back to the whole
  context). Any row's meta may pin the lengths that way.
- ``acc_bytes``: the same with UTF-8 byte lengths (lm-eval's ``acc_bytes``).
- ``acc_norm_tokens``: normalised by the continuation's token count.
- ``brier_score``: sum over choices of (softmax(lls) - one_hot(gold))^2, mean over rows (lm-eval).
- ``ece``: expected calibration error of the top choice's softmax probability (10 equal-width bins).

A gold index outside the choices scores 0 (lm-eval's ``-100``); a missing gold makes the row not apply.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rescore.score.columns import (
    _parse_meta,
    flat_list,
    memo,
    metas,
    row_ids,
    segment_argmax,
    segment_softmax,
    to_float,
    uniform_width,
)
from rescore.score.spec import UnitInfo, metric

LL = "choice_sum_logprob"


def _lls(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    def f() -> tuple[np.ndarray, np.ndarray]:
        vals, off, _ = flat_list(table.column(LL))
        return vals, off

    return memo(table, "mc:lls", f)


def _gold(table: pa.Table) -> np.ndarray:
    return memo(table, "mc:gold", lambda: to_float(table.column("gold")))


def _score(table: pa.Table, pred: np.ndarray) -> np.ndarray:
    """1.0/0.0 for pred == gold; NaN where the row has no choices or no gold."""
    gold = _gold(table)
    _, off = _lls(table)
    n_choices = np.diff(off)
    out = (pred == gold).astype(np.float64)
    out[np.isnan(gold) | (n_choices == 0)] = np.nan
    return out


def _pred(table: pa.Table) -> np.ndarray:
    return memo(table, "mc:pred", lambda: segment_argmax(*_lls(table)))


@metric("acc", version=1, request_type="loglikelihood", columns=("choice_sum_logprob", "gold"), aggregator="mean",
        description="accuracy: the choice with the highest loglikelihood is the gold one (lm-eval acc)",
        lm_eval_key="acc,none")
def acc(table: pa.Table) -> np.ndarray:
    return _score(table, _pred(table))


def _delimiter(unit: UnitInfo | None) -> str:
    try:
        params = unit.manifest["task"]["config"]["params"]  # type: ignore[union-attr]
    except (KeyError, TypeError, AttributeError):
        params = {}
    d = params.get("target_delimiter", " ") if isinstance(params, dict) else " "
    return d if isinstance(d, str) else " "


def _choice_shape(table: pa.Table, unit: UnitInfo | None) -> tuple[np.ndarray | None, np.ndarray, dict[int, Any]]:
    """(choice starts with the target delimiter, per flat choice; choice offsets; row -> per-choice
    contexts of partial-scoring rows, or their meta's pinned lengths when the row has them). Shared by
    acc_norm and acc_bytes."""

    def f() -> tuple[np.ndarray | None, np.ndarray, dict[int, Any]]:
        flat, coff = _flat_strings(table, "choices")
        if flat is None:
            return None, coff, {}
        delim = _delimiter(unit)
        starts = np.asarray(pc.starts_with(flat, delim).fill_null(False).to_numpy(zero_copy_only=False), dtype=bool) \
            if delim else np.zeros(len(flat), dtype=bool)
        # partial scoring: several choices with one and the same continuation -> per-choice contexts
        nch = np.diff(coff)
        partial_rows = np.zeros(len(nch), dtype=bool)
        if len(flat) and (nch > 1).any():
            if flat.null_count == 0:
                # all choices equal the row's first <=> each equals the one before it (no copy of the strings)
                same = np.ones(len(flat), dtype=bool)
                same[1:] = np.asarray(pc.equal(flat.slice(1), flat.slice(0, len(flat) - 1))
                                      .to_numpy(zero_copy_only=False), dtype=bool)
                same[coff[:-1][nch > 0]] = True
            else:
                first = np.repeat(coff[:-1], nch)
                same = np.asarray(pc.equal(flat, flat.take(pa.array(first))).fill_null(True)
                                  .to_numpy(zero_copy_only=False), dtype=bool)
            partial_rows[nch > 0] = np.logical_and.reduceat(same, coff[:-1][nch > 0])
            partial_rows &= nch > 1
        ctxs: dict[int, Any] = {}
        if partial_rows.any():
            rows = np.flatnonzero(partial_rows)
            got, pins = _contexts(table, unit, rows)
            for r, cs, pin in zip(rows.tolist(), got if got is not None else [None] * len(rows), pins, strict=True):
                k = coff[r + 1] - coff[r]
                if pin is not None and all(isinstance(pin.get(x), list) and len(pin[x]) == k
                                           for x in ("choice_chars", "choice_bytes")):
                    ctxs[r] = pin  # few-shot rows: the lengths without the examples in front (lm-eval's choices)
                elif cs is not None and len(cs) == k:
                    ctxs[r] = [c or "" for c in cs]
        return starts, coff, ctxs

    return memo(table, "mc:shape", f)


def _norm_lengths(table: pa.Table, unit: UnitInfo | None, by: str) -> np.ndarray:
    """lm-eval's completion_len (``by="chars"``) or byte_length (``by="bytes"``) per flat choice."""
    col = "choice_n_chars" if by == "chars" else "choice_n_bytes"
    lens, _, _ = flat_list(table.column(col))
    lens = lens.copy()
    starts, coff, ctxs = _choice_shape(table, unit)
    delim = _delimiter(unit)
    dlen = len(delim) if by == "chars" else len(delim.encode("utf-8"))
    if starts is not None and dlen:
        lens[starts] -= dlen
    for r, cs in ctxs.items():
        if isinstance(cs, dict):
            lens[coff[r] : coff[r + 1]] = cs["choice_chars" if by == "chars" else "choice_bytes"]
        else:
            lens[coff[r] : coff[r + 1]] = [len(c) if by == "chars" else len(c.encode("utf-8")) for c in cs]
    pinned = _pinned(table, "choice_chars" if by == "chars" else "choice_bytes")
    if pinned is not None:
        off = _lls(table)[1]
        for r, v in pinned.items():
            a, b = off[r], off[r + 1]
            if len(v) == b - a:
                lens[a:b] = v
    return lens


def _flat_strings(table: pa.Table, name: str) -> tuple[pa.Array | None, np.ndarray]:
    if name not in table.column_names:
        return None, np.zeros(1, dtype=np.int64)
    arr = table.column(name).combine_chunks()
    if arr.null_count:
        arr = pc.fill_null(arr, pa.scalar([], type=arr.type))
    off = np.asarray(arr.offsets.to_numpy(), dtype=np.int64)
    flat = arr.values.slice(off[0], off[-1] - off[0])
    return flat, off - off[0]


def _contexts(table: pa.Table, unit: UnitInfo | None,
              rows: np.ndarray) -> tuple[list[list[str] | None] | None, list[dict[str, Any] | None]]:
    """The per-choice contexts of ``rows`` (null for rows whose choices share the prompt), and the rows'
    parsed meta where it pins choice lengths (``choice_chars`` / ``choice_bytes``), else None."""
    take = pa.array(rows)
    extra = [c for c in ("contexts", "meta") if c not in table.column_names]
    more = unit.read(extra) if extra and unit is not None and unit.read is not None else None

    def column(name: str) -> pa.ChunkedArray | None:
        if name in table.column_names:
            return table.column(name)
        return more.column(name) if more is not None and name in more.column_names else None

    ctx, meta = column("contexts"), column("meta")
    pins: list[dict[str, Any] | None] = [None] * len(rows)
    if meta is not None:
        for i, s in enumerate(meta.take(take).to_pylist()):
            if s and '"choice_chars"' in s:
                pins[i] = _parse_meta(s)
    return (ctx.take(take).to_pylist() if ctx is not None else None), pins


def _pinned(table: pa.Table, key: str) -> dict[int, list[float]] | None:
    if "meta" not in table.column_names:
        return None
    hit = pc.match_substring(table.column("meta"), f'"{key}"')
    if not pc.any(hit).as_py():
        return None
    ms = metas(table)
    out = {}
    for r in np.flatnonzero(np.asarray(hit.to_numpy(zero_copy_only=False), dtype=bool)):
        v = ms[r].get(key)
        if isinstance(v, list):
            out[int(r)] = [float(x) for x in v]
    return out


def _normed_pred(table: pa.Table, unit: UnitInfo | None, by: str) -> np.ndarray:
    lls, off = _lls(table)
    if by == "tokens":
        lens, _, _ = flat_list(table.column("choice_n_tokens"))
    else:
        lens = _norm_lengths(table, unit, by)
    with np.errstate(divide="ignore", invalid="ignore"):
        return segment_argmax(lls / lens, off)


@metric("acc_norm", version=1, request_type="loglikelihood", columns=("choice_sum_logprob", "gold", "choice_n_chars", "choices"),
        description="accuracy with loglikelihoods divided by the choice's character length (lm-eval acc_norm)",
        needs_unit=True, lm_eval_key="acc_norm,none")
def acc_norm(table: pa.Table, unit: UnitInfo | None = None) -> np.ndarray:
    return _score(table, _normed_pred(table, unit, "chars"))


@metric("acc_bytes", version=1, request_type="loglikelihood", columns=("choice_sum_logprob", "gold", "choice_n_bytes", "choices"),
        description="accuracy with loglikelihoods divided by the choice's UTF-8 byte length (lm-eval acc_bytes)",
        needs_unit=True, lm_eval_key="acc_bytes,none")
def acc_bytes(table: pa.Table, unit: UnitInfo | None = None) -> np.ndarray:
    return _score(table, _normed_pred(table, unit, "bytes"))


@metric("acc_norm_tokens", version=1, request_type="loglikelihood", columns=("choice_sum_logprob", "gold", "choice_n_tokens"),
        description="accuracy with loglikelihoods divided by the continuation's token count")
def acc_norm_tokens(table: pa.Table) -> np.ndarray:
    # rows without token counts (imported from lm-eval: per_token_available false) do not apply
    return np.full(table.num_rows, np.nan) if table.column("choice_n_tokens").null_count else _score(table, _normed_pred(table, None, "tokens"))


def _probs(table: pa.Table) -> np.ndarray:
    return memo(table, "mc:probs", lambda: segment_softmax(*_lls(table)))


@metric("brier_score", version=1, request_type="loglikelihood", columns=("choice_sum_logprob", "gold"), higher_is_better=False,
        description="Brier score of the softmax over choice loglikelihoods (lm-eval brier_score)",
        lm_eval_key="brier_score,none")
def brier_score(table: pa.Table) -> np.ndarray:
    lls, off = _lls(table)
    p = _probs(table)
    gold = _gold(table)
    n_choices = np.diff(off)
    k = uniform_width(off)
    if k:  # every row has k choices: the one-hot matrix by broadcasting
        onehot = (np.arange(k)[None, :] == gold[:, None]).astype(np.float64).reshape(-1)
    else:
        rid = row_ids(off)
        pos = np.arange(lls.size) - np.repeat(off[:-1], n_choices)
        onehot = (pos == gold[rid]).astype(np.float64)
    sq = (p - onehot) ** 2
    out = np.zeros(len(n_choices))
    ne = n_choices > 0
    if ne.any():
        out[ne] = np.add.reduceat(sq, off[:-1][ne])
    bad = np.isnan(gold) | ~ne | (gold < 0) | (gold >= n_choices)
    out[bad] = np.nan
    return out


@metric("ece", version=1, request_type="loglikelihood", columns=("choice_sum_logprob", "gold"), higher_is_better=False, aggregator="ece",
        description="expected calibration error of the top choice's softmax probability (10 equal-width bins)",
        agg_params={"n_bins": 10})
def ece(table: pa.Table) -> dict[str, Any]:
    p = _probs(table)
    _, off = _lls(table)
    pred = _pred(table)
    correct = _score(table, pred)
    conf = np.full(len(pred), np.nan)
    ok = pred >= 0
    conf[ok] = p[off[:-1][ok] + pred[ok]]
    value = correct - conf
    return {"value": value, "conf": conf, "correct": correct}

"""Answer-extraction metrics for ``generate`` tasks with a reference answer (GSM8K and the like).

A row applies when its meta carries ``answer`` (GSM8K rows do) or, failing that, it has a ``target``.
The reference is lm-eval's: the full ``target`` text, normalised with GSM8K's exact_match settings (which
strip everything up to ``#### ``); ``meta["answer"]`` is used when there is no target.

- ``exact_match_strict`` / ``exact_match_flexible``: lm-eval's GSM8K strict-match and flexible-extract
  filters + exact_match, for candidate 0 (the greedy one); every candidate's result is kept in the
  ``per_candidate`` column of the per-row scores.
- ``maj_at_n`` (``maj_at_<k>`` with param k): majority vote over the first k candidates' normalised extracted answers (ties: the answer
  seen first; candidates with no answer do not vote), correct if the winner matches.
- ``pass_at_1`` / ``pass_at_<k>`` (``--metric pass_at_k:k=8``): the unbiased estimator of Chen et al. (2021), 1 - C(n-c, k) / C(n, k); rows with fewer
  than k candidates do not apply.
- ``bon_<strategy>``: best-of-n selection, the selected candidate's correctness. Strategies: ``first``,
  ``random`` (seeded per sample: ``derive_seed(seed, sample_id, 0) % n``), ``oracle`` (any correct),
  ``max_mean_logprob``, ``max_sum_logprob`` (ties: the lowest index), ``majority`` (= maj@n), and
  ``reranker`` (scores from a user file, see :mod:`rescore.score.rerank`).
- ``math_equiv``: math-verify's equivalence of candidate 0 with the reference answer (needs the optional
  ``math-verify`` package; skipped cleanly without it).

Every metric names its answer extractor (registered in :data:`rescore.score.extractors`, where the GSM8K
patterns are defined once): exact_match_strict ``gsm8k_strict``, exact_match_flexible ``gsm8k_flexible``;
maj/pass/bon take it as the parameter ``extract``: ``flexible`` (default) or ``strict``, or the name of
another extractor.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rescore.core import derive_seed
from rescore.score.columns import (
    flat_list,
    float_array,
    memo,
    metas,
    pylist,
    register_cache,
    segment_argmax,
    segment_sums,
)
from rescore.score.extract import INVALID, exact_match_norm, exact_match_norm_arrow
from rescore.score.spec import UnitInfo, extractors, metric

EXTRACTORS = {"strict": "gsm8k_strict", "flexible": "gsm8k_flexible"}  # short names of the ``extract`` parameter
_GEN = ("candidates", "target", "meta")  # the columns every metric here reads


def _cands_arrow(table: pa.Table) -> tuple[pa.Array, np.ndarray]:
    """Every candidate text as one Arrow string array (nulls as ""), with the row offsets."""

    def f() -> tuple[pa.Array, np.ndarray]:
        arr = table.column("candidates").combine_chunks()
        if arr.null_count:
            arr = pc.fill_null(arr, pa.scalar([], type=arr.type))
        off = np.asarray(arr.offsets.to_numpy(), dtype=np.int64)
        flat = arr.values.slice(off[0], off[-1] - off[0])
        if flat.null_count:
            flat = flat.fill_null("")
        return flat, off - off[0]

    return memo(table, "gen:cands_arrow", f)


def _cands(table: pa.Table) -> tuple[list[str], np.ndarray]:
    def f() -> tuple[list[str], np.ndarray]:
        flat, off = _cands_arrow(table)
        return flat.to_pylist(), off

    return memo(table, "gen:cands", f)


def _refs(table: pa.Table) -> pa.Array:
    """Normalised reference answer per row (null: the row has no reference)."""

    def f() -> pa.Array:
        n = table.num_rows
        if "target" in table.column_names:
            target = table.column("target").combine_chunks().cast(pa.string())
            out = exact_match_norm_arrow(target)
            no_target = np.asarray(target.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        else:
            out = pa.nulls(n, pa.string())
            no_target = np.ones(n, dtype=bool)
        if "meta" in table.column_names and no_target.any():  # meta only matters without a target
            hit = pc.match_substring(table.column("meta"), '"answer"').fill_null(False)
            rows = np.flatnonzero(np.asarray(hit.to_numpy(zero_copy_only=False), dtype=bool) & no_target)
            if len(rows):
                ms = metas(table)
                vals = [ms[i].get("answer") for i in rows.tolist()]
                mask = np.zeros(n, dtype=bool)
                keep = np.array([v is not None for v in vals], dtype=bool)
                mask[rows[keep]] = True
                if mask.any():
                    out = pc.replace_with_mask(out, pa.array(mask), pa.array(
                        [exact_match_norm(str(v)) for v in vals if v is not None], pa.string()))
        return out

    return memo(table, "gen:refs", f)


def extract_arrow(flat: pa.Array, mode: str) -> pa.Array:
    """The answers of every text of an Arrow string array (no nulls) by the extractor ``mode`` names
    (``strict``, ``flexible`` or a registered extractor's name); ``INVALID`` where it finds none."""
    return extractors.get(EXTRACTORS.get(mode, mode)).extract_all(flat).fill_null(INVALID)


def _has_ref(table: pa.Table) -> np.ndarray:
    return memo(table, "gen:has_ref",
                lambda: np.asarray(_refs(table).is_valid().to_numpy(zero_copy_only=False), dtype=bool))


def _answers_arrow(table: pa.Table, mode: str) -> pa.Array:
    """The extracted answer of every candidate (``INVALID`` for rows without a reference)."""

    def f() -> pa.Array:
        flat, off = _cands_arrow(table)
        has_ref = _has_ref(table)
        if not has_ref.any():  # not an answer task (e.g. SFT prompts): nothing to extract
            return pa.repeat(pa.scalar(INVALID, pa.string()), len(flat))
        got = extract_arrow(flat, mode)
        if not has_ref.all():
            got = pc.if_else(pa.array(np.repeat(has_ref, np.diff(off))), got, INVALID)
        return got

    return memo(table, f"gen:answers_arrow:{mode}", f)


def _answers(table: pa.Table, mode: str) -> list[str]:
    return memo(table, f"gen:answers:{mode}", lambda: _answers_arrow(table, mode).to_pylist())


def _strict_vectorised(flat: list[str] | pa.Array, has_ref: list[bool], off: np.ndarray) -> list[str]:
    """``strict_extract`` over many candidates at once (``INVALID`` for rows without a reference)."""
    arr = flat if isinstance(flat, pa.Array) else pa.array(flat, pa.string())
    got = extract_arrow(arr, "strict").to_pylist()
    keep = np.repeat(np.array(has_ref, dtype=bool), np.diff(off)).tolist()
    return [g if k else INVALID for g, k in zip(got, keep, strict=True)]


def _ids(table: pa.Table, mode: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(normalised-answer id per flat candidate, reference id per row (-2: none), valid mask per candidate).

    Ids index the distinct normalised strings, so equality of ids is lm-eval's string equality after
    normalisation. A candidate is valid (it votes) when the extractor found something."""

    def f() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not _has_ref(table).any():  # every answer is INVALID, no row has a reference
            m = int(_cands_arrow(table)[1][-1])
            return np.zeros(m, dtype=np.int64), np.full(table.num_rows, -2, dtype=np.int64), np.zeros(m, dtype=bool)
        answers = _answers_arrow(table, mode)
        # normalise each distinct answer once; one dictionary over normalised answers and references
        enc = answers.dictionary_encode()
        k = len(enc.dictionary)
        both = pa.concat_arrays([exact_match_norm_arrow(enc.dictionary), _refs(table)]).dictionary_encode()
        both_ids = np.asarray(both.indices.fill_null(-2).to_numpy(zero_copy_only=False), dtype=np.int64)
        idx = np.asarray(enc.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
        ans = both_ids[:k][idx] if k else np.zeros(0, dtype=np.int64)
        ref = both_ids[k:]
        valid = np.asarray(pc.not_equal(answers, INVALID).to_numpy(zero_copy_only=False), dtype=bool)
        return ans, ref, valid

    return memo(table, f"gen:ids:{mode}", f)


def _correct(table: pa.Table, mode: str) -> np.ndarray:
    """Per flat candidate: 1.0 correct, 0.0 wrong, NaN when the row has no reference."""

    def f() -> np.ndarray:
        ans, ref, _ = _ids(table, mode)
        _, off = _cands_arrow(table)
        rref = ref[np.repeat(np.arange(len(ref)), np.diff(off))]
        out = (ans == rref).astype(np.float64)
        out[rref == -2] = np.nan
        return out

    return memo(table, f"gen:correct:{mode}", f)


def _first(table: pa.Table, flat: np.ndarray) -> np.ndarray:
    _, off = _cands_arrow(table)
    n = np.diff(off)
    out = np.full(len(n), np.nan)
    ok = n > 0
    out[ok] = flat[off[:-1][ok]]
    return out


def _exact_match(table: pa.Table, mode: str) -> dict[str, Any]:
    corr = _correct(table, mode)
    _, off = _cands_arrow(table)
    first = off[:-1]
    first_ans = _answers_arrow(table, mode).take(pa.array(first, mask=np.diff(off) == 0))
    per_cand = pa.ListArray.from_arrays(pa.array(off, pa.int32()), float_array(corr))
    return {"value": _first(table, corr), "answer": pa.array(first_ans, pa.string()), "per_candidate": per_cand}


@metric("exact_match_strict", version=1, request_type="generate", columns=_GEN,
        description="lm-eval GSM8K strict-match ('#### N') exact match of candidate 0",
        lm_eval_key="exact_match,strict-match")
def exact_match_strict(table: pa.Table) -> dict[str, Any]:
    return _exact_match(table, "strict")


@metric("exact_match_flexible", version=1, request_type="generate", columns=_GEN,
        description="lm-eval GSM8K flexible-extract (last number) exact match of candidate 0",
        lm_eval_key="exact_match,flexible-extract")
def exact_match_flexible(table: pa.Table) -> dict[str, Any]:
    return _exact_match(table, "flexible")


def _vote(table: pa.Table, mode: str, k: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(majority-is-correct per row, index of the first candidate holding the majority answer).

    Votes are counted per (row, normalised answer) among the first k valid candidates; the winner is the
    answer with the most votes, ties going to the answer seen first (``Counter.most_common`` order)."""
    value, chosen = memo(table, f"gen:vote:{mode}:{k}", lambda: _vote_arrays(table, mode, k))
    return value.copy(), chosen.copy()


def _vote_arrays(table: pa.Table, mode: str, k: int | None) -> tuple[np.ndarray, np.ndarray]:
    ans, ref, valid = _ids(table, mode)
    _, off = _cands_arrow(table)
    n = np.diff(off)
    rid = np.repeat(np.arange(len(n)), n)
    pos = np.arange(len(ans)) - np.repeat(off[:-1], n)
    voting = valid & ((pos < k) if k else True)
    counts = np.full(len(ans), -1.0)
    if voting.any():
        key = rid[voting] * (int(ans.max()) + 1) + ans[voting]
        _, inv, cnt = np.unique(key, return_inverse=True, return_counts=True)
        counts[voting] = cnt[inv]
    win = segment_argmax(counts, off)
    value = np.full(len(n), np.nan)
    chosen = np.full(len(n), -1, dtype=np.int64)
    applies = (ref != -2) & (n > 0) & ((n >= k) if k else True)
    has_vote = applies & (win >= 0)
    has_vote[has_vote] &= counts[off[:-1][has_vote] + win[has_vote]] > 0
    value[applies] = 0.0
    flat_win = off[:-1][has_vote] + win[has_vote]
    value[has_vote] = (ans[flat_win] == ref[has_vote]).astype(np.float64)
    chosen[has_vote] = win[has_vote]
    return value, chosen


@metric("maj_at_n", version=1, request_type="generate", columns=_GEN,
        description="majority vote over all candidates (param k: the first k only, e.g. --metric maj_at_n:k=4 -> maj_at_4)")
def maj_at_k(table: pa.Table, k: int | None = None, extract: str = "flexible") -> dict[str, Any]:
    value, chosen = _vote(table, extract, k)
    return {"value": value, "selected": chosen}


def pass_at_k_estimate(n: int, c: int, k: int) -> float:
    """Chen et al. (2021): 1 - C(n-c, k)/C(n, k), computed stably as 1 - prod_{i=n-c+1}^{n} (1 - k/i)."""
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


@metric("pass_at_1", version=1, request_type="generate", columns=_GEN,
        description="unbiased pass@1 over the candidates (Chen et al.)", params={"k": 1})
@metric("pass_at_k", version=1, request_type="generate", columns=_GEN,
        description="unbiased pass@k (Chen et al.); param k, e.g. --metric pass_at_k:k=8", required_params=("k",))
def pass_at_k(table: pa.Table, k: int = 1, extract: str = "flexible") -> dict[str, Any]:
    corr = _correct(table, extract)
    _, off = _cands_arrow(table)
    n = np.diff(off)
    value = np.full(len(n), np.nan)
    c = np.zeros(len(n))
    ok = n > 0
    if ok.any():
        c[ok] = np.add.reduceat(np.nan_to_num(corr), off[:-1][ok])
    has_ref = _ids(table, extract)[1] != -2
    rows = ok & has_ref & (n >= k)
    if rows.any():
        nc = c[rows].astype(np.int64)
        base = int(nc.max()) + 1
        uniq, inv = np.unique(n[rows] * base + nc, return_inverse=True)  # one key per (n, c) pair
        est = np.array([pass_at_k_estimate(int(u // base), int(u % base), int(k)) for u in uniq.tolist()])
        value[rows] = est[np.asarray(inv).reshape(-1)]
    return {"value": value, "n_correct": c, "n_candidates": n.astype(np.float64)}


# -- best of n ----------------------------------------------------------------------------------------
def _cand_logprob_stats(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(sum, mean) logprob per flat candidate; mean is -inf for an empty candidate, NaN when missing."""

    def f() -> tuple[np.ndarray, np.ndarray]:
        outer = table.column("cand_logprobs").combine_chunks()
        _, off = _cands_arrow(table)
        if outer.null_count:
            outer = pc.fill_null(outer, pa.scalar([], type=outer.type))
        inner = outer.values.slice(outer.offsets[0].as_py(), outer.offsets[-1].as_py() - outer.offsets[0].as_py())
        vals, ioff, inull = flat_list(inner, dtype=None)
        n = np.diff(ioff)
        s = segment_sums(vals, ioff)
        ne = n > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(ne, s / np.maximum(n, 1), -np.inf)
        s[inull] = np.nan
        mean[inull] = np.nan
        if len(s) != off[-1]:  # logprobs missing for some rows: no selection possible there
            return np.full(off[-1], np.nan), np.full(off[-1], np.nan)
        return s, mean

    return memo(table, "gen:lpstats", f)


@lru_cache(maxsize=1 << 18)
def _sample_seed(seed: int, sample_id: str) -> int:
    return derive_seed(seed, sample_id, 0)  # the same prompts recur across checkpoints and seeds


register_cache(_sample_seed.cache_clear)


def _random_index(table: pa.Table, seed: int) -> np.ndarray:
    def f() -> np.ndarray:
        _, off = _cands_arrow(table)
        n = np.diff(off)
        out = np.full(len(n), -1, dtype=np.int64)
        rows = np.flatnonzero(_has_ref(table) & (n > 0))
        sids = table.column("sample_id").take(pa.array(rows)).to_pylist()
        seeds = np.fromiter((_sample_seed(seed, sid) for sid in sids), dtype=np.int64, count=len(rows))
        out[rows] = seeds % n[rows]  # seeds are non-negative 63-bit integers
        return out

    return memo(table, f"gen:random:{seed}", f)


def _select(table: pa.Table, strategy: str, extract: str, seed: int, scores: np.ndarray | None) -> dict[str, Any]:
    if strategy == "majority":
        value, chosen = _vote(table, extract, None)
        return {"value": value, "selected": chosen}
    _, off = _cands_arrow(table)
    n = np.diff(off)
    applies = _has_ref(table) & (n > 0)
    value = np.full(len(n), np.nan)
    chosen = np.full(len(n), -1, dtype=np.int64)
    if not applies.any() and strategy in _BON:  # e.g. SFT prompts: no reference answers
        return {"value": value, "selected": chosen}
    corr = _correct(table, extract)
    if strategy == "oracle":
        if applies.any():
            best = np.maximum.reduceat(np.nan_to_num(corr), off[:-1][applies])
            value[applies] = (best > 0).astype(np.float64)
        return {"value": value, "selected": chosen}
    if strategy == "first":
        idx = np.zeros(len(n), dtype=np.int64)
    elif strategy == "random":
        idx = _random_index(table, seed)
    else:
        if strategy in ("max_mean_logprob", "max_sum_logprob"):
            s, mean = _cand_logprob_stats(table)
            key = mean if strategy == "max_mean_logprob" else s
        else:
            assert scores is not None
            key = scores
        nan = np.isnan(key)
        idx = segment_argmax(np.where(nan, -np.inf, key), off)
        all_nan = np.ones(len(n), dtype=bool)
        if applies.any():
            all_nan[applies] = np.logical_and.reduceat(nan, off[:-1][applies])
        applies = applies & ~all_nan
    chosen[applies] = idx[applies]
    value[applies] = corr[off[:-1][applies] + idx[applies]]
    return {"value": value, "selected": chosen}


def best_of_n(table: pa.Table, strategy: str = "first", extract: str = "flexible", seed: int = 0,
              file: str | None = None, unit: UnitInfo | None = None) -> dict[str, Any]:
    scores = None
    if strategy == "reranker":
        from rescore.score.rerank import reranker_scores

        if not file:
            raise ValueError("the reranker strategy needs a scores file (param 'file')")
        scores = reranker_scores(file, table, _cands_arrow(table)[1], unit)
    return _select(table, strategy, extract, seed, scores)


def _reranker_fingerprint(kw: dict[str, Any]) -> Any:
    from rescore.score.rerank import file_fingerprint

    return file_fingerprint(kw.get("file"))


best_of_n.param_fingerprint = _reranker_fingerprint  # type: ignore[attr-defined]


# -- math equivalence ---------------------------------------------------------------------------------
def _math_verify_missing() -> str | None:
    if importlib.util.find_spec("math_verify") is None:
        return "needs the optional package math-verify (pip install math-verify)"
    return None


@metric("math_equiv", version=1, request_type="generate", columns=_GEN,
        description="math-verify equivalence of candidate 0 with the reference answer (optional math-verify)",
        available=_math_verify_missing)
def math_equiv(table: pa.Table) -> dict[str, Any]:
    from math_verify import parse, verify  # optional dependency, imported only when the metric runs

    flat, off = _cands(table)
    targets = pylist(table, "target") if "target" in table.column_names else [None] * table.num_rows
    ms = metas(table)
    value = np.full(table.num_rows, np.nan)
    for r in range(table.num_rows):
        ans = ms[r].get("answer")
        if ans is None and targets[r] is not None:
            ans = str(targets[r]).split("####")[-1].strip()
        if ans is None or off[r + 1] == off[r]:
            continue
        try:
            gold = parse(str(ans))
            pred = parse(flat[off[r]])
            value[r] = float(bool(verify(gold, pred)))
        except Exception:  # math-verify raises on unparsable input; that is a wrong answer
            value[r] = 0.0
    return {"value": value}


_BON = {
    "first": "candidate 0",
    "random": "a seeded random candidate per sample (param seed)",
    "oracle": "correct if any candidate is correct",
    "max_mean_logprob": "the candidate with the highest mean token logprob",
    "max_sum_logprob": "the candidate with the highest summed token logprob",
    "majority": "the majority-vote answer",
    "reranker": "the candidate with the highest external reranker score (param file: CSV/JSONL of sample_id, candidate, score)",
}
for _strategy, _desc in _BON.items():
    metric(f"bon_{_strategy}", version=1, request_type="generate",
           columns=_GEN + (("cand_logprobs",) if "logprob" in _strategy else ()),
           description=f"best-of-n selection: {_desc}", params={"strategy": _strategy},
           required_params=("file",) if _strategy == "reranker" else (), needs_unit=_strategy == "reranker")(best_of_n)

__all__ = ["pass_at_k_estimate", "best_of_n", "maj_at_k", "pass_at_k", "math_equiv", "INVALID"]

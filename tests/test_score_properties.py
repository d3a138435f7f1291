"""Invariants of the scorer (hypothesis): values in range, row order does not matter, shards aggregate
to the whole, and the fast GSM8K extractors agree with lm-eval's RegexFilter on arbitrary text."""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from rescore.artifacts.schema import schema_for
from rescore.score.engine import aggregate_rows
from rescore.score.extract import flexible_extract, strict_extract
from rescore.score.metrics_answer import pass_at_k_estimate
from rescore.score.registry import load_builtin
from rescore.score.spec import UnitInfo, aggregators, metrics

load_builtin()
SETTINGS = settings(max_examples=60, deadline=None)

# text drawn mostly from the characters the GSM8K patterns care about
gsm_text = st.text(alphabet=st.sampled_from(list("0123456789-$.,# \nabc٤é")), max_size=40)


@SETTINGS
@given(gsm_text)
def test_extractors_match_lm_eval_regex_filter(text: str) -> None:
    from lm_eval.filters.extraction import RegexFilter

    strict = RegexFilter(regex_pattern=r"#### (\-?[0-9\.\,]+)", group_select=0)
    flexible = RegexFilter(regex_pattern=r"(-?[$0-9.,]{2,})|(-?[0-9]+)", group_select=-1)
    assert strict_extract(text) == list(strict.apply([[text]], [{}]))[0][0]
    assert flexible_extract(text) == list(flexible.apply([[text]], [{}]))[0][0]


@SETTINGS
@given(st.lists(gsm_text, min_size=1, max_size=20))
def test_vectorised_strict_extraction_matches_python(texts) -> None:
    from rescore.score.metrics_answer import _strict_vectorised

    off = np.arange(len(texts) + 1)
    assert _strict_vectorised(texts, [True] * len(texts), off) == [strict_extract(t) for t in texts]


mc_row = st.integers(min_value=1, max_value=6).flatmap(lambda k: st.tuples(
    st.lists(st.floats(min_value=-50, max_value=0, allow_nan=False), min_size=k, max_size=k),
    st.integers(min_value=0, max_value=k - 1),
    st.lists(st.integers(min_value=1, max_value=30), min_size=k, max_size=k),
))


def mc_table(rows: list[tuple[list[float], int, list[int]]]) -> pa.Table:
    schema = schema_for("loglikelihood")
    data = [{"sample_id": f"{i:05d}", "choice_sum_logprob": lls, "gold": g, "choice_n_chars": [n + 1 for n in lens],
             "choice_n_tokens": lens, "choice_n_bytes": [n + 1 for n in lens], "choices": [" " + "x" * n for n in lens]}
            for i, (lls, g, lens) in enumerate(rows)]
    names = ["sample_id", "choice_sum_logprob", "gold", "choice_n_chars", "choice_n_tokens", "choice_n_bytes", "choices"]
    return pa.Table.from_pylist(data, schema=pa.schema([schema.field(n) for n in names]))


RANGES = {"acc": (0, 1), "acc_norm": (0, 1), "acc_bytes": (0, 1), "acc_norm_tokens": (0, 1),
          "brier_score": (0, 2), "ece": (0, 1)}


def _agg(name: str, table: pa.Table) -> dict:
    spec = metrics.get(name)
    cols = spec.compute(table, UnitInfo("p", {}))
    return aggregate_rows(spec, cols, {"all": None})["all"]


@SETTINGS
@given(st.lists(mc_row, min_size=2, max_size=25), st.randoms(use_true_random=False))
def test_choice_metrics_range_and_row_order(rows, rnd) -> None:
    table = mc_table(rows)
    perm = list(range(len(rows)))
    rnd.shuffle(perm)
    shuffled = table.take(pa.array(perm))
    for name, (lo, hi) in RANGES.items():
        spec = metrics.get(name)
        vals = np.asarray(spec.compute(table, UnitInfo("p", {}))["value"])
        if name == "ece":
            vals = np.abs(vals)
        assert np.all((vals >= lo - 1e-12) & (vals <= hi + 1e-12)), name
        a, b = _agg(name, table), _agg(name, shuffled)
        assert math.isclose(a["value"], b["value"], rel_tol=1e-9, abs_tol=1e-12), name
        assert lo - 1e-12 <= a["value"] <= hi + 1e-12, name


rolling_row = st.tuples(st.floats(min_value=-500, max_value=0, allow_nan=False), st.integers(1, 400),
                        st.integers(1, 2000), st.integers(1, 300))


def rolling_table(rows) -> pa.Table:
    schema = schema_for("rolling")
    names = ["sample_id", "sum_logprob", "n_tokens", "n_bytes", "n_words", "category"]
    data = [{"sample_id": f"{i:05d}", "sum_logprob": s, "n_tokens": t, "n_bytes": b, "n_words": w,
             "category": "ab"[i % 2]} for i, (s, t, b, w) in enumerate(rows)]
    return pa.Table.from_pylist(data, schema=pa.schema([schema.field(n) for n in names]))


@SETTINGS
@given(st.lists(rolling_row, min_size=2, max_size=30), st.integers(min_value=1, max_value=29))
def test_rolling_shards_aggregate_to_the_whole(rows, cut) -> None:
    cut = min(cut, len(rows) - 1)
    table = rolling_table(rows)
    for name in ("token_perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte", "tokens"):
        spec = metrics.get(name)
        agg = aggregators.get(spec.aggregator)
        whole = spec.compute(table, None)
        parts = [spec.compute(table.slice(0, cut), None), spec.compute(table.slice(cut), None)]
        needs = agg.needs

        def cols(c, needs=needs):  # noqa: ANN001, ANN202
            return {k: np.asarray(v, dtype=np.float64) for k, v in c.items() if k in needs}

        a = agg(cols(whole), spec.agg_kw)
        b = agg.combine([cols(p) for p in parts], spec.agg_kw)
        assert math.isclose(a.value, b.value, rel_tol=1e-9), name
        if a.stderr is not None:
            assert math.isclose(a.stderr, b.stderr, rel_tol=1e-6, abs_tol=1e-12), name
        if name != "tokens":
            assert a.value >= (1.0 if "perplexity" in name else 0.0) - 1e-12


@SETTINGS
@given(st.lists(st.floats(min_value=-1e3, max_value=1e3, allow_nan=False), min_size=2, max_size=40),
       st.integers(min_value=1, max_value=39))
def test_mean_shards_aggregate_to_the_whole(values, cut) -> None:
    cut = min(cut, len(values) - 1)
    v = np.asarray(values)
    agg = aggregators.get("mean")
    a = agg({"value": v})
    b = agg.combine([{"value": v[:cut]}, {"value": v[cut:]}])
    assert math.isclose(a.value, b.value, rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(a.stderr, b.stderr, rel_tol=1e-6, abs_tol=1e-9)


@SETTINGS
@given(st.lists(st.booleans(), min_size=2, max_size=60), st.integers(min_value=1, max_value=59))
def test_accuracy_confidence_interval_is_wilson_within_0_and_1(values, cut) -> None:
    cut = min(cut, len(values) - 1)
    v = np.asarray(values, dtype=np.float64)
    agg = aggregators.get("mean")
    whole = agg({"value": v})
    shards = agg.combine([{"value": v[:cut]}, {"value": v[cut:]}])
    p, n, z = v.mean(), len(v), 1.959963984540054
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    for a in (whole, shards):
        assert 0.0 <= a.ci_low <= a.value <= a.ci_high <= 1.0
        assert math.isclose(a.ci_low, max(center - half, 0.0), abs_tol=1e-12)
        assert math.isclose(a.ci_high, min(center + half, 1.0), abs_tol=1e-12)
        assert (a.ci_low == 0.0) == (p == 0.0) and (a.ci_high == 1.0) == (p == 1.0)
    # one value that is neither 0 nor 1 (nor non-negative) anywhere: the normal interval again
    w = np.append(v, -0.5)
    b = agg.combine([{"value": w[:cut]}, {"value": w[cut:]}])
    assert math.isclose(b.ci_low, b.value - z * b.stderr, rel_tol=1e-9, abs_tol=1e-12)


def test_accuracy_interval_near_zero_does_not_go_below_it() -> None:
    a = aggregators.get("mean")({"value": np.array([1.0] + [0.0] * 19)})
    assert a.value == 0.05 and a.value - 1.959963984540054 * a.stderr < 0  # the normal interval would
    assert (round(a.ci_low, 4), round(a.ci_high, 4)) == (0.0089, 0.2361)


@SETTINGS
@given(st.lists(st.tuples(st.floats(0, 1), st.booleans()), min_size=2, max_size=40), st.integers(1, 39))
def test_ece_shards_and_range(rows, cut) -> None:
    cut = min(cut, len(rows) - 1)
    conf = np.array([c for c, _ in rows])
    corr = np.array([float(k) for _, k in rows])
    agg = aggregators.get("ece")
    whole = agg({"conf": conf, "correct": corr}, {"n_bins": 10})
    parts = agg.combine([{"conf": conf[:cut], "correct": corr[:cut]}, {"conf": conf[cut:], "correct": corr[cut:]}],
                        {"n_bins": 10})
    assert math.isclose(whole.value, parts.value, rel_tol=1e-9, abs_tol=1e-12)
    assert 0.0 <= whole.value <= 1.0


@SETTINGS
@given(st.integers(1, 12).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_matches_combinatorics(nck) -> None:
    n, c, k = nck
    # probability that a random k-subset of n candidates contains at least one of the c correct ones
    subsets = list(combinations(range(n), k))
    brute = sum(any(i < c for i in s) for s in subsets) / len(subsets)
    assert math.isclose(pass_at_k_estimate(n, c, k), brute, rel_tol=1e-9, abs_tol=1e-12)


@SETTINGS
@given(st.lists(st.floats(min_value=0, max_value=1), min_size=1, max_size=30), st.randoms(use_true_random=False))
def test_bootstrap_is_row_order_invariant(values, rnd) -> None:
    v = list(values)
    w = list(values)
    rnd.shuffle(w)
    agg = aggregators.get("bootstrap")
    a, b = agg({"value": np.array(v)}, {"iters": 30}), agg({"value": np.array(w)}, {"iters": 30})
    assert a.as_dict() == b.as_dict() or all(
        (x is None and y is None) or math.isclose(x, y, rel_tol=1e-12, abs_tol=1e-12)
        for x, y in zip(a.as_dict().values(), b.as_dict().values(), strict=True))


gen_row = st.lists(st.sampled_from(["#### 5", "#### 4", "The answer is 5.", "", "no idea", "#### 1,000"]),
                   min_size=1, max_size=6)


@SETTINGS
@given(st.lists(gen_row, min_size=1, max_size=12), st.randoms(use_true_random=False))
def test_answer_metrics_range_and_row_order(rows, rnd) -> None:
    schema = schema_for("generate")
    data = [{"sample_id": f"{i:04d}", "candidates": c, "target": "#### 5",
             "cand_logprobs": [[-0.1 * (j + 1)] * (j + 1) for j in range(len(c))]} for i, c in enumerate(rows)]
    names = ["sample_id", "candidates", "target", "cand_logprobs"]
    table = pa.Table.from_pylist(data, schema=pa.schema([schema.field(n) for n in names]))
    perm = list(range(len(rows)))
    rnd.shuffle(perm)
    shuffled = table.take(pa.array(perm))
    for name in ("exact_match_strict", "exact_match_flexible", "maj_at_n", "pass_at_1", "bon_first", "bon_random",
                 "bon_oracle", "bon_max_mean_logprob", "bon_max_sum_logprob", "bon_majority"):
        a, b = _agg(name, table), _agg(name, shuffled)
        assert 0.0 <= a["value"] <= 1.0, name
        assert math.isclose(a["value"], b["value"], abs_tol=1e-12), name
    # the oracle is an upper bound of every selection strategy
    oracle = _agg("bon_oracle", table)["value"]
    for name in ("bon_first", "bon_random", "bon_majority", "bon_max_mean_logprob"):
        assert _agg(name, table)["value"] <= oracle + 1e-12


def _reference_row(cands: list[str], lps: list[list[float]], mode: str, ref: str = "5") -> dict[str, float]:
    """Plain-Python reference of the per-row answer metrics (lm-eval normalisation, Counter voting)."""
    from collections import Counter

    from rescore.score.extract import INVALID, exact_match_norm

    ex = flexible_extract if mode == "flexible" else strict_extract
    answers = [ex(c) for c in cands]
    correct = [exact_match_norm(a) == ref for a in answers]
    votes = Counter(exact_match_norm(a) for a in answers if a != INVALID)
    maj = float(votes.most_common(1)[0][0] == ref) if votes else 0.0
    means = [sum(x) / len(x) if x else -math.inf for x in lps]
    sums = [sum(x) for x in lps]
    return {"maj_at_n": maj, "bon_first": float(correct[0]), "bon_oracle": float(any(correct)),
            "bon_max_mean_logprob": float(correct[int(np.argmax(means))]),
            "bon_max_sum_logprob": float(correct[int(np.argmax(sums))]),
            "pass_at_1": sum(correct) / len(correct)}


@SETTINGS
@given(st.lists(st.lists(st.tuples(st.sampled_from(["#### 5", "#### 4", "5.", "$5", "", "x", "#### 1,000", "4"]),
                                   st.lists(st.sampled_from([-0.5, -1.0, -0.25]), max_size=3)),
                         min_size=1, max_size=6), min_size=1, max_size=10))
def test_vectorised_answer_metrics_match_a_plain_reference(rows) -> None:
    schema = schema_for("generate")
    data = [{"sample_id": f"{i:04d}", "candidates": [c for c, _ in r], "target": "#### 5",
             "cand_logprobs": [lp for _, lp in r]} for i, r in enumerate(rows)]
    names = ["sample_id", "candidates", "target", "cand_logprobs"]
    table = pa.Table.from_pylist(data, schema=pa.schema([schema.field(n) for n in names]))
    refs = [_reference_row([c for c, _ in r], [lp for _, lp in r], "flexible") for r in rows]
    for name in refs[0]:
        got = np.asarray(metrics.get(name).compute(table, UnitInfo("p", {}))["value"])
        want = np.array([x[name] for x in refs])
        assert np.allclose(got, want), (name, got, want)


@SETTINGS
@given(st.lists(st.lists(st.sampled_from([-1.0, -2.0, 0.0, -np.inf, np.nan, -0.5]), max_size=5), min_size=1,
                max_size=20), st.booleans())
def test_segment_argmax_and_softmax_match_numpy_per_row(rows, uniform) -> None:
    from rescore.score.columns import segment_argmax, segment_softmax

    if uniform:
        rows = [(r + [-3.0] * 4)[:4] for r in rows]
    off = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    flat = np.array([x for r in rows for x in r], dtype=np.float64)
    got = segment_argmax(flat, off)
    with np.errstate(invalid="ignore", over="ignore"):
        sm = segment_softmax(flat, off)
        for i, r in enumerate(rows):
            assert got[i] == (int(np.argmax(r)) if r else -1)
            if r:
                x = np.array(r)
                e = np.exp(x - np.max(x))
                np.testing.assert_allclose(sm[off[i]:off[i + 1]], e / e.sum(), equal_nan=True)


@SETTINGS
@given(st.lists(st.lists(st.floats(-50, 0, width=32), max_size=9), max_size=30), st.integers(1, 12))
def test_segment_sums_equal_reduceat_in_float64_for_any_block_size(rows, block) -> None:
    from rescore.score.columns import segment_sums

    off = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    flat = np.array([x for r in rows for x in r], dtype=np.float32)
    got = segment_sums(flat, off, block=block)
    want = np.zeros(len(rows))  # what the scorer computed before: one reduceat over everything, cast in numpy
    ne = np.diff(off) > 0
    if ne.any():
        want[ne] = np.add.reduceat(flat, off[:-1][ne], dtype=np.float64)
    assert got.dtype == np.float64 and np.array_equal(got, want)  # same summation order: same bits
    assert np.allclose(got, [math.fsum(r) for r in rows], rtol=1e-12, atol=1e-9)


@SETTINGS
@given(st.lists(st.tuples(st.lists(st.floats(-30, 0), min_size=1, max_size=5), st.integers(-1, 5)), min_size=1,
                max_size=20))
def test_brier_score_is_the_per_row_sum_of_squares(rows) -> None:
    schema = schema_for("loglikelihood")
    table = pa.Table.from_pylist([{"sample_id": f"{i:04d}", "choice_sum_logprob": lls, "gold": g}
                                  for i, (lls, g) in enumerate(rows)],
                                 schema=pa.schema([schema.field(n) for n in ("sample_id", "choice_sum_logprob", "gold")]))
    got = np.asarray(metrics.get("brier_score").compute(table, UnitInfo("p", {}))["value"])
    for i, (lls, g) in enumerate(rows):
        if not 0 <= g < len(lls):
            assert np.isnan(got[i])
            continue
        x = np.array(lls)
        p = np.exp(x - x.max())
        p /= p.sum()
        assert math.isclose(got[i], float(((p - (np.arange(len(lls)) == g)) ** 2).sum()), rel_tol=1e-12, abs_tol=1e-15)


@SETTINGS
@given(st.lists(st.tuples(gsm_text, st.text(alphabet=st.sampled_from(list("0123456789,.$-# \nAbÉ")), max_size=20)),
                min_size=1, max_size=15))
def test_exact_match_matches_lm_eval(pairs) -> None:
    """Extraction + lm-eval's exact_match normalisation, against lm-eval's own functions."""
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter

    schema = schema_for("generate")
    table = pa.Table.from_pylist([{"sample_id": f"{i:04d}", "candidates": [g], "target": "x #### " + r}
                                  for i, (g, r) in enumerate(pairs)],
                                 schema=pa.schema([schema.field(n) for n in ("sample_id", "candidates", "target")]))
    for metric, pattern, group in (("exact_match_strict", r"#### (\-?[0-9\.\,]+)", 0),
                                   ("exact_match_flexible", r"(-?[$0-9.,]{2,})|(-?[0-9]+)", -1)):
        filt = RegexFilter(regex_pattern=pattern, group_select=group)
        want = []
        for g, r in pairs:
            pred = list(filt.apply([[g]], [{}]))[0][0]
            want.append(exact_match_hf_evaluate([pred], ["x #### " + r], regexes_to_ignore=[",", "\\$", "(?s).*#### ", "\\.$"],
                                                ignore_case=True, ignore_punctuation=False)["exact_match"])
        got = metrics.get(metric).compute(table, UnitInfo("p", {}))["value"].tolist()
        assert got == want, metric


@SETTINGS
@given(st.lists(st.floats(0, 2), min_size=2, max_size=30), st.integers(1, 29))
def test_a_mean_of_non_negative_values_has_no_negative_ci(values, cut) -> None:
    cut = min(cut, len(values) - 1)
    v = np.asarray(values)
    agg = aggregators.get("mean")
    for a in (agg({"value": v}), agg.combine([{"value": v[:cut]}, {"value": v[cut:]}])):
        assert a.ci_low >= 0.0 and a.ci_high >= a.value
        if not set(values) <= {0.0, 1.0}:
            assert math.isclose(a.ci_high, a.value + 1.959963984540054 * a.stderr, rel_tol=1e-9, abs_tol=1e-12)
            assert math.isclose(a.ci_low, max(0.0, a.value - 1.959963984540054 * a.stderr), rel_tol=1e-9, abs_tol=1e-12)

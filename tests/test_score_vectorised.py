"""The column-at-a-time (Arrow) scorer paths against the per-text Python functions they replace: the same
results on arbitrary text, including non-ASCII text, Unicode whitespace and malformed check parameters."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from rescore.artifacts.schema import schema_for
from rescore.score import checks as ck
from rescore.score.extract import (
    exact_match_norm,
    exact_match_norm_arrow,
    flexible_extract,
    reverse_strings,
    strict_extract,
)
from rescore.score.metrics_answer import extract_arrow
from rescore.score.registry import load_builtin
from rescore.score.spec import UnitInfo, metrics

load_builtin()
SETTINGS = settings(max_examples=80, deadline=None)

# characters the checks and extractors care about, plus non-ASCII ones whose lower-casing or whitespace
# class differs between Python and Arrow
CHARS = list("-*• \t\n\r\x0b\x1c\x85\xa0\u2003\u3000abcXYZ.!?:|<>/[]#$,0123456789{}\"'’İΣKſé٤") + [
    "user:", "Assistant:", "<|", "|>", "[INST]", "</s>", "<s>", "I can't", "I CANNOT", "sorry", "i won’t", "#### ",
    "```python\n", "```", "def f(x):\n    return x\n", "1. ", "2) ", "- ", "* ", "• ", '{"name": 1}', "[1, 2]"]
text = st.lists(st.sampled_from(CHARS), max_size=14).map("".join)


def test_python_whitespace_is_str_isspace() -> None:
    assert ck.PY_WHITESPACE == "".join(chr(c) for c in range(0x110000) if chr(c).isspace())


@SETTINGS
@given(st.lists(text, max_size=12))
def test_text_features_match_python(texts: list[str]) -> None:
    arr = pa.array(texts, pa.string())
    assert ck.bullet_counts(arr).tolist() == [len(ck._BULLET.findall(t)) for t in texts]
    assert ck.word_counts(arr).tolist() == [ck.words(t) for t in texts]
    assert ck.nonblank(arr).tolist() == [bool(t.strip()) for t in texts]
    assert ck.role_leaks(arr).tolist() == [not ck.no_role_leak(t) for t in texts]
    assert ck.refusals(arr).tolist() == [ck.refusal(t, True) for t in texts]
    assert reverse_strings(arr).to_pylist() == [t[::-1] for t in texts]


gsm_text = st.lists(st.sampled_from(list("0123456789-$.,# \nabcé٤€") + ["#### ", "####"]), max_size=16).map("".join)


@SETTINGS
@given(st.lists(gsm_text, max_size=12))
def test_arrow_extraction_matches_python(texts: list[str]) -> None:
    arr = pa.array(texts, pa.string())
    assert extract_arrow(arr, "strict").to_pylist() == [strict_extract(t) for t in texts]
    assert extract_arrow(arr, "flexible").to_pylist() == [flexible_extract(t) for t in texts]


norm_text = st.lists(st.sampled_from(list("0123456789,.$-# \n\x00aAbZ") + ["#### ", "İ", "Σ", "ΑΣ ", "é", "K"]),
                     max_size=12).map("".join)


@SETTINGS
@given(st.lists(st.one_of(st.none(), norm_text), max_size=12))
def test_arrow_normalisation_matches_python(texts: list[str | None]) -> None:
    got = exact_match_norm_arrow(pa.array(texts, pa.string())).to_pylist()
    assert got == [None if t is None else exact_match_norm(t) for t in texts]


# -- SFT metrics against a row-by-row reference (run_checks on candidate 0, as the checks are defined) --
CHECK_VALUES = {
    "bullets": [{"count": 2}, {"count": 0}, 1, {"cnt": 2}, {"count": "x"}, {"count": 2**64 - 1}, False, None],
    "numbered": [{"count": 2}, 1, {"count": "2"}],
    "json": [{"required_keys": ["name"], "kind": "object"}, {"kind": "array"}, True, {"kind": 3}],
    "python_parses": [True, False],
    "max_words": [1, 3, "x", [1], 2**64 - 1, -(2**63), True],
    "min_words": [0, 2, "2"],
    "max_sentences": [1, 2],
    "contains": [["a"], "x", ["A", "b"]],
    "not_contains": [["sorry"]],
    "starts_with": ["a", "- "],
    "ends_with": ["."],
    "lowercase": [True],
    "uppercase": [True],
    "one_line": [True, None],
    "refusal": [True, 0],
    "no_role_leak": [True, "yes"],
    "sparkle": [True],
}
checks_dict = st.lists(st.sampled_from(sorted(CHECK_VALUES)), max_size=4, unique=True).flatmap(
    lambda names: st.tuples(*[st.sampled_from(CHECK_VALUES[n]) for n in names]).map(
        lambda vals, names=names: dict(zip(names, vals, strict=True))))
CATEGORIES = [None, "format_following", "strict_json", "python_code", "instruction_priority", "chat_clean", "concise"]
sft_row = st.tuples(st.lists(text, max_size=2), st.one_of(st.none(), checks_dict), st.sampled_from(CATEGORIES),
                    st.booleans())


def _reference(rows: list[tuple[list[str], dict | None, str | None, bool]]) -> dict[str, list]:
    out: dict[str, list] = {k: [] for k in ("instruction_match_rate", "all_checks_pass_rate", "format_valid_rate",
                                            "chat_clean_rate", "code_parse_rate", "json_valid_rate", "concise_rate",
                                            "checks")}
    nan = math.nan
    for cands, checks, cat, _ in rows:
        c = checks if isinstance(checks, dict) and checks else None
        t = cands[0] if cands else None
        r = None if c is None or t is None else ck.run_checks(c, t)
        ev = [v for v in r.values() if v is not None] if r is not None else []
        out["instruction_match_rate"].append(sum(ev) / len(ev) if ev else nan)
        out["all_checks_pass_rate"].append(float(all(ev)) if ev else nan)
        out["checks"].append(None if r is None else orjson.dumps(r).decode())
        fev = [v for k, v in (r or {}).items() if k in ck.FORMAT_CHECKS and v is not None]
        out["format_valid_rate"].append(float(all(fev)) if fev else nan)
        out["chat_clean_rate"].append(nan if r is None else float(ck.chat_clean(t)))
        for name, category, check, fn, reuse in (("code_parse_rate", "python_code", "python_parses", ck.python_check, True),
                                                 ("json_valid_rate", "strict_json", "json", ck.json_valid, False)):
            v = nan
            if r is not None and (cat == category or check in c):
                done = r.get(check) if reuse else None
                v = float(done if done is not None else fn(t, c.get(check) or {}))
            out[name].append(v)
        cev = [v for k, v in (r or {}).items() if k in ("max_words", "max_sentences") and v is not None]
        out["concise_rate"].append(float(all(cev)) if cev and cat == "concise" else nan)
    return out


@settings(max_examples=120, deadline=None)
@given(st.lists(sft_row, min_size=1, max_size=14))
def test_sft_metrics_match_run_checks_row_by_row(rows) -> None:
    schema = schema_for("generate")
    data = [{"sample_id": f"{i:04d}", "candidates": cands, "category": cat,
             "meta": None if checks is None and not extra else orjson.dumps(
                 {**({"checks": checks} if checks is not None else {}), **({"answer": "4"} if extra else {})}).decode()}
            for i, (cands, checks, cat, extra) in enumerate(rows)]
    names = ["sample_id", "candidates", "category", "meta"]
    table = pa.Table.from_pylist(data, schema=pa.schema([schema.field(n) for n in names]))
    want = _reference(rows)
    for name, expected in want.items():
        if name == "checks":
            got = metrics.get("all_checks_pass_rate").compute(table, UnitInfo("p", {}))["checks"].to_pylist()
            assert got == expected
            continue
        got = np.asarray(metrics.get(name).compute(table, UnitInfo("p", {}))["value"], dtype=np.float64)
        np.testing.assert_array_equal(got, np.array(expected, dtype=np.float64), err_msg=name)


@SETTINGS
@given(st.lists(st.sampled_from(CHARS + ["true", "null", "-1", "1e5", " {}", "\ufeff", "nul", "[", "]"]), max_size=6)
       .map("".join))
def test_parse_json_rejects_exactly_what_orjson_rejects(s: str) -> None:
    from rescore.score.extract import _NOT_JSON, parse_json

    try:
        want = orjson.loads(s) if s else _NOT_JSON
    except orjson.JSONDecodeError:
        want = _NOT_JSON
    got = parse_json(s)
    assert (got is _NOT_JSON) == (want is _NOT_JSON) and (got is _NOT_JSON or got == want)


def test_check_details_with_many_check_names() -> None:
    """Past ~30 distinct check names the per-row result keys no longer pack into one integer."""
    many = {f"unknown_{i:02d}": True for i in range(35)}
    rows = [(["- a\n- b"], {**many, "bullets": {"count": 2}}, None, False), (["x"], {"max_words": 1}, None, False),
            (["- a"], {**many, "bullets": {"count": 2}}, "concise", False)]
    schema = schema_for("generate")
    table = pa.Table.from_pylist([{"sample_id": f"{i}", "candidates": c, "category": cat, "meta": orjson.dumps({"checks": ch}).decode()}
                                  for i, (c, ch, cat, _) in enumerate(rows)],
                                 schema=pa.schema([schema.field(n) for n in ("sample_id", "candidates", "category", "meta")]))
    got = metrics.get("all_checks_pass_rate").compute(table, UnitInfo("p", {}))
    want = _reference(rows)
    assert got["checks"].to_pylist() == want["checks"]
    np.testing.assert_array_equal(got["value"], np.array(want["all_checks_pass_rate"]))


@SETTINGS
@given(st.lists(st.sampled_from(["x", "print", "value", "_", "match", "case", "type", "not", "is", "in", "if", "else",
                                 "lambda", "await", "yield", "None", "True", "A1", "f", "rb", "a_b", "(", ")", ":",
                                 "=", "\n", "  ", "'s'", "1"]), max_size=6).map(" ".join))
def test_python_parses_matches_ast_parse(code: str) -> None:
    import ast

    from rescore.score.extract import _clear_parses, python_parses

    try:
        ast.parse(code)
        want = True
    except SyntaxError:
        want = False
    _clear_parses()
    assert python_parses(code) is want

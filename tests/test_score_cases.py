"""Metric test cases as data (tests/cases/*.yaml): inputs, parameters, expected values; one test id per case.

GSM8K extractor cases are also checked against lm-evaluation-harness's own RegexFilter, so the expected
values cannot drift from lm-eval's behaviour.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import yaml

from rescore.artifacts.schema import schema_for
from rescore.core import canonical_json
from rescore.score.checks import CHECKS
from rescore.score.engine import aggregate_rows
from rescore.score.registry import load_builtin
from rescore.score.spec import UnitInfo, aggregators, extractors, metrics

CASES = Path(__file__).parent / "cases"
load_builtin()


def _load(kind: str) -> list[Any]:
    out = []
    for path in sorted(CASES.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        if doc.get("kind") != kind:
            continue
        for case in doc["cases"]:
            case = {"request_type": doc.get("request_type"), **case, "_file": path}
            out.append(pytest.param(case, id=f"{path.stem}:{case['id']}"))
    return out


def close(a: Any, b: Any, tol: float = 1e-9) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) and math.isnan(a):
        return b is None or (isinstance(b, float) and math.isnan(b))
    return math.isclose(float(a), float(b), rel_tol=tol, abs_tol=tol)


def as_list(values: Any) -> list[float | None]:
    arr = np.asarray(values, dtype=np.float64)
    return [None if math.isnan(x) else float(x) for x in arr]


def build_table(request_type: str, rows: list[dict[str, Any]]) -> pa.Table:
    schema = schema_for(request_type)
    names = ["sample_id"] + sorted({k for r in rows for k in r} - {"sample_id"})
    fields = [schema.field(n) for n in names]
    data = []
    for i, r in enumerate(rows):
        r = dict(r)
        r.setdefault("sample_id", f"{i:04d}")
        if isinstance(r.get("meta"), dict):
            r["meta"] = canonical_json(r["meta"])
        data.append(r)
    return pa.Table.from_pylist(data, schema=pa.schema(fields))


# -- extractors ---------------------------------------------------------------------------------------
LM_EVAL_FILTERS = {
    "gsm8k_strict": (r"#### (\-?[0-9\.\,]+)", 0),
    "gsm8k_flexible": (r"(-?[$0-9.,]{2,})|(-?[0-9]+)", -1),
}


@pytest.mark.parametrize("case", _load("extract"))
def test_extractor_case(case: dict[str, Any]) -> None:
    ex = extractors.get(case["extractor"])
    if case.get("params"):
        ex = ex.with_params(**case["params"])
    assert ex(case["input"]) == case["expected"]
    if case["extractor"] in LM_EVAL_FILTERS:
        from lm_eval.filters.extraction import RegexFilter

        pattern, group = LM_EVAL_FILTERS[case["extractor"]]
        got = list(RegexFilter(regex_pattern=pattern, group_select=group).apply([[case["input"]]], [{}]))[0][0]
        assert got == case["expected"], "the case disagrees with lm-eval's RegexFilter"


# -- metrics ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", _load("metric"))
def test_metric_case(case: dict[str, Any]) -> None:
    spec = metrics.get(case["metric"])
    params = dict(case.get("params") or {})
    if "file" in params:
        params["file"] = str(case["_file"].parent / params["file"])
    if params:
        spec = spec.with_params(**params)
    table = build_table(case["request_type"], case["rows"])
    cols = spec.compute(table, UnitInfo(run_id="case", manifest=case.get("manifest") or {}))
    if "expected" in case:
        got = as_list(cols["value"])
        assert len(got) == len(case["expected"])
        for g, e in zip(got, case["expected"], strict=True):
            assert close(g, e), f"per-row values {got} != expected {case['expected']}"
    if "per_candidate" in case:
        assert cols["per_candidate"].to_pylist() == case["per_candidate"]
    if "aggregate" in case:
        agg = aggregate_rows(spec, cols, {"all": None}).get("all", {"value": None, "stderr": None, "n": 0})
        for k, v in case["aggregate"].items():
            assert close(agg[k], v), f"aggregate {k}: {agg[k]} != {v}"


# -- checks -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", _load("check"))
def test_check_case(case: dict[str, Any]) -> None:
    assert CHECKS[case["check"]](case["text"], case["params"]) is case["expected"]


# -- aggregators --------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", _load("aggregate"))
def test_aggregate_case(case: dict[str, Any]) -> None:
    agg = aggregators.get(case["aggregator"])
    cols = {k: np.asarray(v, dtype=np.float64) for k, v in case["cols"].items()}
    res = agg(cols, case.get("params") or {}).as_dict()
    for k, v in case["expected"].items():
        assert close(res[k], v), f"{k}: {res[k]} != {v}"


def test_every_builtin_metric_has_a_case() -> None:
    covered = {c.values[0]["metric"] for c in _load("metric")}
    builtin = {n for n in metrics.names() if not n.startswith("lm-eval.")}  # lm-eval.*: registered per store
    missing = builtin - covered - {"math_equiv"}  # math_equiv: optional package, tested apart
    assert not missing, f"metrics without a case file entry: {sorted(missing)}"


def test_every_check_has_a_case() -> None:
    covered = {c.values[0]["check"] for c in _load("check")}
    assert set(CHECKS) <= covered

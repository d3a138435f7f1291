"""Metric parameters are checked against the metric function's annotations (YAML list values included)."""

from __future__ import annotations

import inspect

import pytest

from rescore.errors import ConfigError
from rescore.score import spec
from rescore.score.registry import load_builtin

load_builtin()


def test_a_list_for_an_int_param_is_a_config_error_naming_the_type() -> None:
    m = spec.metrics.get("maj_at_n")
    m.check_param_types({"k": 4})
    m.check_param_types({"k": None, "extract": "strict"})
    for bad in ([1, 2], "4", True, 2.5):
        with pytest.raises(ConfigError, match=r"parameter k=.* should be int \| None"):
            m.check_param_types({"k": bad})


def test_every_builtin_metric_accepts_its_own_defaults() -> None:
    names = spec.metrics.names()
    assert len(names) > 20
    for name in names:
        m = spec.metrics.get(name)
        try:
            sig = inspect.signature(m.fn)
        except (TypeError, ValueError):
            continue
        defaults = {p.name: p.default for p in sig.parameters.values()
                    if p.default is not inspect.Parameter.empty and p.name != "unit"}
        m.check_param_types({**defaults, **m.kw})


def test_score_refuses_a_list_for_an_int_parameter_on_the_command_line(tmp_path) -> None:
    from support import invoke

    store = tmp_path / "store"
    assert invoke("gen", "demo", "--model", "fake", "--store", str(store), "--no-progress", "-t", "gsm8k_chat").exit_code == 0
    r = invoke("score", "--store", str(store), "-M", "maj_at_n:k=[1,2]")
    assert r.exit_code == 2, r.output
    assert "parameter k=[1, 2] should be int | None" in r.output and "Traceback" not in r.output
    assert not (store / "results.parquet").exists()  # refused before anything was scored
    r = invoke("score", "--store", str(store), "-M", "maj_at_n:k=2")
    assert r.exit_code == 0, r.output

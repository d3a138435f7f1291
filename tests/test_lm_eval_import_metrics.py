"""Units imported from an lm-eval --log_samples run get the lm-eval.* metrics of units generated with the
lm_eval family: the installed lm-eval's task recomputes them from the imported rows (filters,
process_results, aggregation), so `rescore compare` lists them for both, with the same names and versions.

Slow tier: lm-eval runs the tiny model over four local tasks (all three request types, a filtered generate
task); the import's lm-eval.* per-row values are lm-eval's own logged per-sample values, and those of
rescore's generation of the same tasks on the same model are equal to them (exactly for accuracies, within
float32 rounding for loglikelihood-valued metrics: lm-eval sums float32 logprobs in float64, rescore stores
its own sums). An imported unit whose task lm-eval does not know here gets one note and no lm-eval.*
metrics; its other metrics are computed.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
from support import gen_lm_eval_tasks, invoke

pytestmark = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None, reason="needs lm-eval (dev extra)")
FIXTURES = Path(__file__).parent / "fixtures" / "lm_eval"
TASKS = ("arc_easy_local", "winogrande_local", "wikitext_local", "gsm8k_local")
EXACT = ("lm-eval.acc", "lm-eval.acc_norm", "lm-eval.acc_bytes", "lm-eval.exact_match.strict-match",
         "lm-eval.exact_match.flexible-extract")


def _make_run() -> Any:
    spec = importlib.util.spec_from_file_location("make_lm_eval_run", FIXTURES / "make_run.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["make_lm_eval_run"] = mod
    spec.loader.exec_module(mod)
    return mod


def _per_row(store: Path, task: str, model: str, metric: str) -> dict[str, float]:
    from rescore.artifacts.store import Store
    from rescore.score.results import read_scores

    st = Store(store)
    [unit] = [u for u in st.units() if u.manifest["task"]["name"] == task and u.manifest["model"]["name"] == model]
    t = read_scores(st, unit.run_id, metric)
    assert t is not None, (task, model, metric)
    return dict(zip(t.column("sample_id").to_pylist(), t.column("value").to_pylist(), strict=True))


def _logged(store: Path, task: str, key: str) -> dict[str, Any]:
    """lm-eval's own per-sample values, as the import keeps them in each row's meta."""
    from rescore.artifacts.store import Store

    st = Store(store)
    [unit] = [u for u in st.units() if u.manifest["task"]["name"] == task and u.manifest["model"]["name"] == "base"]
    t = unit.read_table(columns=["sample_id", "meta"])
    return {s: json.loads(m)["lm_eval"].get(key) for s, m in zip(t.column("sample_id").to_pylist(),
                                                                  t.column("meta").to_pylist(), strict=True)}


@pytest.mark.slow  # lm-eval runs the tiny model, rescore generates the same tasks, and both are scored
def test_imported_and_generated_units_have_the_same_lm_eval_metrics(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "lm-eval"
    run = _make_run().main([str(out), "--model", str(tiny_model), "--rows", "8"])
    store = tmp_path / "store"
    # no --include-path: the run's YAMLs (its config_source) are still where lm-eval read them
    r = invoke("import", "lm-eval", str(run), "--store", str(store), "--model-name", "base")
    assert r.exit_code == 0, r.output
    r = gen_lm_eval_tasks(tmp_path, store, tiny_model, TASKS, out / "tasks")
    assert r.exit_code == 0, r.output
    r = invoke("score", "--store", str(store))
    assert r.exit_code == 0, r.output
    assert "no lm-eval.* metrics" not in r.output

    r = invoke("compare", "-b", "base", "--store", str(store), "-f", "csv")
    assert r.exit_code == 0, r.output
    rows = {(x["task"], x["metric"]): x for x in csv.DictReader(io.StringIO(r.output.split("\n\n")[0]))}
    lm_rows = {k: v for k, v in rows.items() if (k[1] or "").startswith("lm-eval.")}
    expected = {("arc_easy_local", m) for m in ("lm-eval.acc", "lm-eval.acc_norm", "lm-eval.acc_bytes",
                                                "lm-eval.brier_score")}
    expected |= {("winogrande_local", m) for _, m in expected}
    expected |= {("wikitext_local", m) for m in ("lm-eval.word_perplexity", "lm-eval.byte_perplexity",
                                                 "lm-eval.bits_per_byte")}
    expected |= {("gsm8k_local", m) for m in ("lm-eval.exact_match.strict-match", "lm-eval.exact_match.flexible-extract")}
    assert set(lm_rows) == expected
    for key, x in lm_rows.items():
        assert x["status"] != "missing" and x["n"] == "8", (key, x)
        if key[1] in EXACT:
            assert float(x["base"]) == float(x["value"]), key
        else:
            assert float(x["value"]) == pytest.approx(float(x["base"]), rel=1e-5), key

    for task, metric in sorted(expected):
        imported = _per_row(store, task, "base", metric)
        generated = _per_row(store, task, "new", metric)
        assert sorted(imported) == sorted(generated) and len(imported) == 8, (task, metric)
        # the import's values are lm-eval's logged per-sample values where those are numbers
        key = metric.removeprefix("lm-eval.").replace(".", ",", 1) if "." in metric.removeprefix("lm-eval.") \
            else metric.removeprefix("lm-eval.") + ",none"
        logged = _logged(store, task, key)
        for sid, v in imported.items():
            if isinstance(logged[sid], int | float):
                assert v == logged[sid], (task, metric, sid)
            if metric in EXACT:
                assert v == generated[sid], (task, metric, sid)
            else:
                assert math.isfinite(v) and v == pytest.approx(generated[sid], rel=1e-5), (task, metric, sid)


@pytest.mark.slow  # lm-eval indexes its task YAMLs (over 10 s) to learn that it has no such task
def test_imported_unit_of_a_task_lm_eval_does_not_know_gets_one_note(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    store = tmp_path / "store"
    run = FIXTURES / "v0.4.13" / "tinym"  # made from task YAMLs that are not on this machine
    r = invoke("import", "lm-eval", str(run), "--store", str(store), "--model-name", "base", "-t", "arc_easy_local")
    assert r.exit_code == 0, r.output
    r = invoke("score", "--store", str(store))
    assert r.exit_code == 0, r.output
    notes = [line for line in r.output.splitlines() if "lm-eval.* metrics" in line]
    assert len(notes) == 1, r.output
    assert "arc_easy_local" in notes[0] and "--include-path" in notes[0]
    from rescore.artifacts.store import Store
    from rescore.score.engine import read_results

    got = {x["metric"] for x in read_results(Store(store)).to_pylist()}
    assert {"acc", "acc_norm", "brier_score"} <= got
    assert not [m for m in got if m.startswith("lm-eval.")]

    # with the task's YAML directory given at import the same run gets them
    mod = _make_run()
    tasks = mod.write_tasks(tmp_path / "yaml", mod.write_data(tmp_path / "yaml", 10))
    store2 = tmp_path / "store2"
    r = invoke("import", "lm-eval", str(run), "--store", str(store2), "--model-name", "base", "-t", "arc_easy_local",
               "--include-path", str(tasks))
    assert r.exit_code == 0, r.output
    r = invoke("score", "--store", str(store2))
    assert r.exit_code == 0, r.output
    assert "lm-eval.* metrics" not in r.output
    logged = _logged(store2, "arc_easy_local", "acc_norm,none")
    assert _per_row(store2, "arc_easy_local", "base", "lm-eval.acc_norm") == logged


def test_include_path_that_is_not_a_directory_is_one_line(tmp_path):
    r = invoke("import", "lm-eval", str(FIXTURES / "v0.4.13" / "tinym"), "--store", str(tmp_path / "s"),
               "--include-path", str(tmp_path / "nope"))
    assert r.exit_code == 2
    assert "--include-path" in r.output and "not a directory" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "s").exists()

"""An imported lm-eval run and rescore's own generation of the same lm-eval tasks (the lm_eval family) line up
in `rescore compare`: same task names, same sample ids, same metric names, the mixed-run guard satisfied
(the import records the dtype as rescore does; its unknown tokenizer hash is not a difference), and rescore's
word and byte perplexities of a generated rolling task use the counts lm-eval divides by."""

from __future__ import annotations

import csv
import importlib.util
import io
import sys
from pathlib import Path

import pytest
from support import gen_lm_eval_tasks, invoke

pytestmark = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None, reason="needs lm-eval (dev extra)")
FIXTURES = Path(__file__).parent / "fixtures" / "lm_eval"


@pytest.mark.slow  # lm-eval runs the tiny model first
def test_imported_and_generated_lm_eval_tasks_compare_metric_by_metric(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = importlib.util.spec_from_file_location("make_lm_eval_run", FIXTURES / "make_run.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["make_lm_eval_run"] = mod
    spec.loader.exec_module(mod)
    out = tmp_path / "lm-eval"
    run = mod.main([str(out), "--model", str(tiny_model), "--rows", "8"])
    store = tmp_path / "store"
    tasks = ("arc_easy_local", "wikitext_local")
    r = invoke("import", "lm-eval", str(run), "--store", str(store), "--model-name", "base", *[a for t in tasks for a in ("-t", t)])
    assert r.exit_code == 0, r.output
    r = gen_lm_eval_tasks(tmp_path, store, tiny_model, tasks, out / "tasks")
    assert r.exit_code == 0, r.output
    assert invoke("score", "--store", str(store)).exit_code == 0
    r = invoke("compare", "-b", "base", "--store", str(store), "-f", "csv")
    assert r.exit_code == 0, r.output
    rows = {(x["task"], x["metric"]): x for x in csv.DictReader(io.StringIO(r.output.split("\n\n")[0]))}
    for key in [("arc_easy_local", m) for m in ("acc", "acc_norm", "acc_bytes")]:
        assert rows[key]["status"] != "missing" and rows[key]["n"] == "8", key
        assert float(rows[key]["base"]) == float(rows[key]["value"]), key  # the same choices picked
    for key in [("arc_easy_local", "brier_score")] + [("wikitext_local", m) for m in
                                                        ("bits_per_byte", "byte_perplexity", "word_perplexity")]:
        assert rows[key]["n"] == "8", key
        # lm-eval saved float64 sums of the same float32 logprobs: equal up to float32 rounding
        assert float(rows[key]["value"]) == pytest.approx(float(rows[key]["base"]), rel=1e-5), key

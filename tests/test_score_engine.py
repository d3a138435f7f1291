"""End to end on a store made by the fake backend: incremental scoring, versions, plugins, crashes,
partial units, results formats and exports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from support import cli as _cli
from support import invoke

from rescore.artifacts.io import atomic_write_json
from rescore.artifacts.store import Store, write_rows_parquet
from rescore.score.engine import (
    RESULTS_SCHEMA,
    read_results,
    read_score_file,
    read_scores,
    score_store,
    select_metrics,
)
from rescore.score.registry import load_builtin
from rescore.score.spec import metrics

load_builtin()

SUITE = """
name: scoretest
seeds: [0, 1]
tasks:
  - name: docs
    family: ppl_docs
    tier: tier2
    source: {path: docs.txt, format: txt}
    params: {documents: paragraphs}
  - name: arc
    family: multiple_choice
    tier: tier3
    source: {path: arc.jsonl}
    params: {prompt: arc}
  - name: gsm
    family: gsm8k
    tier: tier3
    source: {path: gsm.jsonl}
    gen: {temperature: 0.7, n: 3, max_new_tokens: 64}
  - name: sft
    family: sft_native
    tier: tier4
    subset_size: 12
    chat: true
    gen: {temperature: 0.0, max_new_tokens: 64}
"""

MODELS = """
models:
  - {name: ckpt-a, path: /ckpts/run1/step_100, backend: fake, step: 100, stage: pretrain, options: {p_correct: 0.3}}
  - {name: ckpt-b, path: /ckpts/run1/step_200, backend: fake, step: 200, stage: pretrain, options: {p_correct: 0.8}}
"""


def write_data(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "docs.txt").write_text("\n\n".join(f"Paragraph {i} has some words in it, über café." for i in range(6)),
                                encoding="utf-8")
    with open(d / "arc.jsonl", "w", encoding="utf-8") as f:
        for i in range(20):
            f.write(json.dumps({"question": f"Which number is {i}?", "answerKey": "ABCD"[i % 4],
                                "choices": {"text": [f"n{i}", f"m{i}x", f"k{i}yy", f"z{i}"], "label": list("ABCD")}}) + "\n")
    with open(d / "gsm.jsonl", "w", encoding="utf-8") as f:
        for i in range(10):
            f.write(json.dumps({"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i:,}"}) + "\n")


def gen(store: Path, data: Path, *extra: str) -> None:
    r = invoke("gen", str(data / "suite.yaml"), "--model", str(data / "models.yaml"), "--store", str(store),
               "--data-root", str(data), "--direct", "--no-progress", *extra)
    assert r.exit_code == 0, r.output


@pytest.fixture(scope="module")
def base_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("scoredata")
    write_data(d)
    (d / "suite.yaml").write_text(SUITE)
    (d / "models.yaml").write_text(MODELS)
    store = d / "store"
    gen(store, d)
    return store


@pytest.fixture
def store(base_store: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "store"
    shutil.copytree(base_store, dst)
    return dst


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a fresh interpreter (plugins and crashes must not touch this process), on a wide terminal."""
    return _cli(*args, env={"COLUMNS": "200"}, timeout=300)


def test_second_score_computes_nothing(store: Path) -> None:
    st = Store(store)
    first = score_store(st)
    n_units = len(st.units())
    assert first.units_complete == n_units and not first.partial_units
    assert len(first.computed) > 0
    results1 = read_results(st)
    second = score_store(st)
    assert second.computed == [] and second.up_to_date == len(first.computed)
    assert read_results(st).equals(results1)


def test_results_table_shape(store: Path) -> None:
    st = Store(store)
    score_store(st)
    t = read_results(st)
    assert t.schema.equals(RESULTS_SCHEMA)
    rows = t.to_pylist()
    models = {(r["model"], r["checkpoint"], r["step"], r["stage"], r["precision"]) for r in rows}
    assert models == {("ckpt-a", "/ckpts/run1/step_100", 100, "pretrain", "fp32"),
                      ("ckpt-b", "/ckpts/run1/step_200", 200, "pretrain", "fp32")}
    gsm = [r for r in rows if r["task"] == "gsm" and r["metric"] == "exact_match_flexible" and r["model"] == "ckpt-b"
           and r["subset"] == "all"]
    seeds = {r["seed"]: r for r in gsm}
    assert set(seeds) == {"0", "1", "agg"}  # sampled generation: one unit per seed, plus the aggregate
    agg = seeds["agg"]
    assert agg["n_seeds"] == 2 and agg["n"] == 20
    assert agg["value"] == pytest.approx((seeds["0"]["value"] + seeds["1"]["value"]) / 2)
    assert agg["min"] == min(seeds["0"]["value"], seeds["1"]["value"])
    # deterministic tasks run once: their agg row repeats the single seed
    arc = {r["seed"]: r for r in rows if r["task"] == "arc" and r["metric"] == "acc" and r["model"] == "ckpt-a"
           and r["subset"] == "all"}
    assert set(arc) == {"0", "agg"} and arc["agg"]["value"] == arc["0"]["value"] and arc["agg"]["n_seeds"] == 1
    # SFT categories are subsets
    subsets = {r["subset"] for r in rows if r["task"] == "sft" and r["metric"] == "all_checks_pass_rate"}
    assert "all" in subsets and len(subsets) > 2
    # the better fake model wins on acc
    acc = {r["model"]: r["value"] for r in rows if r["task"] == "arc" and r["metric"] == "acc" and r["seed"] == "agg"
           and r["subset"] == "all"}
    assert acc["ckpt-b"] > acc["ckpt-a"]


def test_bumping_a_version_recomputes_only_that_metric(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    st = Store(store)
    score_store(st)
    old = metrics.get("acc")
    from dataclasses import replace

    monkeypatch.setitem(metrics._entries, "acc", replace(old, version=2))
    report = score_store(st)
    assert report.computed and {m for _, m, _ in report.computed} == {"acc"}
    assert {v for _, _, v in report.computed} == {2}
    mc_units = [u for u in st.units() if u.request_type == "loglikelihood"]
    assert len(report.computed) == len(mc_units)
    for u in mc_units:  # the old version's file stays (a cache); results use the new one
        assert (st.scores_dir / u.run_id / "acc@1.arrow").is_file()
        assert (st.scores_dir / u.run_id / "acc@2.arrow").is_file()
    t = read_results(st)
    assert set(pc.unique(t.filter(pc.equal(t["metric"], "acc"))["metric_version"]).to_pylist()) == {2}


def test_score_files_of_the_earlier_parquet_format_are_read_then_replaced(store: Path) -> None:
    st = Store(store)
    score_store(st)
    before = read_results(st).to_pylist()
    unit = next(u for u in st.units() if u.request_type == "loglikelihood")
    arrow = st.scores_dir / unit.run_id / "acc@1.arrow"
    legacy = arrow.with_suffix(".parquet")
    stored = read_score_file(arrow)
    assert "sample_id" not in stored.column_names and stored.num_rows == unit.manifest["rows_done"]
    table = read_scores(st, unit.run_id, "acc")  # sample ids from the unit's rows, in the file's row order
    assert table.column_names[:2] == ["sample_id", "value"]
    assert read_scores(str(store), unit.run_id, "acc").equals(table)  # a store directory will do
    assert table.column("sample_id").equals(unit.read_table(columns=["sample_id"]).column("sample_id"))
    # the earlier format: Parquet with its own sample_id column; the schema metadata (spec identity,
    # aggregates) goes to the Parquet footer
    pq.write_table(table.replace_schema_metadata(stored.schema.metadata), legacy)
    arrow.unlink()
    # results, per-row reads and compare still see the Parquet file
    assert score_store(st, [], rebuild=True).computed == []
    assert read_results(st).to_pylist() == before
    assert read_scores(st, unit.run_id, "acc").column("value").equals(table.column("value"))
    # the next score of that metric writes the current format and removes the old file
    report = score_store(st, select_metrics(["acc"]))
    assert (unit.run_id, "acc", 1) in report.computed
    assert arrow.is_file() and not legacy.exists()
    assert read_results(st).to_pylist() == before


def test_force_and_metric_filter(store: Path) -> None:
    st = Store(store)
    score_store(st)
    report = score_store(st, select_metrics(["bits_per_byte"]), force=True)
    assert {m for _, m, _ in report.computed} == {"bits_per_byte"}
    assert len(report.computed) == len([u for u in st.units() if u.request_type == "rolling"])


def test_unknown_metric_is_a_config_error_with_suggestion(store: Path) -> None:
    r = invoke("score", "--store", str(store), "--metric", "acc_nrom")
    assert r.exit_code == 2
    assert "acc_norm" in r.output and "did you mean" in r.output


def test_regenerated_unit_is_rescored(store: Path) -> None:
    st = Store(store)
    score_store(st)
    unit = next(u for u in st.units() if u.request_type == "loglikelihood")
    t = pq.read_table(unit.parquet_path)
    gold = pc.if_else(pc.equal(t["gold"], 0), 1, 0).cast(pa.int32())
    t = t.set_column(t.schema.get_field_index("gold"), "gold", gold)
    written = write_rows_parquet(unit.parquet_path, t, unit.run_id)  # as the writer does when a unit completes
    atomic_write_json(unit.path / "manifest.json", {**unit.manifest, **written})
    report = score_store(st)
    assert report.computed and {r for r, _, _ in report.computed} == {unit.run_id}


PLUGIN = '''
import numpy as np
import pyarrow.compute as pc
from rescore.score import metric

@metric(version=1, request_type="generate", columns=["candidates"], higher_is_better=False)
def answer_chars(table):
    """Characters in candidate 0."""
    return pc.utf8_length(pc.list_element(table["candidates"], 0))
'''


def test_plugin_metric_is_computed_alone_and_stays_in_results(store: Path, tmp_path: Path) -> None:
    assert cli("score", "--store", str(store)).returncode == 0
    plugin = tmp_path / "my_metrics.py"
    plugin.write_text(PLUGIN)
    r = cli("score", "--store", str(store), "--plugin", str(plugin), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    gen_units = [u for u in Store(store).units() if u.request_type == "generate"]
    assert {c["metric"] for c in out["computed"]} == {"answer_chars"}
    assert len(out["computed"]) == len(gen_units)
    # a later plain run (it loads the plugin the store recorded) computes nothing new and keeps its results
    r = cli("score", "--store", str(store), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["computed"] == []
    t = read_results(Store(store))
    assert pc.sum(pc.equal(t["metric"], "answer_chars")).as_py() > 0
    r = cli("metrics", "--plugin", str(plugin), "--json")
    assert any(m["name"] == "answer_chars" and m["description"] == "Characters in candidate 0." for m in json.loads(r.stdout))


def test_the_store_remembers_its_plugins_so_later_checkpoints_get_their_metrics(store: Path, tmp_path: Path,
                                                                               base_store: Path) -> None:
    plugin = tmp_path / "my_metrics.py"
    plugin.write_text(PLUGIN)
    assert cli("score", "--store", str(store), "--plugin", str(plugin)).returncode == 0
    assert json.loads((store / "plugins.json").read_text()) == {"plugins": [str(plugin.resolve())]}
    # a checkpoint generated later: a plain `rescore score` computes the plugin's metric for it too
    data = base_store.parent
    later = tmp_path / "models.yaml"
    later.write_text("models:\n  - {name: ckpt-c, path: /ckpts/run1/step_300, backend: fake, step: 300}\n")
    r = invoke("gen", str(data / "suite.yaml"), "--model", str(later), "--store", str(store), "--data-root", str(data),
               "--direct", "--no-progress")
    assert r.exit_code == 0, r.output
    r = cli("score", "--store", str(store), "--json")
    assert r.returncode == 0, r.stderr
    new = {c["run_id"] for c in json.loads(r.stdout)["computed"] if c["metric"] == "answer_chars"}
    c_gen = {u.run_id for u in Store(store).units() if u.manifest["model"]["name"] == "ckpt-c" and u.request_type == "generate"}
    assert new == c_gen and c_gen
    # a recorded plugin that is gone: one line naming it and the file that records it, exit 2, nothing lost
    plugin.unlink()
    before = (store / "results.parquet").read_bytes()
    r = cli("score", "--store", str(store))
    assert r.returncode == 2 and "plugins.json" in r.stderr and str(plugin.resolve()) in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and (store / "results.parquet").read_bytes() == before
    (store / "plugins.json").write_text("{not json")
    r = cli("score", "--store", str(store))
    assert r.returncode != 0 and "corrupt file" in r.stderr and "plugins.json" in r.stderr


def test_bad_plugin_is_a_config_error(tmp_path: Path, store: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import nothing_here_at_all\n")
    r = invoke("score", "--store", str(store), "--plugin", str(bad))
    assert r.exit_code == 2 and "failed to import" in r.output
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    r = invoke("score", "--store", str(store), "--plugin", str(empty))
    assert r.exit_code == 2 and "registered no metric" in r.output


CRASH_PLUGIN = '''
import os
from pathlib import Path
from rescore.score import metric

COUNTER = Path({counter!r})

@metric(version=1, request_type="loglikelihood", columns=["gold"])
def zz_crash(table):
    n = int(COUNTER.read_text()) if COUNTER.exists() else 0
    COUNTER.write_text(str(n + 1))
    if n == 1:
        os._exit(3)  # a hard crash (kill -9 alike) while scoring the second unit
    return [1.0] * table.num_rows
'''


def test_crash_mid_score_keeps_earlier_scores(store: Path, tmp_path: Path) -> None:
    plugin = tmp_path / "crash.py"
    plugin.write_text(CRASH_PLUGIN.format(counter=str(tmp_path / "count")))
    r = cli("score", "--store", str(store), "--plugin", str(plugin), "--metric", "acc", "--metric", "zz_crash")
    assert r.returncode == 3
    st = Store(store)
    mc = [u for u in st.units() if u.request_type == "loglikelihood"]
    done = [u for u in mc if (st.scores_dir / u.run_id / "zz_crash@1.arrow").is_file()]
    assert len(done) == 1
    for u in mc:  # every file that exists is complete and readable; no temp files are left as scores
        for p in (st.scores_dir / u.run_id).glob("*.arrow"):
            assert read_score_file(p).num_rows == u.manifest["rows_done"]
    # the rerun computes only what is missing and finishes
    r = cli("score", "--store", str(store), "--plugin", str(plugin), "--metric", "acc", "--metric", "zz_crash", "--json")
    assert r.returncode == 0, r.stderr
    computed = json.loads(r.stdout)["computed"]
    assert done[0].run_id not in {c["run_id"] for c in computed if c["metric"] == "zz_crash"}
    assert len([c for c in computed if c["metric"] == "zz_crash"]) == len(mc) - 1


def test_failing_metric_names_itself(store: Path, tmp_path: Path) -> None:
    plugin = tmp_path / "boom.py"
    plugin.write_text("from rescore.score import metric\n\n@metric(version=1, request_type='rolling')\n"
                      "def boom(table):\n    raise ValueError('bad input')\n")
    r = cli("score", "--store", str(store), "--plugin", str(plugin))
    assert r.returncode == 1
    assert "metric 'boom'" in r.stderr and "ValueError: bad input" in r.stderr and "Traceback" not in r.stderr


def test_partial_units_are_skipped_and_reported(tmp_path: Path) -> None:
    d = tmp_path / "d"
    write_data(d)
    (d / "suite.yaml").write_text(SUITE)
    (d / "models.yaml").write_text(MODELS.split("  - {name: ckpt-b")[0])
    store = d / "store"
    r = invoke("gen", str(d / "suite.yaml"), "--model", str(d / "models.yaml"), "--store", str(store),
               "--data-root", str(d), "--direct", "--no-progress", "--fake-fail-after", "25")
    assert r.exit_code != 0
    st = Store(store)
    partial = [u.run_id for u in st.units() if not u.complete]
    assert partial
    report = score_store(st)
    assert report.partial_units == partial
    assert not any(run_id in partial for run_id, _, _ in report.computed)
    r = invoke("score", "--store", str(store))
    assert r.exit_code == 0 and "partial unit" in r.output


def test_reranker_table(store: Path, tmp_path: Path) -> None:
    st = Store(store)
    score_store(st)
    gsm_units = [u for u in st.units() if u.manifest["task"]["name"] == "gsm"]
    lines = ["sample_id,candidate,score,run_id"]
    for u in gsm_units:
        s = read_scores(st, u.run_id, "exact_match_flexible")
        for sid, per in zip(s["sample_id"].to_pylist(), s["per_candidate"].to_pylist(), strict=True):
            for j, ok in enumerate(per):  # a perfect reranker: the correct candidates score highest
                lines.append(f"{sid},{j},{ok},{u.run_id}")
    f = tmp_path / "scores.csv"
    f.write_text("\n".join(lines) + "\n")
    r = invoke("score", "--store", str(store), "--reranker", str(f))
    assert r.exit_code == 0, r.output
    assert "reranker file scores no candidate" not in r.output  # it covers every sample
    t = read_results(st).filter(pc.and_(pc.equal(read_results(st)["task"], "gsm"), pc.equal(read_results(st)["seed"], "agg")))
    vals = {(r["model"], r["metric"]): r["value"] for r in t.to_pylist() if r["subset"] == "all"}
    for m in ("ckpt-a", "ckpt-b"):
        assert vals[(m, "bon_reranker")] == pytest.approx(vals[(m, "bon_oracle")])
        assert vals[(m, "bon_random")] <= vals[(m, "bon_oracle")]
    # editing the file changes the metric's identity: the next run with it recomputes
    f.write_text("\n".join(lines[:1] + [ln.replace(",1.0,", ",0.0,") for ln in lines[1:]]) + "\n")
    r = invoke("score", "--store", str(store), "--reranker", str(f), "--metric", "bon_reranker")
    n_gen = len([u for u in st.units() if u.request_type == "generate"])
    assert r.exit_code == 0 and f"computed {n_gen} scores" in r.output
    # a file that misses some samples: scoring says how many do not count
    first_sid = lines[1].split(",")[0]
    dropped = [ln for ln in lines[1:] if ln.split(",")[0] == first_sid]
    f.write_text("\n".join([lines[0]] + [ln for ln in lines[1:] if ln not in dropped]) + "\n")
    r = invoke("score", "--store", str(store), "--reranker", str(f), "--metric", "bon_reranker")
    units_with_it = len({ln.split(",")[3] for ln in dropped})
    assert r.exit_code == 0, r.output
    total = sum(int(x["n"]) for x in read_results(st).to_pylist() if x["metric"] == "bon_first" and x["subset"] == "all"
                and x["seed"] != "agg")
    assert (f"reranker file scores no candidate of {units_with_it} of {total} samples with a reference "
            f"({units_with_it} unit(s))") in " ".join(r.output.split())


def test_results_formats(store: Path) -> None:
    score_store(Store(store))
    r = invoke("results", "--store", str(store), "--format", "csv", "--task", "arc", "--metric", "acc")
    assert r.exit_code == 0
    lines = r.output.strip().splitlines()
    assert lines[0].startswith("model,checkpoint,step") and len(lines) == 3
    r = invoke("results", "--store", str(store), "--format", "json", "--metric", "bon_*", "--model", "ckpt-b")
    rows = json.loads(r.output)
    assert {x["metric"] for x in rows} == {"bon_first", "bon_random", "bon_oracle", "bon_max_mean_logprob",
                                           "bon_max_sum_logprob", "bon_majority"}
    r = invoke("results", "--store", str(store), "--format", "markdown", "--task", "arc")
    md = r.output
    assert "## ckpt-a @ step 100" in md and "## ckpt-b @ step 200" in md and "## Comparison" in md
    assert "| Task | Metric | Result | Error Range |" in md
    acc_line = next(ln for ln in md.split("## Comparison")[1].splitlines() if ln.startswith("| arc | acc ↑"))
    assert acc_line.count("**") == 2 and acc_line.split("|")[4].strip().startswith("**")  # ckpt-b is best
    assert " ± " in acc_line
    r = invoke("results", "--store", str(store), "--seed", "*", "--subset", "*", "--format", "json")
    assert {x["seed"] for x in json.loads(r.output)} == {"0", "1", "agg"}
    r = invoke("results", "--store", str(store), "--format", "yaml")
    assert r.exit_code == 2


def test_export_tiers_and_lm_eval(store: Path, tmp_path: Path) -> None:
    score_store(Store(store))
    out = tmp_path / "out"
    r = invoke("export", "tiers", str(out), "--store", str(store))
    assert r.exit_code == 0, r.output
    for step in (100, 200):
        d = out / "by_checkpoint" / f"step_{step}"
        t2 = json.loads((d / "tier2_ppl.json").read_text())
        assert t2["step"] == step and "bits_per_byte" in t2["tasks"]["docs"]["metrics"]
        t3 = json.loads((d / "tier3_cf.json").read_text())
        assert {"arc", "gsm"} <= set(t3["tasks"]) and "acc_norm" in t3["tasks"]["arc"]["metrics"]
        assert t3["tasks"]["gsm"]["metrics"]["exact_match_strict"]["n_seeds"] == 2
        t4 = json.loads((d / "tier4_sft_native.json").read_text())
        assert set(t4) >= {"summary", "by_category", "prompts"}
        assert "instruction_match_rate" in t4["summary"]["sft"]
        assert "strict_json" in t4["by_category"]["sft"]
        assert len(t4["prompts"]) == 12 and all("checks" in p for p in t4["prompts"])
        gens = [json.loads(x) for x in (d / "tier4_sft_native_generations.jsonl").read_text().splitlines()]
        assert len(gens) == 12 and all("response" in g and "checks" in g for g in gens)
    r = invoke("export", "lm-eval", str(tmp_path / "lm"), "--store", str(store))
    assert r.exit_code == 0
    doc = json.loads((tmp_path / "lm" / "ckpt-a" / "results.json").read_text())
    assert {"acc,none", "acc_stderr,none", "acc_norm,none"} <= set(doc["results"]["arc"])
    assert "exact_match,strict-match" in doc["results"]["gsm"] and "exact_match,flexible-extract" in doc["results"]["gsm"]
    assert "word_perplexity,none" in doc["results"]["docs"]
    assert doc["n-samples"]["arc"] == {"original": 20, "effective": 20}


def test_export_step_collision_needs_model(store: Path, tmp_path: Path) -> None:
    st = Store(store)
    for u in st.units():  # drop the steps and the step-like paths: both checkpoints export to step_unknown
        m = u.manifest
        m["model"] = {**m["model"], "step": None, "path": "/ckpts/" + m["model"]["name"]}
        atomic_write_json(u.path / "manifest.json", m)
    score_store(st)
    r = invoke("export", "tiers", str(tmp_path / "o"), "--store", str(store))
    assert r.exit_code == 2 and "--model" in r.output
    r = invoke("export", "tiers", str(tmp_path / "o"), "--store", str(store), "--model", "ckpt-a")
    assert r.exit_code == 0 and (tmp_path / "o" / "by_checkpoint" / "step_unknown" / "tier3_cf.json").is_file()


def test_math_equiv_is_skipped_cleanly_without_math_verify(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: object, **kw: object) -> object:  # as on a machine without math-verify
        return None if name.split(".")[0] == "math_verify" else real_find_spec(name, *args, **kw)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setitem(sys.modules, "math_verify", None)  # `import math_verify` raises ImportError
    report = score_store(Store(store))
    assert "math_equiv" in report.unavailable
    assert not any(m == "math_equiv" for _, m, _ in report.computed)


def test_scoring_never_imports_torch(store: Path, tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import sys, json
        from typer.testing import CliRunner
        from rescore.cli import app
        r = CliRunner()
        for args in (["score", "--store", {str(store)!r}], ["results", "--store", {str(store)!r}, "--format", "markdown"],
                     ["export", "tiers", {str(tmp_path / 'x')!r}, "--store", {str(store)!r}],
                     ["export", "lm-eval", {str(tmp_path / 'y')!r}, "--store", {str(store)!r}], ["metrics"]):
            res = r.invoke(app, args)
            assert res.exit_code == 0, (args, res.output)
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "vllm"))))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_math_equiv_with_math_verify() -> None:
    pytest.importorskip("math_verify")
    from rescore.artifacts.schema import schema_for
    from rescore.score.spec import UnitInfo

    schema = schema_for("generate")
    rows = [{"sample_id": "a", "candidates": ["The answer is $\\frac{1}{2}$"], "target": "#### 0.5"},
            {"sample_id": "b", "candidates": ["So we get 1,234 apples.\n#### 1234"], "target": "#### 1234"},
            {"sample_id": "c", "candidates": ["no idea"], "target": "#### 7"},
            {"sample_id": "d", "candidates": [], "target": "#### 7"}]
    t = pa.Table.from_pylist(rows, schema=pa.schema([schema.field(n) for n in ("sample_id", "candidates", "target")]))
    got = metrics.get("math_equiv").compute(t, UnitInfo("x", {}))["value"].tolist()
    assert got[:3] == [1.0, 1.0, 0.0] and got[3] != got[3]  # the last row has no candidate: NaN


def test_parallel_jobs_give_the_same_results(store: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(store, other)
    score_store(Store(store), jobs=1)
    report = score_store(Store(other), jobs=2)
    assert report.computed and report.jobs == 2
    a, b = read_results(Store(store)), read_results(Store(other))
    assert a.equals(b)


def test_default_jobs_use_processes_only_for_large_stores(store: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from rescore.score import parallel

    monkeypatch.setattr(parallel, "usable_cpus", lambda: 2)
    small = score_store(Store(store))  # a few hundred rows: one process
    assert small.jobs == 1
    other = tmp_path / "other"
    shutil.copytree(store, other)
    for p in (other / "scores").iterdir():
        shutil.rmtree(p)
    monkeypatch.setattr(parallel, "AUTO_JOBS_MIN_ROWS", 10)  # as if the store were large
    r = cli("score", "--store", str(other), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["jobs"] == 1  # the CLI runs in its own process: real CPUs, real threshold
    big = score_store(Store(other), force=True)
    assert big.jobs == 2 and big.computed
    assert read_results(Store(store)).equals(read_results(Store(other)))
    specs = select_metrics()
    unit_bytes = max(parallel._unit_memory(u, [s for s in specs if s.request_type == u.request_type])
                     for u in Store(other).units())
    monkeypatch.setattr(parallel, "available_memory", lambda: 3 * unit_bytes)  # room for one worker, not two
    assert score_store(Store(other), force=True).jobs == 1


def _damage(path: Path, how: str) -> None:
    import pyarrow.ipc as ipc

    from rescore.score.engine import write_score_file

    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(b"hello")
    elif how in ("short", "empty"):  # a well-formed file with too few rows for its metadata
        t = read_score_file(path).replace_schema_metadata(ipc.open_file(str(path)).schema.metadata)
        write_score_file(path, t.slice(0, 0 if how == "empty" else t.num_rows - 1))
    elif how == "flipped":  # same size, bytes inverted in the middle of the file
        a, b = len(data) * 2 // 5, len(data) * 3 // 5
        path.write_bytes(data[:a] + bytes(x ^ 0xFF for x in data[a:b]) + data[b:])


@pytest.mark.parametrize("how", ["truncated", "garbage", "short", "empty", "flipped"])
def test_a_damaged_score_file_is_reported_left_out_and_recomputed(store: Path, how: str) -> None:
    st = Store(store)
    score_store(st)
    before = read_results(st).to_pylist()
    unit = next(u for u in st.units() if u.request_type == "loglikelihood")
    path = st.scores_dir / unit.run_id / "acc@1.arrow"
    _damage(path, how)
    # verify names it
    r = cli("verify", "--store", str(store), "--json")
    assert r.returncode == 1 and [f["path"] for f in json.loads(r.stdout)["findings"]] == [str(path)], r.stdout
    # a run that does not recompute acc leaves it out of the results and says so
    r = cli("score", "--store", str(store), "--metric", "acc_norm", "--json")
    assert r.returncode == 0, r.stderr
    assert [d["path"] for d in json.loads(r.stdout)["damaged_score_files"]] == [str(path)]
    got = read_results(st).to_pylist()
    assert not any(x["run_id"] == unit.run_id and x["metric"] == "acc" for x in got)
    assert read_scores(st, unit.run_id, "acc") is None
    # a plain `score` recomputes it: the results are whole again
    r = cli("score", "--store", str(store), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert {"run_id": unit.run_id, "metric": "acc", "version": 1} in out["computed"] and not out["damaged_score_files"]
    assert read_results(st).to_pylist() == before


def test_damaged_baseline_scores_are_a_missing_row_not_a_silent_pass(store: Path, tmp_path: Path) -> None:
    st = Store(store)
    score_store(st)
    base = next(u for u in st.units() if u.manifest["task"]["name"] == "arc" and u.manifest["model"]["name"] == "ckpt-a")
    _damage(st.scores_dir / base.run_id / "acc@1.arrow", "garbage")
    policy = tmp_path / "policy.yaml"
    policy.write_text("missing: fail\nrules:\n  - metric: acc\n    max_regression: 1.0\n")
    r = cli("compare", "--store", str(store), "--baseline", "ckpt-a", "--models", "ckpt-b", "-t", "arc", "-M", "acc",
            "--policy", str(policy))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "the baseline ckpt-a@100 has no acc scores on arc" in " ".join(r.stdout.split())


@pytest.mark.parametrize("index", [b"[]", b'{"acc@1.arrow": 5}', b'{"acc@1.arrow": {"size": "x"}}', b"\x00",
                                   "aggregates-str", "aggregates-null"])
def test_a_malformed_score_index_is_ignored(store: Path, index: bytes | str) -> None:
    st = Store(store)
    score_store(st)
    before = read_results(st).to_pylist()
    for u in st.units():
        path = st.scores_dir / u.run_id / "_index.json"
        if isinstance(index, str):  # valid JSON, current sizes and times, but metadata of the wrong shape
            from rescore.score.engine import _index_checksum

            data = json.loads(path.read_bytes())
            for ent in data["files"].values():
                ent["meta"]["aggregates"] = {"all": "x"} if index == "aggregates-str" else None
            data["checksum"] = _index_checksum(data["files"])  # a whole index, of malformed entries
            path.write_text(json.dumps(data))
        else:
            path.write_bytes(index)
    r = cli("score", "--store", str(store))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "0 scores" in r.stdout + r.stderr and read_results(st).to_pylist() == before


DYING_PLUGIN = '''
import os
from rescore.score import metric

@metric(version=1, request_type="loglikelihood", columns=["gold"])
def zz_dies(table):
    os._exit(9)  # as a worker killed by the out-of-memory killer
'''


def test_a_dead_worker_process_is_a_one_line_error(store: Path, tmp_path: Path) -> None:
    plugin = tmp_path / "dies.py"
    plugin.write_text(DYING_PLUGIN)
    r = cli("score", "--store", str(store), "--plugin", str(plugin), "--jobs", "2")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "a scoring process died" in lines[0] and "--jobs 1" in lines[0]


def test_a_plugin_cannot_take_a_built_in_metric_name(store: Path, tmp_path: Path) -> None:
    plugin = tmp_path / "mine.py"
    plugin.write_text("from rescore.score import metric\n\n"
                      "@metric(version=1, request_type='loglikelihood', columns=['gold'])\n"
                      "def acc(table):\n    return [1.0] * table.num_rows\n")
    r = cli("score", "--store", str(store), "--plugin", str(plugin))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "'acc', the name of a built-in metric" in r.stderr and not (store / "scores").exists()
    from rescore.errors import ConfigError
    from rescore.score.registry import load_plugin

    with pytest.raises(ConfigError):
        load_plugin(str(plugin))
    assert metrics.get("acc").fn.__module__ == "rescore.score.metrics_choice"  # the built-in stays registered


SLOW_PLUGIN = '''
import os
import time
from pathlib import Path

from rescore.score import metric

MAIN = os.getpid()  # the scoring command; its workers are forked from it after it imported this file


def _slow(table):
    if os.getpid() == MAIN:  # the command's own check of a plugin before it starts any worker
        return [1.0] * table.num_rows
    marks = Path(os.environ["ZZ_MARKS"])
    (marks / f"start-{os.getpid()}-{time.monotonic_ns()}").touch()
    time.sleep(float(os.environ.get("ZZ_SLEEP_S", "600")))
    (marks / f"done-{os.getpid()}-{time.monotonic_ns()}").touch()
    return [1.0] * table.num_rows


@metric(version=1, request_type="loglikelihood", columns=["gold"])
def zz_slow(table):
    return _slow(table)


@metric(version=1, request_type="generate", columns=["candidates"])
def zz_slow_gen(table):
    return _slow(table)
'''


def test_sigterm_stops_worker_processes_at_once(store: Path, tmp_path: Path) -> None:
    """SIGTERM while both workers are inside a metric and more units are queued: the workers are ended (not
    waited for), no queued unit starts, nothing half-written is kept, and the next `score` finishes the job."""
    import signal
    import time

    plugin = tmp_path / "slow.py"
    plugin.write_text(SLOW_PLUGIN)
    marks = tmp_path / "marks"
    marks.mkdir()
    cmd = [sys.executable, "-m", "rescore.cli", "score", "--store", str(store), "--plugin", str(plugin), "--jobs", "2",
           "--no-progress"]
    env = {**os.environ, "ZZ_MARKS": str(marks)}
    st = Store(store)
    assert len(st.units()) > 2  # units left in the queue while both workers are busy
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120  # a guard against a hang, not a bound under test
        while len(list(marks.glob("start-*"))) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1]
        started = sorted(marks.glob("start-*"))
        assert len(started) == 2, "both workers should be inside the slow metric"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143 and "Traceback" not in err, err
    assert "interrupted" in err
    # the workers were ended, not waited for, and no queued unit started after the signal
    for pid in {int(p.name.split("-")[1]) for p in started}:
        assert not Path(f"/proc/{pid}").exists(), f"worker {pid} is still running"
    assert sorted(marks.glob("start-*")) == started and not list(marks.glob("done-*"))
    assert not list(st.scores_dir.glob("*/zz_slow*"))  # no score file for an interrupted unit, not even a partial one
    # the next run completes every unit
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**env, "ZZ_SLEEP_S": "0"})
    assert again.returncode == 0, again.stderr
    for u in st.units():
        name = "zz_slow@1.arrow" if u.request_type == "loglikelihood" else "zz_slow_gen@1.arrow"
        if u.request_type in ("loglikelihood", "generate"):
            assert (st.scores_dir / u.run_id / name).is_file(), (u.run_id, name)


def test_compare_and_report_refuse_a_metric_typo_and_an_empty_gate(store: Path, tmp_path: Path) -> None:
    score_store(Store(store))
    base = ["compare", "--store", str(store), "--baseline", "ckpt-a", "--models", "ckpt-b"]
    r = cli(*base, "-M", "acc_nrom")
    assert r.returncode == 2 and "--metric 'acc_nrom' matches no compared metric" in r.stderr
    assert "did you mean 'acc_norm'" in r.stderr and "Traceback" not in r.stderr
    r = cli("report", str(tmp_path / "r.html"), "--store", str(store), "-M", "nosuchmetric")
    assert r.returncode == 2 and "matches no scored metric" in r.stderr and not (tmp_path / "r.html").exists()
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules:\n  - metric: acc\n    max_regression: 1.0\n")
    r = cli(*base, "-M", "brier_score", "--policy", str(policy))
    assert r.returncode == 1 and "the policy gated no row" in r.stderr
    r = cli(*base, "-M", "acc", "--policy", str(policy))
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("arg,message", [("pass_at_k:k=abc", "parameter k='abc' should be int"),
                                         ("acc:foo=1", "metric 'acc' has no parameter 'foo'"),
                                         ("bon_random:seed=1.5", "parameter seed=1.5 should be int")])
def test_bad_metric_parameters_are_configuration_errors(store: Path, arg: str, message: str) -> None:
    r = invoke("score", "--store", str(store), "--metric", arg)
    assert r.exit_code == 2 and message in r.output, r.output
    assert not (store / "scores").exists()


def test_a_failed_export_leaves_the_earlier_one_as_it_was(store: Path, tmp_path: Path) -> None:
    st = Store(store)
    score_store(st)
    out = tmp_path / "out"
    r = invoke("export", "tiers", str(out), "--store", str(store))
    assert r.exit_code == 0, r.output
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert any(p.name == "tier4_sft_native.json" for p in before)
    sft = next(u for u in st.units() if u.manifest["task"]["name"] == "sft")
    (st.scores_dir / sft.run_id / "all_checks_pass_rate@1.arrow").unlink()
    r = invoke("export", "tiers", str(out), "--store", str(store))
    assert r.exit_code != 0 and "per-prompt all_checks_pass_rate scores" in r.output
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before

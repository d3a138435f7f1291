"""The lm_eval task family against lm-evaluation-harness itself, on the same tiny model and local data.

Default tier (fast): the requests rescore builds through lm-eval's task objects are lm-eval's own (prompts,
few-shot examples, generation kwargs), and the bad inputs are one line, exit 2.

Slow tier: a panel of 16 lm-eval task configs over all four output types (multiple_choice, loglikelihood,
loglikelihood_rolling, generate_until; an MMLU group of two subjects; GSM8K 5-shot with lm-eval's default
sampler and with a chat template and ``fewshot_as_multiturn``; BBH with its few-shot prompts and regex
filters) runs through ``lm_eval.simple_evaluate`` (hf model, ``log_samples``) and through ``rescore gen`` +
``score`` + ``export lm-eval``: every metric of lm-eval's results JSON is equal (within 1e-6 relative) and
every generated response identical.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import cli, invoke

pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LIMIT = 6


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _local(test: str, **extra: Any) -> dict[str, Any]:
    """lm-eval config overrides that point a task at one local JSONL file as its test split."""
    return {"dataset_path": "json", "dataset_name": None, "dataset_kwargs": {"data_files": {"test": test, **extra}},
            "test_split": "test", "validation_split": None, "training_split": None}


def panel(d: Path) -> dict[str, dict[str, Any]]:
    """rescore task name -> {task: lm-eval task, dataset: overrides, include_path, chat, multiturn}."""
    from test_score_lm_eval_parity import write_rows

    from rescore.tasks.schemas import convert
    from rescore.tasks.sources import read_local

    files = write_rows(d / "rows", SHARED)
    arc_c = [r for r in read_local(SHARED / "arc_challenge" / "arc_challenge.jsonl") if len(set(r["choices"])) == len(r["choices"])]
    obqa = convert("obqa_tsv", read_local(SHARED / "openbookqa" / "test.tsv", "tsv"), "obqa")
    gsm = str(SHARED / "gsm8k" / "test.jsonl")
    gsm_local = {"dataset_path": "json", "dataset_name": None,
                 "dataset_kwargs": {"data_files": {"test": gsm, "train": str(SHARED / "gsm8k" / "train.jsonl")}}}

    def bbh(name: str) -> str:
        return _jsonl(d / "rows" / f"bbh_{name}.jsonl", json.loads((SHARED / "bbh" / f"{name}.json").read_text())["examples"])

    short = {"generation_kwargs": {"until": ["</s>", "Q:", "\n\n"], "do_sample": False, "temperature": 0.0, "max_gen_toks": 40}}
    p: dict[str, dict[str, Any]] = {
        "arc_easy": {"dataset": _local(str(files["arc_easy"]))},
        "arc_challenge": {"dataset": _local(_jsonl(d / "rows" / "arc_c.jsonl", convert("llm_foundry", arc_c[:40], "arc")))},
        "hellaswag": {"dataset": _local(str(files["hellaswag"]))},
        "piqa": {"dataset": _local(str(files["piqa"]))},
        "winogrande": {"dataset": _local(str(files["winogrande"]))},
        "openbookqa": {"dataset": _local(_jsonl(d / "rows" / "obqa.jsonl", obqa[:40]))},
        "commonsense_qa": {"dataset": _local(str(SHARED / "commonsense_qa" / "dev_rand_split.jsonl"))},
        "mmlu_two": {"include_path": str(_mmlu_group(d / "mmlu_tasks"))},
        "lambada_openai": {"dataset": _local(str(SHARED / "lambada_openai" / "lambada_test.jsonl"))},
        "wikitext": {"dataset": _local(str(files["wikitext"]))},
        "gsm8k": {"dataset": gsm_local},
        "gsm8k-chat": {"task": "gsm8k", "dataset": gsm_local, "chat": True, "multiturn": True, "num_fewshot": 2},
        "bbh_cot_fewshot_boolean_expressions": {"dataset": {**_local(bbh("boolean_expressions")), **short}},
        "bbh_cot_zeroshot_sports_understanding": {"dataset": {**_local(bbh("sports_understanding")), **short}},
        "bbh_zeroshot_web_of_lies": {"dataset": {**_local(bbh("web_of_lies")), **short}},
    }
    if _ifeval_installed():  # IFEval (lm-eval's `ifeval` extra) on prompts none of whose checks need nltk's data
        p["ifeval"] = {"dataset": {**_local(_jsonl(d / "rows" / "ifeval.jsonl", ifeval_rows(punkt=False)[:LIMIT])),
                                   "generation_kwargs": {"until": [], "do_sample": False, "temperature": 0.0,
                                                         "max_gen_toks": 32}}}
    return p


# IFEval checks that tokenize sentences or words with nltk's punkt_tab data (not shipped by any registry)
PUNKT_CHECKS = ("length_constraints:number_sentences", "change_case:capital_word_frequency")


def _ifeval_installed() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("langdetect", "immutabledict"))


def ifeval_rows(*, punkt: bool) -> list[dict[str, Any]]:
    """IFEval prompts from the shared data whose checks need nltk's punkt_tab (punkt=True) or do not."""
    rows = [json.loads(x) for x in (SHARED / "ifeval" / "input_data.jsonl").read_text(encoding="utf-8").splitlines()]
    return [r for r in rows if any(i in PUNKT_CHECKS for i in r["instruction_id_list"]) == punkt]


@pytest.fixture(autouse=True, scope="module")
def _no_nltk_downloads():
    """lm-eval's IFEval module downloads nltk's punkt_tab when it is imported and the data is missing: tests
    never download."""
    import nltk

    with pytest.MonkeyPatch.context() as m:
        m.setattr(nltk, "download", lambda *a, **k: False)
        yield


def _mmlu_group(d: Path) -> Path:
    """A group of two MMLU subjects (lm-eval's MMLU template) over the local CSVs, weighted by size."""
    import lm_eval

    from rescore.tasks.schemas import convert
    from rescore.tasks.sources import read_local

    template = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default" / "_default_template_yaml"
    names = []
    for subject in ("high_school_computer_science", "astronomy"):
        files = {}
        for split in ("test", "dev"):
            rows = convert("mmlu_csv", read_local(SHARED / "mmlu" / split / f"{subject}_{split}.csv", "csv"), "mmlu")
            files[split] = _jsonl(d / f"{subject}_{split}.jsonl", rows)
        name = f"mmlu_two_{subject}"
        names.append(name)
        cfg = {"task": name, "include": str(template), "dataset_path": "json", "dataset_name": None,
               "dataset_kwargs": {"data_files": files},
               "description": f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"}
        (d / f"{name}.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    group = {"group": "mmlu_two", "task": names,
             "aggregate_metric_list": [{"metric": "acc", "aggregation": "mean", "weight_by_size": True}]}
    (d / "mmlu_two.yaml").write_text(yaml.safe_dump(group), encoding="utf-8")
    return d


def suite(d: Path, tasks: dict[str, dict[str, Any]]) -> Path:
    out = []
    for name, t in tasks.items():
        params: dict[str, Any] = {"limit": LIMIT}
        for k in ("task", "dataset", "include_path"):
            if k in t:
                params[k] = t[k]
        if "num_fewshot" in t:
            params["num_fewshot"] = t["num_fewshot"]
        if t.get("multiturn"):
            params["fewshot_as_multiturn"] = True
        out.append({"name": name, "family": "lm_eval", "chat": bool(t.get("chat")), "params": params})
    path = d / "suite.yaml"
    path.write_text(yaml.safe_dump({"name": "lm-eval-panel", "tasks": out}, sort_keys=False), encoding="utf-8")
    return path


def lm_eval_objects(name: str, t: dict[str, Any]) -> Any:
    """lm-eval's own task (or group) object for a panel entry: its registered config merged with the
    overrides by lm-eval's factory."""
    from rescore.tasks.lm_eval.loading import task_manager

    tm = task_manager(t.get("include_path"))
    lm_name = t.get("task", name)
    if "dataset" not in t:
        return tm._load_spec(lm_name), tm
    return tm._factory.build(tm._entry(lm_name), overrides={"task": lm_name, **t["dataset"]}, registry=tm._index), tm


def run_lm_eval(model: Path, entries: dict[str, dict[str, Any]], **kw: Any) -> dict[str, Any]:
    import lm_eval

    objs, tm = [], None
    for name, t in entries.items():
        o, tm = lm_eval_objects(name, t)
        objs.append(o)
    return lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={model},dtype=float32", tasks=objs,
                                   batch_size=4, device="cpu", limit=LIMIT, log_samples=True, task_manager=tm,
                                   fewshot_random_seed=1234, **kw)


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    if a is None or b is None:
        return a is b
    if math.isnan(a) and math.isnan(b):
        return True
    return a == pytest.approx(b, rel=1e-6, abs=1e-12)


# -- slow: the panel --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> dict[str, Any]:
    if not SHARED.is_dir():
        pytest.skip(f"shared data not found at {SHARED}")
    d = tmp_path_factory.mktemp("lm-eval-panel")
    tasks = panel(d)
    plain = {k: v for k, v in tasks.items() if not v.get("chat")}
    chat = {k: v for k, v in tasks.items() if v.get("chat")}
    theirs = run_lm_eval(tiny_model, plain)
    theirs_chat = {k: run_lm_eval(tiny_model, {k: v}, apply_chat_template=True,
                                  fewshot_as_multiturn=bool(v.get("multiturn")), num_fewshot=v.get("num_fewshot"))
                   for k, v in chat.items()}
    store = d / "store"
    r = invoke("gen", str(suite(d, tasks)), "--model", str(tiny_model), "--store", str(store), "--no-progress",
               "--precision", "fp32", "--device", "cpu")
    assert r.exit_code == 0, r.output
    r = invoke("score", "--store", str(store))
    assert r.exit_code == 0, r.output
    r = invoke("export", "lm-eval", str(d / "export"), "--store", str(store))
    assert r.exit_code == 0, r.output
    ours = json.loads(next((d / "export").rglob("results.json")).read_text())
    return {"tasks": tasks, "theirs": theirs, "theirs_chat": theirs_chat, "ours": ours, "store": store}


def _pairs(runs: dict[str, Any]) -> list[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    """(rescore name, lm-eval name, their results entry, our results entry) for every task and group."""
    out = []
    for name, t in runs["tasks"].items():
        theirs = runs["theirs_chat"][name] if t.get("chat") else runs["theirs"]
        lm_name = t.get("task", name)
        res = theirs["results"]
        keys = [lm_name] + [k for k in res if k != lm_name and lm_name == "mmlu_two" and k.startswith("mmlu_two_")]
        for k in keys:
            ours_key = name if k == lm_name else k
            out.append((ours_key, k, res[k], runs["ours"]["results"].get(ours_key, {})))
    return out


@pytest.mark.slow
def test_every_metric_of_every_panel_task_equals_lm_eval(runs: dict[str, Any]) -> None:
    assert len(runs["tasks"]) >= 12
    checked, bad = 0, []
    for ours_key, their_key, theirs, ours in _pairs(runs):
        for k, v in theirs.items():
            if k in ("alias", "name", "sample_len", "sample_count") or "," not in k:
                continue
            if k not in ours:
                bad.append(f"{ours_key}: {k} missing (ours: {sorted(ours)})")
                continue
            want = None if v == "N/A" else v
            got = None if ours[k] == "N/A" else ours[k]
            if "perplexity" in k and got and want:  # exp() of a mean loglikelihood: compared as its log
                got, want = math.log(got), math.log(want)
            if not _close(got, want):
                bad.append(f"{ours_key} ({their_key}) {k}: rescore {got} lm-eval {want}")
            checked += 1
    assert not bad, "\n".join(bad)
    assert checked >= 30


@pytest.mark.slow
def test_every_response_identical(runs: dict[str, Any]) -> None:
    from rescore.artifacts.store import Store

    units = {u.manifest["task"]["name"]: u for u in Store(runs["store"]).units()}
    for name, t in runs["tasks"].items():
        theirs = runs["theirs_chat"][name] if t.get("chat") else runs["theirs"]
        unit = units[name]
        rows = unit.read_table().to_pylist()
        by_key = {(json.loads(r["meta"])["lm_task"], json.loads(r["meta"])["doc_id"]): r for r in rows}
        mine = {k[0] for k in by_key}
        assert mine <= set(theirs["samples"]), (name, mine)
        for lm_task, samples in theirs["samples"].items():
            if lm_task not in mine:
                continue
            seen = set()
            for s in samples:
                if (lm_task, s["doc_id"]) in seen:
                    continue  # one logged sample per filter
                seen.add((lm_task, s["doc_id"]))
                r = by_key[(lm_task, s["doc_id"])]
                if unit.request_type == "generate":
                    assert r["candidates"] == s["resps"][0], (name, s["doc_id"])
                    assert r["prompt"] == s["arguments"][0][0], (name, s["doc_id"])
                elif unit.request_type == "loglikelihood":
                    assert r["choice_sum_logprob"] == pytest.approx([x[0][0] for x in s["resps"]], rel=1e-5, abs=1e-5)
                    assert r["choice_is_greedy"] == [bool(x[0][1]) for x in s["resps"]], (name, s["doc_id"])
                else:
                    assert r["sum_logprob"] == pytest.approx(s["resps"][0][0], rel=1e-5), (name, s["doc_id"])
            assert len(seen) == LIMIT, (name, lm_task)
        assert len(by_key) == LIMIT * len(mine), name


# -- fast: requests and bad input -----------------------------------------------------------------------------
@pytest.mark.slow  # over 5 s on 2 cores: the slow tier (CI runs it too)
def test_requests_are_lm_evals_own(tmp_path: Path) -> None:
    """GSM8K 5-shot (lm-eval's default sampler, seed 1234) and ARC-Easy: rescore's requests carry exactly the
    contexts, continuations and generation kwargs that lm-eval builds."""
    if not SHARED.is_dir():
        pytest.skip("no shared data")
    from rescore.config import TaskConfig
    from rescore.tasks import families

    gsm = {"dataset_path": "json", "dataset_name": None,
           "dataset_kwargs": {"data_files": {"test": str(SHARED / "gsm8k" / "test.jsonl"),
                                             "train": str(SHARED / "gsm8k" / "train.jsonl")}}}
    fam = families.get("lm_eval")
    t = TaskConfig(name="gsm8k", family="lm_eval", params={"limit": 4, "dataset": gsm})
    rows, _ = fam.load_rows(t, None)
    reqs = fam.build_requests(t, rows, [], None)
    task, _ = lm_eval_objects("gsm8k", {"dataset": gsm})
    task.set_fewshot_seed(seed=1234)
    task.build_all_requests(limit=4)
    insts = sorted(task.instances, key=lambda i: i.doc_id)
    assert [r.prompt for r in reqs] == [i.args[0] for i in insts]
    assert len({r.prompt.split("Question:")[1] for r in reqs}) > 1  # the few-shot examples differ per document
    g = fam.gen_config(t, rows)
    assert (g.max_new_tokens, list(g.stop), g.temperature) == (256, insts[0].args[1]["until"], 0.0)
    assert fam.request_type(t, type("D", (), {"rows": rows})()) == "generate"


def test_tasks_lists_lm_evals_tasks_groups_and_tags() -> None:
    r = invoke("tasks", "--lm-eval", "bbh_cot_fewshot_b*", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == [{"name": "bbh_cot_fewshot_boolean_expressions", "kind": "task"}]
    r = invoke("tasks", "--lm-eval", "mmlu_high_school_c")
    assert r.exit_code == 0 and "mmlu_high_school_chemistry\ttask" in r.output
    assert "lm_eval\tfamily" in invoke("tasks").output


def test_a_task_that_needs_trust_remote_code_is_refused() -> None:
    from rescore.config import TaskConfig
    from rescore.errors import ConfigError
    from rescore.tasks import families

    t = TaskConfig(name="xnli_va", family="lm_eval", params={"limit": 2})
    with pytest.raises(ConfigError, match="trust_remote_code") as e:
        families.get("lm_eval").load_rows(t, None)
    assert e.value.exit_code == 2 and "\n" not in e.value.render()


def _bad(tmp_path: Path, task: dict[str, Any], env: dict[str, str] | None = None) -> str:
    from support import assert_one_line_error

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "bad", "tasks": [task]}), encoding="utf-8")
    proc = cli("gen", str(path), "--model", "fake", "--store", str(tmp_path / "store"),
               "--no-progress", env=env)
    err = assert_one_line_error(proc, 2)
    assert len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.slow  # lm-eval indexes its task YAMLs in the subprocess (about 15 s on 2 cores)
def test_unknown_task_names_close_ones(tmp_path: Path) -> None:
    err = _bad(tmp_path, {"name": "gsm8", "family": "lm_eval"})
    assert "gsm8" in err and "gsm8k" in err


@pytest.mark.slow
def test_dataset_neither_local_nor_prepared_while_offline(tmp_path: Path) -> None:
    """``gen --tasks`` (no suite file) with a Hub dataset that is not prepared, offline: one line naming
    ``rescore prepare``, exit 2; the suite made of --tasks and --limit is in the store."""
    from support import assert_one_line_error

    proc = cli("gen", "--tasks", "lambada_openai", "--limit", "2", "--model", "fake", "--store", str(tmp_path / "s"),
               "--no-progress", env={"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
                                     "HF_DATASETS_CACHE": str(tmp_path / "cache")})
    err = assert_one_line_error(proc, 2)
    assert "rescore prepare" in err and len(err.strip().splitlines()) == 1
    (written,) = (tmp_path / "s" / "suites").glob("lm-eval-*.yaml")
    task = yaml.safe_load(written.read_text())["tasks"][0]
    assert task["family"] == "lm_eval" and task["params"] == {"task": "lambada_openai", "limit": 2}


def test_lm_eval_not_installed(tmp_path: Path) -> None:
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "lm_eval").mkdir()
    (hide / "lm_eval" / "__init__.py").write_text("raise ImportError('hidden for the test')\n")
    import os

    err = _bad(tmp_path, {"name": "gsm8k", "family": "lm_eval"},
               env={"PYTHONPATH": f"{hide}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    assert "pip install" in err and "lm-eval" in err


@pytest.mark.slow  # lm-eval indexes its task YAMLs in the subprocess
def test_a_task_that_needs_a_missing_package_names_it(tmp_path: Path) -> None:
    """A task whose code imports a package that is not installed (IFEval's langdetect, say): one line naming
    the package and the lm-eval extra, exit 2."""
    inc = tmp_path / "tasks"
    inc.mkdir()
    (inc / "utils.py").write_text("import rescore_absent_package_for_tests\n\n\ndef process_results(doc, results):\n"
                                  "    return {}\n")
    (inc / "needs_pkg.yaml").write_text(yaml.safe_dump({
        "task": "needs_pkg", "output_type": "generate_until", "dataset_path": "json", "dataset_name": None,
        "dataset_kwargs": {"data_files": {"test": str(tmp_path / "d.jsonl")}}, "test_split": "test",
        "doc_to_text": "q", "doc_to_target": "a", "metric_list": [{"metric": "exact_match"}]})
        + "process_results: !function utils.process_results\n")
    (tmp_path / "d.jsonl").write_text('{"q": "1+1", "a": "2"}\n')
    err = _bad(tmp_path, {"name": "needs_pkg", "family": "lm_eval", "params": {"include_path": str(inc)}})
    assert "needs the Python package 'rescore_absent_package_for_tests'" in err and "lm_eval[ifeval]" in err


@pytest.mark.slow  # IFEval's checks import langdetect and nltk; generation on the tiny model
def test_ifeval_without_nltks_punkt_tab_is_one_line_at_scoring(tmp_path: Path, tiny_model: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """IFEval's sentence and word checks need nltk's punkt_tab, which no package registry ships: generation
    runs, and scoring without the data stops with one line naming the command that installs it."""
    if not (SHARED.is_dir() and _ifeval_installed()):
        pytest.skip("needs the shared data and lm-eval's ifeval extra (langdetect, immutabledict)")
    import nltk

    data = _jsonl(tmp_path / "ifeval.jsonl", ifeval_rows(punkt=True)[:2])
    gen_kwargs = {"until": [], "do_sample": False, "temperature": 0.0, "max_gen_toks": 16}
    path = suite(tmp_path, {"ifeval": {"dataset": {**_local(data), "generation_kwargs": gen_kwargs}}})
    store = tmp_path / "store"
    r = invoke("gen", str(path), "--model", str(tiny_model), "--store", str(store), "--no-progress", "--device", "cpu")
    assert r.exit_code == 0, r.output
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "no-nltk-data")])
    r = invoke("score", "--store", str(store), "--no-progress")
    assert r.exit_code == 2, r.output
    errors = [x for x in r.output.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in r.output, r.output
    assert "'punkt_tab' data" in errors[0] and "python -m nltk.downloader punkt_tab" in errors[0]


def test_prepared_rows_generate_and_score_without_the_data(tmp_path: Path, tiny_model: Path) -> None:
    """``prepare`` freezes lm-eval's documents and prompts into the store: with the data file gone, ``gen``
    runs from them and ``score`` computes lm-eval's metrics (no dataset, no network)."""
    if not SHARED.is_dir():
        pytest.skip("no shared data")
    import shutil

    data = tmp_path / "lambada.jsonl"
    shutil.copy(SHARED / "lambada_openai" / "lambada_test.jsonl", data)
    path = suite(tmp_path, {"lambada_openai": {"dataset": _local(str(data))}})
    # a native multiple-choice task in the same store: lm-eval's metrics stay on the lm_eval unit
    doc = yaml.safe_load(path.read_text())
    doc["data_root"] = str(Path(__file__).resolve().parents[1] / "rescore" / "data")
    doc["tasks"].append({"name": "arc_easy", "family": "multiple_choice",
                         "source": {"path": "arc_easy/arc_easy.jsonl", "split": "test"}, "subset_size": 4,
                         "params": {"prompt": "arc", "schema": "llm_foundry"}})
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    store = tmp_path / "store"
    r = invoke("prepare", str(path), "--store", str(store))
    assert r.exit_code == 0, r.output
    data.unlink()
    r = invoke("gen", str(path), "--model", str(tiny_model), "--store", str(store), "--no-progress", "--device", "cpu")
    assert r.exit_code == 0, r.output
    r = invoke("score", "--store", str(store))
    assert r.exit_code == 0, r.output
    from rescore.artifacts.store import Store
    from rescore.score.engine import read_results

    rows = [x for x in read_results(Store(store)).to_pylist() if x["seed"] == "agg"]
    assert {x["metric"] for x in rows if x["task"] == "arc_easy"} >= {"acc", "acc_norm"}
    assert not [x for x in rows if x["task"] == "arc_easy" and x["metric"].startswith("lm-eval.")]
    res = {(x["metric"], x["subset"]): x for x in rows if x["task"] == "lambada_openai"}
    assert res[("lm-eval.acc", "all")]["n"] == LIMIT
    assert res[("lm-eval.perplexity", "all")]["value"] > 1
    r = invoke("export", "lm-eval", str(tmp_path / "out"), "--store", str(store))
    assert r.exit_code == 0, r.output
    doc = json.loads(next((tmp_path / "out").rglob("results.json")).read_text())
    assert {"acc,none", "perplexity,none", "acc_stderr,none"} <= set(doc["results"]["lambada_openai"])


@pytest.mark.slow  # over 5 s on 2 cores: the slow tier (CI runs it too)
def test_native_gsm8k_with_lm_evals_default_sampler_gives_lm_evals_prompts() -> None:
    """The native gsm8k family with ``fewshot_sampler: lm_eval_default`` builds exactly the prompts of
    lm-eval's built-in ``gsm8k`` 5-shot (its Random(1234) shared across the documents in order); the default
    per-row hash draw does not, which is why the option exists."""
    if not SHARED.is_dir():
        pytest.skip("no shared data")
    from rescore.config import TaskConfig
    from rescore.tasks import families

    n = 30
    t = TaskConfig(name="gsm8k", family="gsm8k", num_fewshot=5,
                   source={"path": str(SHARED / "gsm8k" / "test.jsonl"), "fewshot_path": str(SHARED / "gsm8k" / "train.jsonl")},
                   params={"fewshot_sampler": "lm_eval_default"})
    fam = families.get("gsm8k")
    rows, shots = fam.load_rows(t, None)
    mine = [r.prompt for r in fam.build_requests(t, rows, shots, None)[:n]]
    gsm = {"dataset_path": "json", "dataset_name": None,
           "dataset_kwargs": {"data_files": {"test": str(SHARED / "gsm8k" / "test.jsonl"),
                                             "train": str(SHARED / "gsm8k" / "train.jsonl")}}}
    task, _ = lm_eval_objects("gsm8k", {"dataset": gsm})
    task.set_fewshot_seed(seed=1234)
    task.build_all_requests(limit=n)
    theirs = [i.args[0] for i in sorted(task.instances, key=lambda i: i.doc_id)]
    assert mine == theirs
    hashed = fam.build_requests(t.model_copy(update={"params": {}}), rows, shots, None)[:n]
    assert sum(a.prompt == b for a, b in zip(hashed, theirs, strict=True)) == 0


def test_lm_eval_default_sampler_leaves_the_eval_row_out_as_lm_eval_does() -> None:
    """Few-shot rows drawn from the eval split itself: n + 1 drawn, the eval row removed (lm-eval's rule),
    each draw continuing the one shared generator; a pool too small is a config error."""
    import random

    from rescore.errors import ConfigError
    from rescore.tasks.common import IDX, FewshotDrawer

    pool = [{"q": i, IDX: i} for i in range(10)]
    d = FewshotDrawer("lm_eval_default", 7)
    got = [d.draw(pool, 3, key=str(i), exclude=pool[i]) for i in range(10)]
    rng = random.Random(7)
    want = [[r for r in rng.sample(pool, 4) if r["q"] != i][:3] for i in range(10)]
    assert got == want and all(pool[i] not in g for i, g in enumerate(got))
    with pytest.raises(ConfigError, match="few-shot pool has 10 rows"):
        FewshotDrawer("lm_eval_default", 7).draw(pool, 10, key="0", exclude=pool[0])

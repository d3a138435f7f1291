"""Parity with lm-evaluation-harness, end to end, on the same tiny model and the same rows (CPU, float32).

The same Hugging Face-schema rows (20 per task, cut from ``../shared/data``) go (a) through lm-eval's
own task definitions (its YAML and utils files, copied with ``dataset_path: json``, run offline with
``--include_path`` and ``--log_samples``) and (b) through ``rescore gen`` (hf backend) + ``rescore score``.

- acc and acc_norm are equal per sample on hellaswag, arc_easy, piqa, winogrande and MMLU
  high_school_computer_science (acc_norm is added to the metric list of the last two, which lm-eval
  computes for every multiple-choice task);
- word/byte perplexity and bits per byte agree within 1e-4 relative on WikiText documents;
- GSM8K strict-match and flexible-extract are identical on the same generations (lm-eval's logged
  generations scored by rescore), and per sample where the two runs generated the same text.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml
from support import invoke

pytest.importorskip("lm_eval")
pytest.importorskip("transformers")
pytestmark = pytest.mark.slow  # one live lm-eval run of the tiny model first (about a minute on 2 cores)

ROWS = 20
MC_TASKS = ("hellaswag", "arc_easy", "piqa", "winogrande", "mmlu_hs_cs")
TASKS = MC_TASKS + ("wikitext", "gsm8k")


class _Fn(str):
    """A ``!function`` tag of lm-eval's YAML, kept as is."""


def _load_task_yaml(path: Path) -> dict[str, Any]:
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: _Fn(loader.construct_scalar(node)))
    return yaml.load(path.read_text(encoding="utf-8"), Loader=Loader)


def _dump_task_yaml(doc: dict[str, Any]) -> str:
    class Dumper(yaml.SafeDumper):
        pass

    Dumper.add_representer(_Fn, lambda d, v: d.represent_scalar("!function", str(v)))
    return yaml.dump(doc, Dumper=Dumper, sort_keys=False, allow_unicode=True)


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_rows(d: Path, shared: Path) -> dict[str, Path]:
    """Hugging Face-schema rows of every task (converted from the shared copies with rescore's converters)."""
    from rescore.tasks.schemas import convert
    from rescore.tasks.sources import read_local

    d.mkdir(parents=True, exist_ok=True)
    files = {}
    hs = convert("hellaswag_text", read_local(shared / "hellaswag" / "hellaswag_val_full.txt.bz2", "bz2-hellaswag"),
                 "hellaswag")[:ROWS]
    files["hellaswag"] = _jsonl(d / "hellaswag.jsonl", [{k: v for k, v in r.items() if not k.startswith("_")} for r in hs])
    arc = [r for r in read_local(shared / "arc_easy" / "arc_easy.jsonl") if len(set(r["choices"])) == len(r["choices"])]
    files["arc_easy"] = _jsonl(d / "arc_easy.jsonl", convert("llm_foundry", arc[:ROWS], "arc"))
    files["piqa"] = _jsonl(d / "piqa.jsonl", convert("llm_foundry", read_local(shared / "piqa" / "piqa.jsonl")[:ROWS], "piqa"))
    wino = read_local(shared / "winogrande" / "winogrande.jsonl")[:ROWS]
    files["winogrande"] = _jsonl(d / "winogrande.jsonl", [_winogrande_hf(r) for r in wino])
    mmlu = convert("mmlu_csv", read_local(shared / "mmlu" / "test" / "high_school_computer_science_test.csv", "csv"),
                   "mmlu")[:ROWS]
    files["mmlu_hs_cs"] = _jsonl(d / "mmlu_hs_cs.jsonl", mmlu)
    raw = (shared / "wikitext2" / "wiki.test.raw").read_text(encoding="utf-8").replace("\r", "")
    docs = []
    for art in re.split(r"\n(?= = [^=].* = \n)", "\n" + raw):
        paras = [p for p in art.split("\n") if p.strip()]
        if len(paras) >= 3 and paras[0].startswith(" = "):
            docs.append({"page": "\n".join(paras[:3]) + "\n"})
        if len(docs) == 8:
            break
    files["wikitext"] = _jsonl(d / "wikitext.jsonl", docs)
    files["gsm8k"] = _jsonl(d / "gsm8k.jsonl", [json.loads(x) for x in
                                                 (shared / "gsm8k" / "test.jsonl").read_text().splitlines()[:ROWS]])
    return files


def _winogrande_hf(r: dict[str, Any]) -> dict[str, Any]:
    """llm-foundry's {context_options, continuation, gold} back as {sentence, option1, option2, answer}."""
    a, b = r["context_options"]
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    prefix = a[: a.rfind(" ", 0, i) + 1]
    return {"sentence": prefix + "_ " + r["continuation"], "option1": a[len(prefix):], "option2": b[len(prefix):],
            "answer": str(r["gold"] + 1)}


LM_EVAL_YAML = {
    "hellaswag": ("hellaswag/hellaswag.yaml", ["hellaswag/utils.py"]),
    "arc_easy": ("arc/arc_easy.yaml", []),
    "piqa": ("piqa/piqa.yaml", []),
    "winogrande": ("winogrande/default.yaml", ["winogrande/preprocess_winogrande.py"]),
    "mmlu_hs_cs": ("mmlu/default/_default_template_yaml", []),
    "wikitext": ("wikitext/wikitext.yaml", ["wikitext/preprocess_wikitext.py"]),
    "gsm8k": ("gsm8k/gsm8k.yaml", []),
}
DROP = {"tag", "task", "task_alias", "dataset_path", "dataset_name", "dataset_kwargs", "training_split",
        "validation_split", "test_split", "fewshot_split", "fewshot_config", "include", "num_fewshot"}


def write_lm_eval_tasks(d: Path, files: dict[str, Path]) -> Path:
    """lm-eval's own task definitions pointed at the local rows (zero-shot)."""
    import lm_eval

    src = Path(lm_eval.__file__).parent / "tasks"
    d.mkdir(parents=True, exist_ok=True)
    for name, (yml, extra) in LM_EVAL_YAML.items():
        doc = {k: v for k, v in _load_task_yaml(src / yml).items() if k not in DROP}
        for f in extra:
            shutil.copy(src / f, d / Path(f).name)
        if name == "mmlu_hs_cs":
            doc["description"] = "The following are multiple choice questions (with answers) about high school computer science.\n\n"
        if name in MC_TASKS and not any(m["metric"] == "acc_norm" for m in doc["metric_list"]):
            doc["metric_list"].append({"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True})
        if name == "gsm8k":
            doc["generation_kwargs"]["max_gen_toks"] = 24
        out = {"task": f"{name}_local", "dataset_path": "json",
               "dataset_kwargs": {"data_files": {"test": str(files[name])}}, "test_split": "test", "num_fewshot": 0,
               **doc}
        (d / f"{name}_local.yaml").write_text(_dump_task_yaml(out), encoding="utf-8")
    return d


def run_lm_eval(model: Path, tasks_dir: Path, out: Path) -> Path:
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", HF_DATASETS_CACHE=str(out / "hf-datasets-cache"))
    cmd = [str(Path(sys.executable).parent / "lm_eval"), "run", "--model", "hf",
           "--model_args", f"pretrained={model},dtype=float32", "--tasks", ",".join(f"{t}_local" for t in TASKS),
           "--include_path", str(tasks_dir), "--device", "cpu", "--batch_size", "8",
           "--log_samples", "--output_path", str(out / "run"), "--seed", "0"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"lm-eval failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return next((out / "run").rglob("results_*.json"))


def write_suite(d: Path, files: dict[str, Path]) -> Path:
    mc = {"hellaswag": "hellaswag", "arc_easy": "arc", "piqa": "piqa", "winogrande": "winogrande", "mmlu_hs_cs": "mmlu"}
    tasks: list[dict[str, Any]] = [
        {"name": t.replace("_", "-"), "family": "multiple_choice", "source": {"path": str(files[t])},
         "params": {"prompt": p}} for t, p in mc.items()]
    tasks.append({"name": "wikitext", "family": "ppl_docs", "source": {"path": str(files["wikitext"])},
                  "params": {"text_field": "page", "detokenize": "wikitext"}})
    tasks.append({"name": "gsm8k", "family": "gsm8k", "source": {"path": str(files["gsm8k"])},
                  "gen": {"temperature": 0.0, "max_new_tokens": 24, "stop": ["Question:", "</s>", "<|im_end|>"]}})
    p = d / "parity.yaml"
    p.write_text(yaml.safe_dump({"name": "parity", "seeds": [0], "tasks": tasks}, sort_keys=False))
    return p


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> dict[str, Any]:
    from rescore.tasks import suites  # noqa: F401  (registers the task families)

    shared = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not shared.is_dir():
        pytest.skip(f"shared data not found at {shared}")
    d = tmp_path_factory.mktemp("parity")
    files = write_rows(d / "rows", shared)
    results_json = run_lm_eval(tiny_model, write_lm_eval_tasks(d / "lm_eval_tasks", files), d)
    samples = {}
    for t in TASKS:
        path = next(results_json.parent.glob(f"samples_{t}_local_*.jsonl"))
        samples[t] = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    store = d / "store"
    r = invoke("gen", str(write_suite(d, files)), "--model", str(tiny_model), "--store", str(store),
               "--direct", "--no-progress", "--precision", "fp32", "--device", "cpu")
    assert r.exit_code == 0, r.output
    r = invoke("score", "--store", str(store))
    assert r.exit_code == 0, r.output
    return {"store": store, "results": json.loads(results_json.read_text()), "samples": samples}


def _unit(store: Path, task: str):  # type: ignore[no-untyped-def]
    from rescore.artifacts.store import Store

    return next(u for u in Store(store).units() if u.manifest["task"]["name"] == task)


def _scores(store: Path, task: str, metric: str) -> dict[str, Any]:
    from rescore.artifacts.store import Store
    from rescore.score.engine import read_scores

    t = read_scores(Store(store), _unit(store, task).run_id, metric)
    assert t is not None, (task, metric)
    return dict(zip(t["sample_id"].to_pylist(), t["value"].to_pylist(), strict=True))


@pytest.mark.parametrize("task", MC_TASKS)
def test_acc_and_acc_norm_equal_per_sample(runs: dict[str, Any], task: str) -> None:
    ours = {m: _scores(runs["store"], task.replace("_", "-"), m) for m in ("acc", "acc_norm")}
    theirs = runs["samples"][task]
    assert len(theirs) == ROWS and len(ours["acc"]) == ROWS
    for s in theirs:
        sid = f"{s['doc_id']:08d}"
        for m in ("acc", "acc_norm"):
            assert ours[m][sid] == s[m], f"{task} doc {s['doc_id']} {m}: rescore {ours[m][sid]} lm-eval {s[m]}"
    # and the loglikelihoods behind them
    unit = _unit(runs["store"], task.replace("_", "-"))
    lls = dict(zip(*unit.read_table(columns=["sample_id", "choice_sum_logprob"]).to_pydict().values(), strict=True))
    for s in theirs:
        theirs_ll = [float(r[0][0]) for r in s["resps"]]
        assert lls[f"{s['doc_id']:08d}"] == pytest.approx(theirs_ll, rel=1e-4, abs=1e-4)


def test_wikitext_perplexities_within_1e4(runs: dict[str, Any]) -> None:
    from rescore.artifacts.store import Store
    from rescore.score.engine import read_results

    res = read_results(Store(runs["store"])).to_pylist()
    ours = {r["metric"]: r["value"] for r in res if r["task"] == "wikitext" and r["seed"] == "agg" and r["subset"] == "all"}
    theirs = runs["results"]["results"]["wikitext_local"]
    for m in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        assert ours[m] == pytest.approx(theirs[f"{m},none"], rel=1e-4), m
    # per document: the summed loglikelihood and the word/byte counts
    unit = _unit(runs["store"], "wikitext")
    t = unit.read_table(columns=["sample_id", "sum_logprob", "n_words", "n_bytes"]).to_pylist()
    by_id = {r["sample_id"]: r for r in t}
    for s in runs["samples"]["wikitext"]:
        r = by_id[f"{s['doc_id']:08d}"]
        ll, words = s["word_perplexity"]
        assert r["sum_logprob"] == pytest.approx(ll, rel=1e-4)
        assert (r["n_words"], r["n_bytes"]) == (words, s["byte_perplexity"][1])


def test_gsm8k_strict_and_flexible_identical_on_the_same_generations(runs: dict[str, Any]) -> None:
    from rescore.artifacts.schema import schema_for
    from rescore.score.registry import load_builtin
    from rescore.score.spec import UnitInfo, metrics

    load_builtin()
    rows = {}
    for s in runs["samples"]["gsm8k"]:
        rows.setdefault(s["doc_id"], {"doc": s["doc"], "resp": s["resps"][0][0], "em": {}})
        rows[s["doc_id"]]["em"][s["filter"]] = s["exact_match"]
    ids = sorted(rows)
    assert len(ids) == ROWS
    schema = schema_for("generate")
    table = pa.Table.from_pylist(
        [{"sample_id": f"{i:08d}", "candidates": [rows[i]["resp"]], "target": rows[i]["doc"]["answer"]} for i in ids],
        schema=pa.schema([schema.field(n) for n in ("sample_id", "candidates", "target")]))
    for metric, filt in (("exact_match_strict", "strict-match"), ("exact_match_flexible", "flexible-extract")):
        got = metrics.get(metric).compute(table, UnitInfo("lm-eval", {}))["value"].tolist()
        assert got == [float(rows[i]["em"][filt]) for i in ids], metric
    # the tiny model never answers right, so score answer-bearing variants of each generation with lm-eval's
    # own filters and exact_match (gsm8k.yaml settings) too
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter

    filters = {"strict-match": RegexFilter(regex_pattern=r"#### (\-?[0-9\.\,]+)", group_select=0),
               "flexible-extract": RegexFilter(regex_pattern=r"(-?[$0-9.,]{2,})|(-?[0-9]+)", group_select=-1)}
    variants, refs = [], []
    for i in ids:
        ans = rows[i]["doc"]["answer"].split("####")[-1].strip()
        n = ans.replace(",", "")
        for v in (f"{rows[i]['resp']} #### {ans}", f"The answer is ${int(n):,}.", f"{n}.\n\nQuestion: 7",
                  f"#### {n}.", f"#### -{n}", f"so {n} and 12"):
            variants.append(v)
            refs.append(rows[i]["doc"]["answer"])
    vt = pa.Table.from_pylist(
        [{"sample_id": f"{k:08d}", "candidates": [v], "target": r} for k, (v, r) in enumerate(zip(variants, refs, strict=True))],
        schema=pa.schema([schema.field(n) for n in ("sample_id", "candidates", "target")]))
    for metric, filt in (("exact_match_strict", "strict-match"), ("exact_match_flexible", "flexible-extract")):
        preds = [x[0] for x in filters[filt].apply([[v] for v in variants], [{}] * len(variants))]
        want = [exact_match_hf_evaluate([p], [r], regexes_to_ignore=[",", "\\$", "(?s).*#### ", "\\.$"],
                                        ignore_case=True, ignore_punctuation=False)["exact_match"]
                for p, r in zip(preds, refs, strict=True)]
        got = metrics.get(metric).compute(vt, UnitInfo("lm-eval", {}))["value"].tolist()
        assert got == want, metric
        assert 0 < sum(want) < len(want)  # both right and wrong answers are in the mix
    # rescore's own generations: where the text is the same as lm-eval's, so is every score
    unit = _unit(runs["store"], "gsm8k")
    ours_text = dict(zip(*unit.read_table(columns=["sample_id", "candidates"]).to_pydict().values(), strict=True))
    same = [i for i in ids if ours_text[f"{i:08d}"][0] == rows[i]["resp"]]
    assert len(same) >= ROWS // 2, "rescore's greedy generations should mostly equal lm-eval's"
    for metric, filt in (("exact_match_strict", "strict-match"), ("exact_match_flexible", "flexible-extract")):
        ours = _scores(runs["store"], "gsm8k", metric)
        for i in same:
            assert ours[f"{i:08d}"] == rows[i]["em"][filt], (metric, i)

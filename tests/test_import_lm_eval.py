"""`rescore import lm-eval`: real lm-evaluation-harness output, imported and rescored.

lm-eval runs here on the tiny model over 20 real rows per task (ARC-Easy, Winogrande with partial scoring,
WikiText documents, GSM8K zero-shot), written with --log_samples; `rescore score` must reproduce the numbers
of lm-eval's own results JSON (accuracies exactly, perplexities within 1e-6). A smaller run of the same
script (10 rows per task) is checked in under tests/fixtures/lm_eval/v0.4.13: that output format must stay
importable.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path

import pytest
from support import invoke, tree_hashes

from rescore.artifacts.store import Store
from rescore.score.engine import read_results, read_scores

FIXTURES = Path(__file__).parent / "fixtures" / "lm_eval"
CHECKED_IN = FIXTURES / "v0.4.13"
# lm-eval task -> [(lm-eval metric key, rescore metric, relative tolerance)]
METRICS = {
    "arc_easy_local": [("acc,none", "acc", 0.0), ("acc_norm,none", "acc_norm", 0.0), ("acc_bytes,none", "acc_bytes", 0.0),
                       ("brier_score,none", "brier_score", 1e-9)],
    "winogrande_local": [("acc,none", "acc", 0.0), ("acc_norm,none", "acc_norm", 0.0), ("acc_bytes,none", "acc_bytes", 0.0),
                         ("brier_score,none", "brier_score", 1e-9)],
    "wikitext_local": [("word_perplexity,none", "word_perplexity", 1e-6), ("byte_perplexity,none", "byte_perplexity", 1e-6),
                       ("bits_per_byte,none", "bits_per_byte", 1e-6)],
    "gsm8k_local": [("exact_match,strict-match", "exact_match_strict", 0.0),
                    ("exact_match,flexible-extract", "exact_match_flexible", 0.0)],
}
STDERR = {"acc,none": "acc_stderr,none", "acc_norm,none": "acc_norm_stderr,none", "acc_bytes,none": "acc_bytes_stderr,none",
          "exact_match,strict-match": "exact_match_stderr,strict-match",
          "exact_match,flexible-extract": "exact_match_stderr,flexible-extract"}


def results_json(run: Path) -> dict:
    (path,) = sorted(run.rglob("results_*.json"))
    return json.loads(path.read_text())


def samples(run: Path, task: str) -> list[dict]:
    (path,) = sorted(run.rglob(f"samples_{task}_*.jsonl"))
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def ours(store: Path) -> dict[tuple[str, str], dict]:
    t = read_results(Store(store)).to_pylist()
    return {(r["task"], r["metric"]): r for r in t if r["seed"] == "agg" and r["subset"] == "all"}


def import_and_score(run: Path, store: Path) -> dict[tuple[str, str], dict]:
    r = invoke("import", "lm-eval", str(run), "--store", str(store))
    assert r.exit_code == 0, r.output + r.stderr
    r = invoke("score", "--store", str(store), "--no-progress")
    assert r.exit_code == 0, r.output + r.stderr
    return ours(store)


def assert_equal_to_lm_eval(run: Path, store: Path) -> None:
    expected = results_json(run)["results"]
    got = import_and_score(run, store)
    for task, pairs in METRICS.items():
        for key, metric, rel in pairs:
            want = expected[task][key]
            have = got[(task, metric)]["value"]
            if rel == 0.0:
                assert have == want, f"{task} {metric}: rescore {have} != lm-eval {want}"
            else:
                assert math.isclose(have, want, rel_tol=rel), f"{task} {metric}: rescore {have} != lm-eval {want}"
            if key in STDERR:  # same sample standard error (ddof=1) as lm-eval
                assert math.isclose(got[(task, metric)]["stderr"], expected[task][STDERR[key]], rel_tol=1e-9, abs_tol=1e-12)
            assert got[(task, metric)]["n"] == expected[task]["sample_len"]


# -- the checked-in 0.4.13 output (no lm-eval or torch needed) -----------------------------------------
def test_checked_in_run_rescored_equals_lm_eval(tmp_path):
    assert_equal_to_lm_eval(CHECKED_IN, tmp_path / "store")


def test_manifest_records_model_task_and_checks(tmp_path):
    store = tmp_path / "store"
    import_and_score(CHECKED_IN, store)
    units = {u.manifest["task"]["name"]: u for u in Store(store).units()}
    assert set(units) == set(METRICS)
    arc = units["arc_easy_local"].manifest
    assert arc["request_type"] == "loglikelihood" and arc["suite"] == "lm-eval"
    assert arc["model"]["name"] == "tinym" and arc["model"]["precision"] == "fp32"
    assert arc["model"]["args"]["dtype"] == "float32" and arc["model"]["backend"] == "lm-eval:hf"
    assert arc["task"]["config"]["lm_eval"]["output_type"] == "multiple_choice"
    assert arc["import"]["checks"]["acc"] == {"rows": 10, "disagree": 0}
    assert arc["import"]["checks"]["acc_norm"] == {"rows": 10, "disagree": 0}
    assert len(arc["import"]["sources"]) == 2 and all(len(s["sha256"]) == 64 for s in arc["import"]["sources"])
    assert units["winogrande_local"].manifest["import"]["checks"]["gold_deduced_from_acc"] == 10
    assert units["wikitext_local"].request_type == "rolling"
    gsm = units["gsm8k_local"].manifest
    assert gsm["gen"]["max_new_tokens"] == 24 and gsm["gen"]["temperature"] == 0.0 and gsm["gen"]["n"] == 1
    assert gsm["gen"]["stop"] == ["Question:", "</s>", "<|im_end|>"]
    rows = units["arc_easy_local"].read_table().to_pylist()
    assert all(r["per_token_available"] is False and r["choice_logprobs"] is None for r in rows)
    lm = samples(CHECKED_IN, "arc_easy_local")
    assert [r["choice_sum_logprob"] for r in rows] == [[float(x[0][0]) for x in s["resps"]] for s in lm]
    g = units["gsm8k_local"].read_table().to_pylist()
    first = {s["doc_id"]: s for s in samples(CHECKED_IN, "gsm8k_local")}
    for r in g:
        s = first[int(r["sample_id"])]
        assert r["candidates"] == s["resps"][0] and r["target"] == s["target"]
        assert json.loads(r["meta"])["answer"] == s["doc"]["answer"].split("####")[-1].strip().replace(",", "")


def test_import_is_idempotent_and_leaves_sources_unchanged(tmp_path):
    src = tmp_path / "run"
    shutil.copytree(CHECKED_IN, src)
    before = tree_hashes(src)
    store = tmp_path / "store"
    r1 = invoke("import", "lm-eval", str(src), "--store", str(store), "--json")
    assert r1.exit_code == 0, r1.stderr
    first = json.loads(r1.stdout)["units"]
    assert {u["action"] for u in first} == {"imported"} and len(first) == 4
    gen_before = tree_hashes(store / "gen")
    r2 = invoke("import", "lm-eval", str(src), "--store", str(store), "--json")
    assert r2.exit_code == 0, r2.stderr
    second = json.loads(r2.stdout)["units"]
    assert {u["action"] for u in second} == {"already imported"}
    assert [u["run_id"] for u in second] == [u["run_id"] for u in first]
    assert tree_hashes(store / "gen") == gen_before  # nothing rewritten, nothing duplicated
    # the same files somewhere else are the same runs
    moved = tmp_path / "elsewhere" / "deeper"
    shutil.copytree(src, moved)
    r3 = invoke("import", "lm-eval", str(moved), "--store", str(store), "--json")
    assert {u["action"] for u in json.loads(r3.stdout)["units"]} == {"already imported"}
    assert len(Store(store).units()) == 4
    assert tree_hashes(src) == before


def test_task_filter_and_model_options(tmp_path):
    store = tmp_path / "store"
    r = invoke("import", "lm-eval", str(CHECKED_IN), "--store", str(store), "--task", "arc*", "--model-name", "ckpt-a",
               "--step", "1200", "--stage", "pretrain")
    assert r.exit_code == 0, r.stderr
    (u,) = Store(store).units()
    assert u.manifest["task"]["name"] == "arc_easy_local"
    assert (u.manifest["model"]["name"], u.manifest["model"]["step"], u.manifest["model"]["stage"]) == ("ckpt-a", 1200, "pretrain")


# -- malformed inputs ---------------------------------------------------------------------------------
def _copy(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "run"
    shutil.copytree(CHECKED_IN, src)
    return src, next(src.rglob("samples_arc_easy_local_*.jsonl"))


def _fails(run: Path, store: Path, code: int = 1) -> str:
    r = invoke("import", "lm-eval", str(run), "--store", str(store))
    assert r.exit_code == code, (r.exit_code, r.output, r.stderr)
    err = r.stderr.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err  # one line, no traceback
    assert not (store / "gen").exists() or not list((store / "gen").iterdir()), "nothing may be written"
    return err


def test_truncated_samples_file(tmp_path):
    src, f = _copy(tmp_path)
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 200])
    n = data[: len(data) - 200].count(b"\n") + 1
    err = _fails(src, tmp_path / "store")
    assert f"{f.name}:{n}: the last line is truncated" in err


def test_wrong_keys(tmp_path):
    src, f = _copy(tmp_path)
    lines = f.read_text().splitlines()
    obj = json.loads(lines[2])
    obj["responses"] = obj.pop("resps")
    lines[2] = json.dumps(obj)
    f.write_text("\n".join(lines) + "\n")
    err = _fails(src, tmp_path / "store")
    assert f"{f.name}:3: field 'resps' is missing" in err


def test_bad_value_names_line_and_field(tmp_path):
    src, f = _copy(tmp_path)
    lines = f.read_text().splitlines()
    obj = json.loads(lines[1])
    obj["resps"][2][0][0] = "minus three"
    lines[1] = json.dumps(obj)
    f.write_text("\n".join(lines) + "\n")
    err = _fails(src, tmp_path / "store")
    assert f"{f.name}:2: field 'resps[2][0]' is not a number: 'minus three'" in err


def test_missing_samples_lines_are_detected(tmp_path):
    src, f = _copy(tmp_path)
    lines = f.read_text().splitlines()
    f.write_text("\n".join(lines[:2] + lines[3:]) + "\n")
    err = _fails(src, tmp_path / "store")
    assert "9 docs, but results_" in err and "says lm-eval scored 10" in err


def test_broken_results_json_and_missing_samples(tmp_path):
    src, _ = _copy(tmp_path)
    res = next(src.rglob("results_*.json"))
    good = res.read_bytes()
    res.write_bytes(good[:500])
    assert f"{res.name}: not valid JSON" in _fails(src, tmp_path / "s1")
    res.write_bytes(good)
    for p in src.rglob("samples_*.jsonl"):
        p.unlink()
    assert "--log_samples" in _fails(src, tmp_path / "s2")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no results_*.json found" in _fails(empty, tmp_path / "s3")


# -- a live lm-eval run -------------------------------------------------------------------------------
needs_lm_eval = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None, reason="needs lm-eval (dev extra)")


@pytest.fixture(scope="module")
def live_run(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = importlib.util.spec_from_file_location("make_lm_eval_run", FIXTURES / "make_run.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["make_lm_eval_run"] = mod
    spec.loader.exec_module(mod)
    out = tmp_path_factory.mktemp("lm-eval")
    return mod.main([str(out), "--model", str(tiny_model)])


@pytest.mark.slow  # lm-eval runs the tiny model first (over a minute on 2 cores)
@needs_lm_eval
def test_live_lm_eval_run_rescored_equals_lm_eval(live_run, tmp_path):
    before = tree_hashes(live_run)
    store = tmp_path / "store"
    assert_equal_to_lm_eval(live_run, store)
    assert tree_hashes(live_run) == before
    got = ours(store)
    assert 0.0 < got[("arc_easy_local", "acc")]["value"] < 1.0  # a real mix of right and wrong rows
    # GSM8K row by row: rescore's extracted answers are lm-eval's filtered responses
    units = {u.manifest["task"]["name"]: u for u in Store(store).units()}
    rid = units["gsm8k_local"].run_id
    for metric, flt in (("exact_match_strict", "strict-match"), ("exact_match_flexible", "flexible-extract")):
        t = read_scores(Store(store), rid, metric).to_pylist()
        want = {f"{s['doc_id']:08d}": s["filtered_resps"][0] for s in samples(live_run, "gsm8k_local") if s["filter"] == flt}
        assert {r["sample_id"]: r["answer"] for r in t} == want
        assert any(a != "[invalid]" for a in want.values()) or metric == "exact_match_strict"


@pytest.mark.slow
@needs_lm_eval
def test_gsm8k_answers_scored_like_lm_eval(live_run, tmp_path):
    """The tiny model never solves a GSM8K problem, so give half the docs answers that lm-eval's own filters
    and exact_match count as right (strict, flexible only, or wrong) and compare the rates."""
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter

    run = tmp_path / "run"
    shutil.copytree(live_run, run)
    (path,) = sorted(run.rglob("samples_gsm8k_local_*.jsonl"))
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    forms = [lambda a, t: t, lambda a, t: f"So she makes ${a}.", lambda a, t: f"#### {a}0", lambda a, t: f"{a} apples, #### {a}"]
    for s in lines:
        k = s["doc_id"] % 5
        if k < 4:
            ans = s["doc"]["answer"].split("####")[-1].strip()
            s["resps"] = [[forms[k](ans, s["target"])]]
    cfg = {"strict-match": RegexFilter(r"#### (\-?[0-9\.\,]+)"),
           "flexible-extract": RegexFilter(r"(-?[$0-9.,]{2,})|(-?[0-9]+)", group_select=-1)}
    ignore = [",", "\\$", "(?s).*#### ", "\\.$"]
    by_filter: dict[str, list[float]] = {k: [] for k in cfg}
    for s in lines:
        (pred,) = cfg[s["filter"]].apply([s["resps"][0]], [s["doc"]])[0]
        s["filtered_resps"] = [pred]
        em = exact_match_hf_evaluate([pred], [s["target"]], regexes_to_ignore=ignore, ignore_case=True,
                                     ignore_punctuation=False)["exact_match"]
        s["exact_match"] = float(em)
        by_filter[s["filter"]].append(float(em))
    path.write_text("".join(json.dumps(s) + "\n" for s in lines))
    (rpath,) = sorted(run.rglob("results_*.json"))
    res = json.loads(rpath.read_text())
    for flt, vals in by_filter.items():
        res["results"]["gsm8k_local"][f"exact_match,{flt}"] = sum(vals) / len(vals)
        m = sum(vals) / len(vals)
        res["results"]["gsm8k_local"][f"exact_match_stderr,{flt}"] = math.sqrt(
            sum((v - m) ** 2 for v in vals) / (len(vals) - 1) / len(vals))
    rpath.write_text(json.dumps(res))
    strict = res["results"]["gsm8k_local"]["exact_match,strict-match"]
    flexible = res["results"]["gsm8k_local"]["exact_match,flexible-extract"]
    assert 0 < strict < 1 and 0 < flexible < 1 and strict != flexible
    assert_equal_to_lm_eval(run, tmp_path / "store")


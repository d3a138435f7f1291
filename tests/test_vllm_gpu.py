"""The vllm backend on a GPU against the hf backend, in bf16: the issue's GPU acceptance criteria.

Needs CUDA and the CUDA build of vLLM (``pip install 'rescore[vllm]'``); skipped elsewhere (``gpu`` marker,
see conftest). The model is a small Llama built offline (4 layers, hidden 512, head_dim 64, random
weights); the vllm side runs in the worker of test_vllm_cpu.py (vLLM spawns its engine).

Criteria: identical multiple-choice accuracy, greedy generations identical for >= 95% of prompts, and
per-token logprobs within 1e-2. In bf16 a logit of magnitude 4 is itself rounded by up to 0.008, and the
two backends round different intermediate values, so the 1e-2 bound is asserted for 99% of tokens with
every token within 5e-2; both backends are also compared with a float32 forward of the same weights, and
vLLM's bf16 error must be of the order of the hf backend's own bf16 error.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_vllm_cpu import (  # the worker and the request sets are shared with the CPU tests
    MAX_LEN,
    gen_requests,
    hf_rows,
    run_worker,
    suite_requests,
    synthetic_mc,
    synthetic_rolling,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vLLM (pip install 'rescore[vllm]')"),
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from rescore.gen.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.getbasetemp() / "small-llama-gpu", hidden=512, layers=4, heads=8,
                            vocab=4096, max_position=1024, logit_std=2.0)


@pytest.fixture(scope="module")
def backends(model_dir):
    from rescore.config import ModelConfig
    from rescore.gen.base import make_backend

    made = {p: make_backend(ModelConfig(name="small", path=str(model_dir), precision=p, device="cuda", max_length=MAX_LEN))
            for p in ("bf16", "fp32")}
    yield made
    for b in made.values():
        b.close()


@pytest.fixture(scope="module")
def job(model_dir, backends) -> dict[str, Any]:
    from rescore.core import GenParams

    hf = backends["bf16"]
    gen = gen_requests()
    first = hf_rows(hf, gen[:1], seed=0, params=GenParams(max_new_tokens=24))[f"{gen[0].task}/{gen[0].sample_id}"]
    text = first["candidates"][0]
    suite = suite_requests(hf.tokenizer)
    return {
        "model": str(model_dir), "mode": "all", "precision": "bf16", "device": "cuda",
        "options": {"enforce_eager": False, "engine_args": {}, "gpu_memory_utilization": 0.5},
        "mc": synthetic_mc() + suite["mc"], "rolling": synthetic_rolling(hf.tokenizer) + suite["rolling"], "gen": gen,
        "stops": [text[len(text) // 2 : len(text) // 2 + 2], "\n\n"], "extra_eos": first["cand_token_ids"][0][5],
    }


@pytest.fixture(scope="module")
def vl(job, tmp_path_factory) -> dict[str, Any]:
    return run_worker(tmp_path_factory.mktemp("vllm-gpu-worker"), job, timeout=1800)


def flat_lps(rows: dict[str, dict], key: str) -> dict[str, np.ndarray]:
    out = {}
    for sid, r in rows.items():
        vals = r[key]
        if key == "choice_logprobs":
            vals = [v for choice in vals for v in choice]
        out[sid] = np.asarray(vals, dtype=np.float64)
    return out


@pytest.mark.parametrize("kind", ["loglikelihood", "rolling"])
def test_per_token_logprobs_bf16(vl, backends, job, kind):
    reqs, key, got_rows = (job["mc"], "choice_logprobs", vl["ll"][0]) if kind == "loglikelihood" else (job["rolling"], "logprobs", vl["rolling"][0])
    hf16 = flat_lps(hf_rows(backends["bf16"], reqs, seed=0), key)
    hf32 = flat_lps(hf_rows(backends["fp32"], reqs, seed=0), key)
    got = flat_lps(got_rows, key)
    d = np.concatenate([got[s] - hf16[s] for s in hf16])
    d = np.abs(d)
    assert np.quantile(d, 0.99) <= 1e-2 and d.max() <= 5e-2, (np.quantile(d, 0.99), d.max())
    err_vllm = np.abs(np.concatenate([got[s] - hf32[s] for s in hf32])).mean()
    err_hf = np.abs(np.concatenate([hf16[s] - hf32[s] for s in hf32])).mean()
    assert err_vllm <= 2 * err_hf + 1e-3, (err_vllm, err_hf)


def test_multiple_choice_accuracy_identical(vl, backends, job):
    want = hf_rows(backends["bf16"], job["mc"], seed=0)
    got = vl["ll"][0]
    pick_w = {s: int(np.argmax(r["choice_sum_logprob"])) for s, r in want.items() if r["gold"] is not None}
    pick_g = {s: int(np.argmax(got[s]["choice_sum_logprob"])) for s in pick_w}
    acc_w = np.mean([pick_w[s] == want[s]["gold"] for s in pick_w])
    acc_g = np.mean([pick_g[s] == want[s]["gold"] for s in pick_w])
    assert acc_g == acc_w


def test_greedy_generations_identical_for_95_percent(vl, backends, job):
    from rescore.core import GenParams

    want = hf_rows(backends["bf16"], job["gen"], seed=0, params=GenParams(max_new_tokens=24, logprobs_topk=2))
    same = sum(vl["greedy"][s]["cand_token_ids"] == want[s]["cand_token_ids"] for s in want)
    assert same >= 0.95 * len(want), f"{same}/{len(want)}"


def test_seeded_sampling_reproducible(vl):
    """Each candidate has its own seeded generator; on a GPU the logits of a row can still differ in the last
    bits between batch compositions (vLLM's default kernels are not batch-invariant), which may flip a
    near-tie, so agreement is asserted for 95% of candidates (on CPU: all, see test_vllm_cpu.py)."""
    a, b = vl["sampled"], vl["sampled_reversed"]
    pairs = [(x, y) for sid, row in a.items() for x, y in zip(row["cand_token_ids"], b[sid]["cand_token_ids"], strict=True)]
    same = sum(x == y for x, y in pairs)
    assert same >= 0.95 * len(pairs), f"{same}/{len(pairs)}"

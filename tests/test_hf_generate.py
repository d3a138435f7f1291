"""hf backend, generate: chat templates, seeded sampling invariance, candidates, finish reasons."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from rescore.artifacts.schema import column_names  # noqa: E402
from rescore.config import ModelConfig  # noqa: E402
from rescore.core import GenParams, Request, derive_seed  # noqa: E402
from rescore.errors import BackendError  # noqa: E402
from rescore.gen.base import RunContext, make_backend  # noqa: E402

QUESTIONS = [
    "What is 2 + 2?",
    "Write a haiku about the sea.",
    "List three colours.",
    "Explain gravity in one sentence, please, in very simple words for a child.",
    "Hi",
    "Name a prime number larger than ten.",
    "Translate 'cat' into French.",
    "Give me a JSON object with keys a and b.",
    "Why is the sky blue? Answer briefly.",
    "Count from one to five.",
]


@pytest.fixture(scope="module")
def backend(tiny_model: Path):
    be = make_backend(ModelConfig(name="tiny", path=str(tiny_model)))
    yield be
    be.close()


def chat_requests(n: int = len(QUESTIONS)) -> list[Request]:
    return [
        Request(sample_id=f"{i:04d}", task="chat", request_type="generate", chat=True,
                messages=({"role": "system", "content": "Be brief."}, {"role": "user", "content": q}))
        for i, q in enumerate(QUESTIONS[:n])
    ]


def run_rows(backend, reqs, **ctx_kw) -> dict[str, dict]:
    rows = {}
    for batch in backend.run(reqs, RunContext(**ctx_kw)):
        for r in batch:
            rows[r["sample_id"]] = r
    assert set(rows) == {r.sample_id for r in reqs}
    return rows


SAMPLING = GenParams(temperature=0.9, top_p=0.95, top_k=50, max_new_tokens=12, n=2, logprobs_topk=3)


def test_chat_template_applied_and_stored(backend):
    reqs = chat_requests(2)
    rows = run_rows(backend, reqs, seed=0, params=GenParams(max_new_tokens=4))
    tok = backend.tokenizer
    for r in reqs:
        row = rows[r.sample_id]
        assert set(row) == set(column_names("generate"))
        want = tok.apply_chat_template([dict(m) for m in r.messages], add_generation_prompt=True, tokenize=False)
        assert row["prompt"] == want
        assert want.startswith("<|im_start|>system\nBe brief.<|im_end|>\n") and want.endswith("<|im_start|>assistant\n")
        assert row["prompt_token_ids"] == tok.encode(want)
        assert row["chat"] is True and json.loads(row["messages"]) == [dict(m) for m in r.messages]


def test_raw_prompt_when_chat_is_false(backend):
    r = Request(sample_id="raw", task="t", request_type="generate", prompt="Once upon a time")
    row = run_rows(backend, [r], seed=0, params=GenParams(max_new_tokens=3))["raw"]
    assert row["prompt"] == "Once upon a time" and row["chat"] is False and row["messages"] is None
    assert row["prompt_token_ids"] == backend.tokenizer.encode("Once upon a time")


def test_chat_without_template_is_an_error(tmp_path_factory):
    from rescore.gen.tiny import build_tiny_model

    path = build_tiny_model(tmp_path_factory.mktemp("notemplate") / "m", chat_template=False)
    be = make_backend(ModelConfig(name="plain", path=str(path)))
    assert be.describe()["chat_template_hash"] is None
    with pytest.raises(BackendError, match="no chat template"):
        next(iter(be.run(chat_requests(1), RunContext(seed=0))))


def test_sampling_is_independent_of_batch_size_order_and_resume(backend):
    reqs = chat_requests()
    one = run_rows(backend, reqs, seed=3, params=SAMPLING, batch_size=1)
    eight = run_rows(backend, reqs, seed=3, params=SAMPLING, batch_size=8)
    # a resumed run: only the second half, in reverse order, with a different batch size
    resumed = run_rows(backend, list(reversed(reqs[5:])), seed=3, params=SAMPLING, batch_size=3)
    for other in (eight, resumed):
        for sid, row in other.items():
            ref = one[sid]
            assert row["cand_token_ids"] == ref["cand_token_ids"]
            assert row["candidates"] == ref["candidates"]
            assert row["cand_finish_reason"] == ref["cand_finish_reason"]
            assert row["cand_seed"] == ref["cand_seed"]
            for a, b in zip(row["cand_logprobs"], ref["cand_logprobs"], strict=True):
                np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    r0 = one["0000"]
    assert r0["cand_seed"] == [derive_seed(3, "0000", c) for c in range(2)]
    assert json.loads(r0["sampling"])["temperature"] == 0.9 and r0["seed"] == 3
    other_seed = run_rows(backend, reqs[:3], seed=4, params=SAMPLING, batch_size=8)
    assert any(other_seed[s]["cand_token_ids"] != one[s]["cand_token_ids"] for s in other_seed)


def test_n_candidates_are_distinct(backend):
    p = GenParams(temperature=1.0, max_new_tokens=10, n=4, logprobs_topk=0)
    row = run_rows(backend, chat_requests(1), seed=0, params=p)["0000"]
    assert len(row["candidates"]) == 4 and len(row["cand_seed"]) == 4
    assert len({tuple(t) for t in row["cand_token_ids"]}) == 4
    assert row["cand_topk_ids"] is None


def test_greedy_matches_full_forward_and_transformers_generate(backend):
    p = GenParams(temperature=0.0, max_new_tokens=10, n=2, logprobs_topk=4)
    reqs = chat_requests(4)
    rows = run_rows(backend, reqs, seed=0, params=p, batch_size=4)
    model = backend.model
    for r in reqs:
        row = rows[r.sample_id]
        assert row["cand_token_ids"][0] == row["cand_token_ids"][1]  # greedy candidates are identical
        prompt, gen = row["prompt_token_ids"], row["cand_token_ids"][0]
        assert row["cand_finish_reason"][0] == "length" and len(gen) == 10
        with torch.inference_mode():
            ref = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=10, min_new_tokens=10,
                                 pad_token_id=backend.pad_token_id)
            lp = torch.log_softmax(model(torch.tensor([prompt + gen])).logits[0].float(), -1)[len(prompt) - 1 : -1]
        assert ref[0, len(prompt) :].tolist() == gen
        np.testing.assert_allclose(row["cand_logprobs"][0], lp[np.arange(len(gen)), gen].numpy(), atol=1e-5, rtol=0)
        top_ids = np.array(row["cand_topk_ids"][0])
        np.testing.assert_array_equal(top_ids[:, 0], gen)
        np.testing.assert_allclose(row["cand_topk_logprobs"][0], lp.topk(4, -1).values.numpy(), atol=1e-5)
        assert row["candidates"][0] == backend.tokenizer.decode(gen, skip_special_tokens=True)


def test_sampled_logprobs_are_the_unmodified_model_distribution(backend):
    reqs = chat_requests(2)
    rows = run_rows(backend, reqs, seed=1, params=SAMPLING, batch_size=2)
    for r in reqs:
        row = rows[r.sample_id]
        prompt, gen = row["prompt_token_ids"], row["cand_token_ids"][1]
        with torch.inference_mode():
            lp = torch.log_softmax(backend.model(torch.tensor([prompt + gen])).logits[0].float(), -1)[len(prompt) - 1 : -1]
        np.testing.assert_allclose(row["cand_logprobs"][1], lp[np.arange(len(gen)), gen].numpy(), atol=1e-5, rtol=0)


def test_stop_string_eos_and_length(backend):
    reqs = chat_requests(1)
    base = run_rows(backend, reqs, seed=0, params=GenParams(max_new_tokens=16))["0000"]
    text, toks = base["candidates"][0], base["cand_token_ids"][0]
    assert base["cand_finish_reason"] == ["length"] and len(toks) == 16
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    cut = text.find(stop)
    row = run_rows(backend, reqs, seed=0, params=GenParams(max_new_tokens=16, stop=(stop, "\x00never")))["0000"]
    assert row["cand_finish_reason"] == ["stop"] and row["candidates"] == [text[:cut]]
    n = len(row["cand_token_ids"][0])
    assert row["cand_token_ids"][0] == toks[:n] and n < 16
    assert stop in backend.tokenizer.decode(toks[:n], skip_special_tokens=True)
    assert stop not in backend.tokenizer.decode(toks[: n - 1], skip_special_tokens=True)
    # the 6th greedy token as an end-of-sequence id: generation ends there, the id kept, not in the text
    saved = set(backend.eos_ids)
    backend.eos_ids = saved | {toks[5]}
    try:
        row = run_rows(backend, reqs, seed=0, params=GenParams(max_new_tokens=16))["0000"]
    finally:
        backend.eos_ids = saved
    first = toks.index(toks[5])
    assert row["cand_finish_reason"] == ["eos"] and row["cand_token_ids"][0] == toks[: first + 1]
    assert row["candidates"][0] == backend.tokenizer.decode(toks[:first], skip_special_tokens=True)


def test_progress_counts_tokens(backend):
    seen: list[int] = []
    reqs = chat_requests(3)
    rows = run_rows(backend, reqs, seed=0, params=GenParams(max_new_tokens=5), on_tokens=seen.append)
    prompt_tokens = sum(len(r["prompt_token_ids"]) for r in rows.values())
    assert sum(seen) >= prompt_tokens + 3 * 4


def test_too_many_new_tokens_for_the_context(backend):
    with pytest.raises(BackendError, match="max_new_tokens"):
        next(iter(backend.run(chat_requests(1), RunContext(seed=0, params=GenParams(max_new_tokens=10_000)))))

"""hf backend, loglikelihood and rolling: per-token logprobs equal a plain full forward of the same model."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from rescore.artifacts.schema import column_names  # noqa: E402
from rescore.config import ModelConfig  # noqa: E402
from rescore.core import Request  # noqa: E402
from rescore.gen.base import RunContext, make_backend  # noqa: E402
from rescore.gen.units import rolling_windows  # noqa: E402

WIKI = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext2" / "wiki.test.raw"
MAX_LEN = 64  # a short window so documents span several rolling windows and truncation happens


@pytest.fixture(scope="module")
def backends(tiny_model: Path):
    made = {
        share: make_backend(ModelConfig(name="tiny", path=str(tiny_model), max_length=MAX_LEN, options={"share_prefix": share}))
        for share in (True, False)
    }
    yield made
    for b in made.values():
        b.close()


def mc_requests() -> list[Request]:
    long_ctx = " ".join(["the history of the game and its development"] * 12)  # > MAX_LEN tokens: left truncation
    rows = [
        ("The cat sat on the", (" mat", " hat and a coat", " dog", " floor of the old house")),
        ("Question: what is the capital of France?\nAnswer:", (" Paris", " London", " Berlin is the answer")),
        ("A man is sitting on a roof. He ", ("starts pulling up roofing.", "is ripping level tiles off.", "holds a rope.")),
        ("", ("Tokyo is big", "Paris")),  # empty context: the prefix token conditions
        (long_ctx, (" and more", " of it")),
        ("Single choice context", (" only",)),
    ]
    out = [
        Request(sample_id=f"mc{i}", task="t", request_type="loglikelihood", gold=0,
                contexts=(ctx,) * len(conts), continuations=conts)
        for i, (ctx, conts) in enumerate(rows)
    ]
    # winogrande-style partial scoring: different contexts, the same continuation
    out.append(Request(sample_id="wino", task="t", request_type="loglikelihood", gold=1,
                       contexts=("The trophy doesn't fit into the suitcase because the trophy",
                                 "The trophy doesn't fit into the suitcase because the suitcase"),
                       continuations=(" is too big.",) * 2))
    return out


def full_forward_logprobs(model, inp: list[int], n_scored: int) -> tuple[np.ndarray, np.ndarray]:
    """Log-softmax of one unpadded causal forward: (all [len, vocab], argmax) of the last ``n_scored`` positions."""
    with torch.inference_mode():
        logits = model(torch.tensor([inp])).logits[0].float()
    lp = torch.log_softmax(logits, dim=-1)[len(inp) - n_scored :]
    return lp.numpy(), lp.argmax(-1).numpy()


def run_all(backend, reqs, **kw) -> dict[str, dict]:
    ctx = RunContext(seed=0, **kw)
    rows = {}
    for batch in backend.run(reqs, ctx):
        for r in batch:
            assert r["sample_id"] not in rows
            rows[r["sample_id"]] = r
    assert set(rows) == {r.sample_id for r in reqs}
    return rows


@pytest.mark.parametrize("share", [True, False], ids=["shared-prefix", "per-choice"])
@pytest.mark.parametrize("batch_size", [1, 8])
def test_loglikelihood_equals_full_forward(backends, share, batch_size):
    be = backends[share]
    reqs = mc_requests()
    rows = run_all(be, reqs, batch_size=batch_size, topk=3)
    for r in reqs:
        row = rows[r.sample_id]
        assert set(row) == set(column_names("loglikelihood"))
        for j, (c, x) in enumerate(zip(r.contexts, r.continuations, strict=True)):
            ctx_enc, cont_enc = be.rules.encode_pair(c, x, {})
            assert row["choice_token_ids"][j] == cont_enc
            inp = (ctx_enc + cont_enc)[-(MAX_LEN + 1) :][:-1]
            lp, argmax = full_forward_logprobs(be.model, inp, len(cont_enc))
            want = lp[np.arange(len(cont_enc)), cont_enc]
            np.testing.assert_allclose(row["choice_logprobs"][j], want, atol=1e-5, rtol=0)
            assert row["choice_sum_logprob"][j] == pytest.approx(float(want.sum()), abs=1e-4)
            assert row["choice_is_greedy"][j] == bool((argmax == np.array(cont_enc)).all())
            assert row["choice_n_tokens"][j] == len(cont_enc)
            assert row["choice_n_chars"][j] == len(x) and row["choice_n_bytes"][j] == len(x.encode())
            top_ids = np.array(row["choice_topk_ids"][j])
            top_lps = np.array(row["choice_topk_logprobs"][j])
            assert top_ids.shape == (len(cont_enc), 3)
            np.testing.assert_allclose(top_lps, np.sort(lp, axis=-1)[:, ::-1][:, :3], atol=1e-5)
            np.testing.assert_array_equal(top_ids[:, 0], argmax)
        assert row["per_token_available"] is True


def test_shared_prefix_feeds_fewer_tokens(backends):
    reqs = [r for r in mc_requests() if r.sample_id in ("mc0", "mc1", "mc2")]
    fed = {}
    for share, be in backends.items():
        n = []
        ctx = RunContext(seed=0, on_tokens=n.append)
        for _ in be.run(reqs, ctx):
            pass
        fed[share] = sum(n)
    assert 0 < fed[True] < fed[False]


def test_tokenization_and_values_match_lm_eval(backends):
    """Same (context, continuation) pairs through lm-eval 0.4.x's own HFLM: identical sums and greedy flags."""
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    be = backends[True]
    lm = HFLM(pretrained=be.model, tokenizer=be.tokenizer, batch_size=4, max_length=MAX_LEN)
    reqs = mc_requests()
    pairs = [(c, x) for r in reqs for c, x in zip(r.contexts, r.continuations, strict=True)]
    theirs = lm.loglikelihood([Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)], disable_tqdm=True)
    rows = run_all(be, reqs, batch_size=8)
    ours = [(s, g) for r in reqs for s, g in zip(rows[r.sample_id]["choice_sum_logprob"], rows[r.sample_id]["choice_is_greedy"], strict=True)]
    for (s1, g1), (s2, g2) in zip(ours, theirs, strict=True):
        assert s1 == pytest.approx(s2, abs=1e-4)
        assert g1 == g2
    docs = [WIKI.read_text(encoding="utf-8")[a : a + n] for a, n in ((0, 900), (5000, 200), (20000, 1500))]
    theirs_roll = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (d,), i) for i, d in enumerate(docs)], disable_tqdm=True)
    rows = run_all(be, [Request(sample_id=f"d{i}", task="t", request_type="rolling", text=d) for i, d in enumerate(docs)])
    for i, want in enumerate(theirs_roll):
        assert rows[f"d{i}"]["sum_logprob"] == pytest.approx(want, rel=1e-6)


def rolling_requests() -> list[Request]:
    text = WIKI.read_text(encoding="utf-8")
    docs = [text[:1200], text[3000:3050], text[9000:9800]]
    reqs = [Request(sample_id=f"doc{i}", task="t", request_type="rolling", text=d) for i, d in enumerate(docs)]
    ids = tuple(range(10, 10 + MAX_LEN))
    reqs.append(Request(sample_id="win0", task="t", request_type="rolling", token_ids=ids, score_from=0, n_bytes=99, n_words=7))
    reqs.append(Request(sample_id="win1", task="t", request_type="rolling", token_ids=ids[:40], score_from=16))
    return reqs


@pytest.mark.parametrize("batch_size", [1, 8])
def test_rolling_equals_full_forward(backends, batch_size):
    be = backends[True]
    reqs = rolling_requests()
    rows = run_all(be, reqs, batch_size=batch_size, topk=2)
    for r in reqs:
        row = rows[r.sample_id]
        assert set(row) == set(column_names("rolling"))
        if r.token_ids is None:
            tokens = be.tok_encode(r.text)
            windows = rolling_windows(tokens, be.prefix_token_id, MAX_LEN)
            assert len(windows) == -(-len(tokens) // MAX_LEN)
            assert row["n_bytes"] == len(r.text.encode())
            assert row["n_words"] == len(re.split(r"\s+", r.text))
        else:
            ids, s = list(r.token_ids), r.score_from
            windows = [([be.prefix_token_id] if s == 0 else ids[:s], ids[s:])]
            tokens = ids[s:]
        assert row["token_ids"] == tokens and row["n_tokens"] == len(tokens)
        want, ent, top = [], [], []
        for ctx, pred in windows:
            inp = (ctx + pred)[-(MAX_LEN + 1) :][:-1]
            lp, _ = full_forward_logprobs(be.model, inp, len(pred))
            want.append(lp[np.arange(len(pred)), pred])
            ent.append(-(np.exp(lp) * lp).sum(-1))
            top.append(np.sort(lp, axis=-1)[:, ::-1][:, :2])
        np.testing.assert_allclose(row["logprobs"], np.concatenate(want), atol=1e-5, rtol=0)
        np.testing.assert_allclose(row["entropy"], np.concatenate(ent), atol=1e-4)
        np.testing.assert_allclose(row["topk_logprobs"], np.concatenate(top), atol=1e-5)
        assert row["sum_logprob"] == pytest.approx(float(np.concatenate(want).astype(np.float64).sum()), abs=1e-3)
    assert rows["win0"]["n_bytes"] == 99 and rows["win0"]["n_words"] == 7
    doc = reqs[0].text
    assert rows["doc0"]["n_bytes"] == len(doc.encode()) and rows["doc0"]["prompt"] == doc


def test_rolling_windows_match_lm_eval():
    lm_utils = pytest.importorskip("lm_eval.utils")
    for n in (0, 1, 5, 63, 64, 65, 200, 257):
        toks = list(range(100, 100 + n))
        want = [lm_utils.make_disjoint_window(w) for w in lm_utils.get_rolling_token_windows(toks, 7, 64, 1)]
        assert rolling_windows(toks, 7, 64) == want


def test_packed_window_past_context_is_an_error(backends):
    from rescore.errors import BackendError

    r = Request(sample_id="x", task="t", request_type="rolling", token_ids=tuple(range(MAX_LEN + 5)), score_from=4)
    with pytest.raises(BackendError, match="exceeds the model's context"):
        run_all(backends[True], [r])


def test_no_topk_columns_are_null(backends):
    rows = run_all(backends[True], mc_requests()[:1] + rolling_requests()[:1])
    assert rows["mc0"]["choice_topk_ids"] is None and rows["mc0"]["choice_topk_logprobs"] is None
    assert rows["doc0"]["topk_ids"] is None and rows["doc0"]["entropy"] is None


def test_is_argmax_first_index_wins():
    from rescore.gen.hf import _is_argmax

    lp = torch.tensor([[0.0, 1.0, 1.0], [2.0, 0.0, 1.0], [0.0, 0.0, 3.0], [5.0, 5.0, 0.0]])
    t = torch.tensor([1, 2, 2, 1])
    chosen = lp.gather(1, t[:, None])[:, 0]
    assert _is_argmax(lp, chosen, t).tolist() == (lp.argmax(-1) == t).tolist() == [True, False, True, False]


def test_greedy_continuation_is_flagged(backends):
    be = backends[True]
    ctx = "The game began development in"
    ids = be.tok_encode(ctx)
    with torch.inference_mode():
        for _ in range(3):
            ids.append(int(be.model(torch.tensor([ids])).logits[0, -1].argmax()))
    cont = be.tokenizer.decode(ids[len(be.tok_encode(ctx)) :])
    r = Request(sample_id="g", task="t", request_type="loglikelihood", contexts=(ctx, ctx), continuations=(cont, " zzz"))
    row = run_all(be, [r])["g"]
    if row["choice_token_ids"][0] != ids[len(be.tok_encode(ctx)) :]:
        pytest.skip("greedy tokens do not survive a decode/encode round trip with this tokenizer")
    assert row["choice_is_greedy"] == [True, False]

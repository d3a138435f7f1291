"""Seeded generation: our own decode loop with a KV cache, over any engine that implements :class:`Decoder`.

Why not ``model.generate()``: it draws from one global RNG per batch, so a candidate's tokens would depend
on its batch neighbours, the batch size and where a run resumed. Here every candidate has its own
``torch.Generator`` (CPU, seeded with ``derive_seed(run seed, sample_id, candidate)``) that it alone
draws from, one uniform per generated token, so its tokens depend only on its prompt, the model and the
sampling parameters.

- Sampling: temperature, then top-k, then top-p (transformers' logits warpers, applied row-wise), then
  inverse-CDF sampling with the candidate's uniform. Temperature 0 is greedy (argmax of the raw logits);
  greedy candidates of one prompt are identical, so only one is computed and copied.
- Stored logprobs (chosen token and top-k alternatives) come from the *unmodified* model distribution:
  ``log_softmax`` of the raw logits in float32, before temperature, top-k or top-p.
- Prompts: see :meth:`rescore.gen.units.RequestRules.generation_prompts` (chat template, lm-eval
  encoding, left truncation).
- Finish reasons: ``eos`` (an eos id of the tokenizer or generation config was produced; it is kept in
  the token ids, not in the text), ``stop`` (a stop string appeared in the decoded text: the text is cut
  before it, the token ids end with the token that completed it), ``length`` (max_new_tokens or the
  context window reached). Text is decoded with ``skip_special_tokens=True`` (vLLM's default).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from rescore.config import ModelConfig
from rescore.core import GenParams, Request, derive_seed
from rescore.gen.base import RunContext
from rescore.gen.rows import Candidate, generate_row
from rescore.gen.units import RequestRules


class Decoder(Protocol):
    """What the decode loop needs from an engine (the hf backend is one): the request rules, the ids
    that end a candidate, and two forward passes that return float32 logits of the last position."""

    cfg: ModelConfig
    rules: RequestRules
    eos_ids: set[int]
    pad_token_id: int
    device: Any  # torch.device the inputs go to

    def prefill(self, ids: Any, attention_mask: Any, position_ids: Any) -> tuple[Any, Any]:
        """Run left-padded prompts ``[B, P]``; return (the decoding state, e.g. a KV cache; logits ``[B, V]``)."""
        ...

    def extend(self, state: Any, ids: Any, attention_mask: Any, position_ids: Any) -> Any:
        """Feed one more token per row (``ids`` ``[B, 1]``; the mask covers every position so far);
        return the logits ``[B, V]`` of the new position."""
        ...


def run_generate(decoder: Decoder, reqs: Sequence[Request], ctx: RunContext) -> Iterator[list[dict[str, Any]]]:
    """Rows of the generate requests ``reqs``; only the pending ones (see :class:`RunContext`)."""
    p = ctx.params
    prompts, prompt_ids = decoder.rules.generation_prompts(reqs, p.max_new_tokens, decoder.cfg)
    cands: list[Candidate] = []
    for i, r in enumerate(reqs):
        for c in range(1 if p.greedy else p.n):
            cands.append(Candidate(i, c, prompt_ids[i], derive_seed(ctx.seed, r.sample_id, c)))
    # Batches are planned from every request's candidates, stored or not, and a batch runs whole when it
    # holds a pending candidate: padding, the shared KV cache and the token budget (it depends on the
    # batch's longest prompt) are those of an uninterrupted run (see rescore.gen.base).
    wanted = {i for i, r in enumerate(reqs) if r.sample_id not in ctx.done}
    left = {i: (1 if p.greedy else p.n) for i in wanted}
    done: dict[int, list[Candidate]] = {i: [] for i in wanted}
    for batch in _plan(cands, ctx.batch_size, ctx.max_batch_tokens, p.max_new_tokens):
        if not any(c.owner in wanted for c in batch):
            continue
        decode_batch(decoder, batch, p, ctx)
        rows = []
        for cand in batch:
            if cand.owner not in wanted:
                continue
            done[cand.owner].append(cand)
            left[cand.owner] -= 1
            if left[cand.owner] == 0:
                i = cand.owner
                rows.append(generate_row(reqs[i], prompts[i], prompt_ids[i], sorted(done.pop(i), key=lambda c: c.index),
                                         ctx))
        if rows:
            yield rows


def _plan(cands: list[Candidate], batch_size: int, max_batch_tokens: int, max_new: int) -> list[list[Candidate]]:
    order = sorted(cands, key=lambda c: (-len(c.prompt_ids), c.owner, c.index))
    batches: list[list[Candidate]] = []
    cur: list[Candidate] = []
    for c in order:
        width = (len(cur[0].prompt_ids) if cur else len(c.prompt_ids)) + max_new
        if cur and (len(cur) >= batch_size or (len(cur) + 1) * width > max_batch_tokens):
            batches.append(cur)
            cur = []
        cur.append(c)
    if cur:
        batches.append(cur)
    return batches


def _warpers(p: GenParams) -> list[Any]:
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    out: list[Any] = []
    if p.greedy:
        return out
    if p.temperature != 1.0:
        out.append(TemperatureLogitsWarper(float(p.temperature)))
    if p.top_k > 0:
        out.append(TopKLogitsWarper(p.top_k))
    if p.top_p < 1.0:
        out.append(TopPLogitsWarper(p.top_p))
    return out


def decode_batch(decoder: Decoder, batch: list[Candidate], p: GenParams, ctx: RunContext) -> None:
    """Generate every candidate of ``batch`` in place (left-padded prompts, one decoding state)."""
    import torch

    tok, dev = decoder.rules.tokenizer, decoder.device
    B = len(batch)
    P = max(len(c.prompt_ids) for c in batch)
    ids = torch.full((B, P), decoder.pad_token_id, dtype=torch.long)
    attn = torch.zeros((B, P), dtype=torch.long)
    for b, c in enumerate(batch):
        n = len(c.prompt_ids)
        ids[b, P - n :] = torch.tensor(c.prompt_ids)
        attn[b, P - n :] = 1
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    ids, attn, pos = ids.to(dev), attn.to(dev), pos.to(dev)
    gens = [torch.Generator(device="cpu").manual_seed(c.seed) for c in batch]
    warpers = _warpers(p)
    budget = min(p.max_new_tokens, decoder.rules.max_length - P)
    active = [True] * B
    with torch.inference_mode():
        state, logits = decoder.prefill(ids, attn, pos)
        k = min(p.logprobs_topk, logits.shape[-1])
        ctx.on_tokens(int(attn.sum()))
        for step in range(budget):
            lp = torch.log_softmax(logits, dim=-1)
            if p.greedy:
                nxt = logits.argmax(-1)
            else:
                scores = logits
                for w in warpers:
                    scores = w(None, scores)
                probs = torch.softmax(scores, dim=-1)
                u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in gens]).to(dev)
                cdf = probs.double().cumsum(-1)
                x = (u * cdf[:, -1]).unsqueeze(-1)
                nxt = torch.searchsorted(cdf, x, right=True).squeeze(-1).clamp(max=probs.shape[-1] - 1)
            chosen = lp.gather(1, nxt[:, None])[:, 0].cpu().tolist()
            nxt_l = nxt.cpu().tolist()
            if k:
                tv_t, ti_t = lp.topk(k, dim=-1)
                tv, ti = tv_t.cpu().tolist(), ti_t.cpu().tolist()
            for b, c in enumerate(batch):
                if not active[b]:
                    continue
                c.token_ids.append(nxt_l[b])
                c.logprobs.append(chosen[b])
                if k:
                    c.topk_ids.append(ti[b])
                    c.topk_logprobs.append(tv[b])
                active[b] = not _finished(c, tok, decoder.eos_ids, p, last=step == budget - 1)
            if not any(active):
                break
            attn = torch.cat([attn, torch.ones((B, 1), dtype=attn.dtype, device=dev)], dim=1)
            pos = pos[:, -1:] + 1
            logits = decoder.extend(state, nxt[:, None], attn, pos)
            ctx.on_tokens(sum(active))
    for c in batch:
        if c.finish_reason is None:  # stopped by the context window before max_new_tokens
            c.finish_reason = "length"
            c.text = tok.decode(c.token_ids, skip_special_tokens=True)


def _finished(c: Candidate, tok: Any, eos_ids: set[int], p: GenParams, *, last: bool) -> bool:
    if c.token_ids[-1] in eos_ids:
        c.text = tok.decode(c.token_ids[:-1], skip_special_tokens=True)
        c.finish_reason = "eos"
        return True
    if p.stop or last:
        text = tok.decode(c.token_ids, skip_special_tokens=True)
        hits = [i for i in (text.find(s) for s in p.stop if s) if i >= 0]
        if hits:
            c.text = text[: min(hits)]
            c.finish_reason = "stop"
            return True
        if last:
            c.text = text
            c.finish_reason = "length"
            return True
    return False


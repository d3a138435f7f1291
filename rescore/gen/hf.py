"""The transformers backend (``backend: hf``): loglikelihood, rolling and generate on CPU or GPU.

Tokenization follows lm-evaluation-harness 0.4.x ``hf`` (``HFLM``) so that results can match it:

- ``tok_encode(s)`` uses the tokenizer's default special tokens (Llama-style tokenizers add BOS), except
  when ``s`` already starts with the prefix token's text.
- loglikelihood: trailing spaces of the context move to the continuation; ``whole = enc(ctx + cont)``,
  ``ctx_enc = enc(ctx)``, ``cont_enc = whole[len(ctx_enc):]``; an empty context is the prefix token
  (BOS, else EOS). The model sees ``(ctx_enc + cont_enc)[-(max_length + 1):][:-1]``.
- rolling documents: ``enc(text)`` cut into lm-eval's disjoint rolling windows of ``max_length`` with the
  prefix token in front of the first window.

Multiple-choice rows share work: the choices' token sequences ``ctx_j + cont_j[:-1]`` have a common
prefix (the context, at least), which is fed once, followed by each choice's remaining tokens as its
own segment. A 4D attention mask lets a segment see the shared prefix and itself only, and position ids
restart after the prefix, so each token gets exactly the attention it would get in a per-choice forward.
Only the hidden states at scored positions go through the LM head and log-softmax.

Generation is our own decode loop (see :mod:`rescore.gen.sampling`): one seeded generator per candidate.

Stored per token: the target's logprob (float32, from the float32 log-softmax of the model's logits),
and, when the task asks for ``topk > 0``, the top-k alternatives and (rolling) the entropy of the
next-token distribution.

Backend options (``ModelConfig.options``, besides the loader's): ``share_prefix`` (default true; off
automatically under attention implementations that take no custom mask, e.g. flash_attention_2).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rescore.config import ModelConfig
from rescore.core import Request, canonical_json
from rescore.errors import BackendError, ConfigError
from rescore.gen.base import RunContext
from rescore.gen.loading import load_model

HF_OPTIONS = ("share_prefix",)
HEAD_CHUNK = 2048  # scored positions projected through the LM head at once (bounds N x vocab memory)


# ---------------------------------------------------------------------------------------------------------
# Work units: one model sequence each, with the spans of positions whose next tokens are scored.
@dataclass
class Span:
    slot: int  # choice index (loglikelihood) or window index (rolling)
    positions: list[int]  # indices into Unit.tokens whose logits predict ``targets``
    targets: list[int]


@dataclass
class Unit:
    owner: int  # index of the request in the run's list
    tokens: list[int]
    spans: list[Span]
    position_ids: list[int] | None = None  # None: 0..len-1
    segments: list[int] | None = None  # None: plain causal; else 0 = shared prefix, k > 0 = choice segment


@dataclass
class SpanResult:
    logprobs: np.ndarray  # float32 [n]
    greedy: bool
    topk_ids: list[list[int]] | None = None
    topk_logprobs: list[list[float]] | None = None
    entropy: list[float] | None = None


@dataclass
class _Pending:
    remaining: int
    results: dict[int, SpanResult] = field(default_factory=dict)


def rolling_windows(tokens: list[int], prefix_token: int, max_len: int) -> list[tuple[list[int], list[int]]]:
    """lm-eval's ``get_rolling_token_windows(context_len=1)`` followed by ``make_disjoint_window``."""
    out: list[tuple[list[int], list[int]]] = []
    if not tokens:
        return out
    first = min(max_len, len(tokens))
    out.append(([prefix_token], tokens[:first]))
    predicted = first
    while predicted < len(tokens):
        n = min(len(tokens) - predicted, max_len)
        end = predicted + n
        ctx = tokens[end - max_len - 1 : end - 1]
        out.append((ctx[: len(ctx) - (n - 1)], tokens[end - n : end]))
        predicted += n
    return out


def lm_eval_n_words(text: str) -> int:
    """Word count as lm-eval's perplexity tasks compute it (``len(re.split(r"\\s+", doc))``)."""
    return len(re.split(r"\s+", text))


def loglikelihood_row(r: Request, conts: list[list[int]], shared: list[int] | None, out: list[SpanResult], *,
                      topk: int) -> dict[str, Any]:
    """The artifact row of a loglikelihood request from its choices' scored spans; shared with vLLM."""
    same_ctx = all(c == r.contexts[0] for c in r.contexts)
    row = r.base_row()
    row.update(
        prompt=r.contexts[0] if same_ctx and r.contexts else None,
        prompt_token_ids=shared,
        contexts=list(r.contexts),
        choices=list(r.continuations),
        choice_token_ids=conts,
        choice_logprobs=[o.logprobs.tolist() for o in out],
        choice_sum_logprob=[float(o.logprobs.astype(np.float64).sum()) for o in out],
        choice_is_greedy=[o.greedy for o in out],
        choice_n_tokens=[len(c) for c in conts],
        choice_n_chars=[len(c) for c in r.continuations],
        choice_n_bytes=[len(c.encode("utf-8")) for c in r.continuations],
        choice_topk_ids=[o.topk_ids for o in out] if topk else None,
        choice_topk_logprobs=[o.topk_logprobs for o in out] if topk else None,
        per_token_available=True,
    )
    return row


def rolling_row(r: Request, target: list[int], parts: list[SpanResult], tok: Any, *, topk: int,
                entropy: bool) -> dict[str, Any]:
    """The artifact row of a rolling request from its scored spans (in order); shared with the vLLM backend."""
    lps = np.concatenate([p.logprobs for p in parts]) if parts else np.zeros(0, np.float32)
    text = r.text if r.token_ids is None else None
    scored_text = text if text is not None else tok.decode(target)
    row = r.base_row()
    row.update(
        prompt=text,
        prompt_token_ids=list(r.token_ids) if r.token_ids is not None else None,
        token_ids=target,
        logprobs=lps.tolist(),
        sum_logprob=float(lps.astype(np.float64).sum()),
        n_tokens=len(target),
        n_bytes=r.n_bytes if r.n_bytes is not None else len(scored_text.encode("utf-8")),
        n_words=r.n_words if r.n_words is not None else lm_eval_n_words(scored_text),
        topk_ids=[t for p in parts for t in (p.topk_ids or [])] if topk else None,
        topk_logprobs=[t for p in parts for t in (p.topk_logprobs or [])] if topk else None,
        entropy=[e for p in parts for e in (p.entropy or [])] if entropy else None,
        per_token_available=True,
    )
    return row


class HFBackend:
    name = "hf"

    def __init__(self, cfg: ModelConfig) -> None:
        import torch

        self.cfg = cfg
        bad = {k: v for k, v in cfg.options.items() if k == "share_prefix" and not isinstance(v, bool)}
        if bad:
            raise ConfigError(f"model {cfg.name!r}: option share_prefix must be true or false", hint="e.g. share_prefix: false")
        loaded = load_model(cfg, extra_options=HF_OPTIONS)
        self.model, self._tok, self.info = loaded.model, loaded.tokenizer, loaded.info
        self.torch = torch
        self.device = torch.device(self.info["device"])
        self.max_length: int = int(self.info["max_length"])
        # Shared-prefix packing needs a custom 4D mask, which sdpa and eager attention take (flash does not).
        attn = getattr(self.model.config, "_attn_implementation", "sdpa")
        self.share_prefix: bool = bool(cfg.options.get("share_prefix", True)) and attn in ("sdpa", "eager")
        tok = self._tok
        self.prefix_token_id: int = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        if self.prefix_token_id is None:
            raise BackendError(f"tokenizer of {cfg.path!r} has neither a bos nor an eos token", hint="fix the tokenizer config")
        self._prefix_text = tok.decode([self.prefix_token_id])
        self.pad_token_id: int = tok.pad_token_id if tok.pad_token_id is not None else self.prefix_token_id
        self.eos_ids = self._eos_ids()
        self._mask_dtype = next(self.model.parameters()).dtype
        if not self._mask_dtype.is_floating_point:
            self._mask_dtype = torch.float32
        self._head_path = self._check_head_path()

    # -- Backend protocol --------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        return self._tok

    def describe(self) -> dict[str, Any]:
        return dict(self.info, prefix_token_id=self.prefix_token_id, share_prefix=self.share_prefix)

    def close(self) -> None:
        self.model = None
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()

    def run(self, requests: Sequence[Request], ctx: RunContext) -> Iterator[list[dict[str, Any]]]:
        by_type: dict[str, list[Request]] = {}
        for r in requests:
            by_type.setdefault(r.request_type, []).append(r)
        for rt, reqs in by_type.items():
            if rt == "loglikelihood":
                yield from self._run_loglikelihood(reqs, ctx)
            elif rt == "rolling":
                yield from self._run_rolling(reqs, ctx)
            elif rt == "generate":
                from rescore.gen.sampling import run_generate

                yield from run_generate(self, reqs, ctx)
            else:
                raise ValueError(f"unknown request type {rt!r}")

    # -- tokenization (lm-eval HFLM rules) ---------------------------------------------------------------
    def tok_encode(self, text: str) -> list[int]:
        if self._prefix_text and text.startswith(self._prefix_text):
            return list(self._tok.encode(text, add_special_tokens=False))
        return list(self._tok.encode(text))

    def encode_pair(self, context: str, continuation: str, cache: dict[str, list[int]]) -> tuple[list[int], list[int]]:
        def enc(s: str) -> list[int]:
            if s not in cache:
                cache[s] = self.tok_encode(s)
            return cache[s]

        if context == "":
            cont = list(self._tok.encode(continuation, add_special_tokens=False))
            if cont and cont[0] == self.prefix_token_id:
                return cont[:1], cont[1:]
            return [self.prefix_token_id], cont
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        ctx_enc = enc(context)
        whole = self.tok_encode(context + continuation)
        return ctx_enc, whole[len(ctx_enc) :]

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        if self._tok.eos_token_id is not None:
            ids.add(int(self._tok.eos_token_id))
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if isinstance(gen_eos, int):
            ids.add(gen_eos)
        elif gen_eos:
            ids.update(int(i) for i in gen_eos)
        return ids

    # -- loglikelihood -----------------------------------------------------------------------------------
    def loglikelihood_units(self, owner: int, r: Request, cache: dict[str, list[int]]) -> tuple[list[Unit], list[list[int]], list[int] | None]:
        """Units for one multiple-choice request, the continuation tokens per choice, and the shared
        context tokens (None when the choices' contexts tokenize differently)."""
        if len(r.contexts) != len(r.continuations):
            raise BackendError(f"request {r.sample_id!r}: {len(r.contexts)} contexts but {len(r.continuations)} continuations",
                               hint="a task must give one context per choice")
        pairs = [self.encode_pair(c, x, cache) for c, x in zip(r.contexts, r.continuations, strict=True)]
        ctx_encs = [p[0] for p in pairs]
        conts = [p[1] for p in pairs]
        shared_ctx = ctx_encs[0] if all(c == ctx_encs[0] for c in ctx_encs) else None
        too_long = any(len(c) + len(x) > self.max_length + 1 for c, x in pairs)
        if self.share_prefix and not too_long and len(pairs) > 1:
            return [self._shared_unit(owner, pairs)], conts, shared_ctx
        units = []
        for j, (c, x) in enumerate(pairs):
            if not x:
                units.append(Unit(owner, [], [Span(j, [], [])]))
                continue
            inp = (c + x)[-(self.max_length + 1) :][:-1]
            n = len(inp)
            units.append(Unit(owner, inp, [Span(j, list(range(n - len(x), n)), x)]))
        return units, conts, shared_ctx

    @staticmethod
    def _shared_unit(owner: int, pairs: list[tuple[list[int], list[int]]]) -> Unit:
        """One sequence: the common prefix of every choice's input ``ctx + cont[:-1]``, then each choice's rest."""
        seqs = [c + x[:-1] if x else list(c) for c, x in pairs]
        p = 0
        shortest = min(len(s) for s in seqs)
        while p < shortest and all(s[p] == seqs[0][p] for s in seqs):
            p += 1
        tokens = list(seqs[0][:p])
        position_ids = list(range(p))
        segments = [0] * p
        spans = []
        for j, ((c, x), s) in enumerate(zip(pairs, seqs, strict=True)):
            offset = len(tokens)
            rest = s[p:]
            tokens += rest
            position_ids += range(p, p + len(rest))
            segments += [j + 1] * len(rest)
            # sequence index i of this choice's own input lives at i (shared) or offset + i - p (segment)
            idx = [i if i < p else offset + i - p for i in range(len(c) - 1, len(c) - 1 + len(x))]
            spans.append(Span(j, idx, list(x)))
        return Unit(owner, tokens, spans, position_ids, segments)

    def _run_loglikelihood(self, reqs: list[Request], ctx: RunContext) -> Iterator[list[dict[str, Any]]]:
        cache: dict[str, list[int]] = {}
        units: list[Unit] = []
        meta: list[tuple[list[list[int]], list[int] | None]] = []
        for i, r in enumerate(reqs):
            us, conts, shared = self.loglikelihood_units(i, r, cache)
            units += us
            meta.append((conts, shared))

        def make_row(i: int, res: dict[int, SpanResult]) -> dict[str, Any]:
            conts, shared = meta[i]
            return loglikelihood_row(reqs[i], conts, shared, [res[j] for j in range(len(reqs[i].continuations))],
                                     topk=ctx.topk)

        yield from self._score(units, reqs, ctx, make_row, entropy=False, greedy=True)

    # -- rolling -----------------------------------------------------------------------------------------
    def rolling_units(self, owner: int, r: Request) -> tuple[list[Unit], list[int]]:
        """Units for one rolling request and the scored target tokens, in order."""
        L = self.max_length
        if r.token_ids is not None:
            ids = list(r.token_ids)
            s = r.score_from
            if not 0 <= s < len(ids):
                raise BackendError(f"request {r.sample_id!r}: score_from {s} outside its {len(ids)} tokens",
                                   hint="packed windows need 0 <= score_from < len(token_ids)")
            inp = [self.prefix_token_id] + ids[:-1] if s == 0 else ids[:-1]
            if len(inp) > L:
                raise BackendError(f"request {r.sample_id!r}: packed window of {len(ids)} tokens exceeds the model's "
                                   f"context of {L}", hint="pack windows of at most max_length tokens")
            first = 0 if s == 0 else s - 1
            return [Unit(owner, inp, [Span(0, list(range(first, len(inp))), ids[s:])])], ids[s:]
        tokens = self.tok_encode(r.text or "")
        units = []
        for w, (c, pred) in enumerate(rolling_windows(tokens, self.prefix_token_id, L)):
            inp = (c + pred)[-(L + 1) :][:-1]
            n = len(inp)
            units.append(Unit(owner, inp, [Span(w, list(range(n - len(pred), n)), pred)]))
        return units, tokens

    def _run_rolling(self, reqs: list[Request], ctx: RunContext) -> Iterator[list[dict[str, Any]]]:
        units: list[Unit] = []
        targets: list[list[int]] = []
        for i, r in enumerate(reqs):
            us, tg = self.rolling_units(i, r)
            if not us:  # empty document: nothing to score
                us = [Unit(i, [], [Span(0, [], [])])]
            units += us
            targets.append(tg)
        want_entropy = ctx.topk > 0

        def make_row(i: int, res: dict[int, SpanResult]) -> dict[str, Any]:
            return rolling_row(reqs[i], targets[i], [res[w] for w in sorted(res)], self._tok, topk=ctx.topk,
                               entropy=want_entropy)

        yield from self._score(units, reqs, ctx, make_row, entropy=want_entropy, greedy=False)

    # -- the scoring engine ------------------------------------------------------------------------------
    def _score(self, units: list[Unit], reqs: Sequence[Request], ctx: RunContext, make_row: Any, *, entropy: bool,
               greedy: bool) -> Iterator[list[dict[str, Any]]]:
        """Run the planned batches of ``units`` and yield each pending request's row once all its units are
        scored. Batches are planned from every request, stored or not (see :mod:`rescore.gen.base`): a batch
        whose requests are all stored is skipped, any other runs whole and its stored requests' results are
        dropped, so every computed value comes from the batch an uninterrupted run computes it in."""
        wanted = {i for i, r in enumerate(reqs) if r.sample_id not in ctx.done}
        pending = {i: _Pending(0) for i in wanted}
        for u in units:
            if u.owner in pending:
                pending[u.owner].remaining += 1
        empty = [u for u in units if not u.tokens and u.owner in pending]
        real = [u for u in units if u.tokens]
        rows: list[dict[str, Any]] = []
        for u in empty:
            for sp in u.spans:
                pending[u.owner].results[sp.slot] = SpanResult(np.zeros(0, np.float32), True, [], [], [])
            pending[u.owner].remaining -= 1
            if pending[u.owner].remaining == 0:
                rows.append(make_row(u.owner, pending.pop(u.owner).results))
        if rows:
            yield rows
        for batch in plan_batches(real, ctx.batch_size, ctx.max_batch_tokens):
            if not any(u.owner in pending for u in batch):
                continue
            results = self.score_batch(batch, ctx.topk, entropy, greedy)
            ctx.on_tokens(sum(len(u.tokens) for u in batch))
            rows = []
            for u, res in zip(batch, results, strict=True):
                p = pending.get(u.owner)
                if p is None:  # a stored request's unit, computed only to keep the batch as planned
                    continue
                for sp, sr in zip(u.spans, res, strict=True):
                    p.results[sp.slot] = sr
                p.remaining -= 1
                if p.remaining == 0:
                    rows.append(make_row(u.owner, pending.pop(u.owner).results))
            if rows:
                yield rows

    def score_batch(self, batch: list[Unit], topk: int, entropy: bool, greedy: bool = True) -> list[list[SpanResult]]:
        """One forward pass over ``batch`` (right-padded); per unit, per span, the scored values."""
        torch = self.torch
        dev = self.device
        B, L = len(batch), max(len(u.tokens) for u in batch)
        ids = torch.full((B, L), self.pad_token_id, dtype=torch.long)
        pos = torch.zeros((B, L), dtype=torch.long)
        seg = torch.full((B, L), -1, dtype=torch.long)  # -1 = padding
        for b, u in enumerate(batch):
            n = len(u.tokens)
            ids[b, :n] = torch.tensor(u.tokens)
            pos[b, :n] = torch.tensor(u.position_ids) if u.position_ids is not None else torch.arange(n)
            seg[b, :n] = torch.tensor(u.segments) if u.segments is not None else 0
        # Plain causal sequences need no mask: right padding comes after every real token, so a causal
        # model never attends to it (and no mask keeps the fast causal attention kernels).
        mask = segment_mask(seg, self._mask_dtype) if any(u.segments is not None for u in batch) else None
        b_idx, p_idx, tgt = [], [], []
        for b, u in enumerate(batch):
            for sp in u.spans:
                b_idx += [b] * len(sp.positions)
                p_idx += sp.positions
                tgt += sp.targets
        with torch.inference_mode():
            stats = self._scored_stats(ids.to(dev), None if mask is None else mask.to(dev), pos.to(dev),
                                       torch.tensor(b_idx), torch.tensor(p_idx), torch.tensor(tgt, dtype=torch.long),
                                       greedy=greedy, topk=topk, entropy=entropy)
        chosen = stats["chosen"].numpy()
        is_greedy = stats["greedy"].numpy() if greedy else None
        ti = stats["topk_ids"].tolist() if topk else None
        tv = stats["topk_logprobs"].tolist() if topk else None
        ent = stats["entropy"].tolist() if entropy else None
        out: list[list[SpanResult]] = []
        k = 0
        for u in batch:
            res = []
            for sp in u.spans:
                sl = slice(k, k + len(sp.positions))
                res.append(SpanResult(
                    logprobs=chosen[sl].astype(np.float32),
                    greedy=bool(is_greedy[sl].all()) if is_greedy is not None else False,
                    topk_ids=ti[sl] if ti is not None else None,
                    topk_logprobs=tv[sl] if tv is not None else None,
                    entropy=ent[sl] if ent is not None else None,
                ))
                k += len(sp.positions)
            out.append(res)
        return out

    def _scored_stats(self, ids: Any, mask: Any, pos: Any, b_idx: Any, p_idx: Any, tgt: Any, *, greedy: bool,
                      topk: int, entropy: bool) -> dict[str, Any]:
        """Per scored position (CPU tensors): the target's logprob, whether it is the argmax, top-k, entropy.

        The hidden states at the scored positions go through the LM head and a float32 log-softmax in
        chunks of HEAD_CHUNK positions, reduced right away (no [N, vocab] tensor for the whole batch)."""
        torch = self.torch
        if self._head_path:
            hidden = self.model.base_model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).last_hidden_state
            h = hidden[b_idx.to(hidden.device), p_idx.to(hidden.device)]
            head = self.model.get_output_embeddings()

            def chunk_lp(a: int, b: int) -> Any:
                return self._finish_logits(head(h[a:b]))
        else:
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
            sel = logits[b_idx.to(logits.device), p_idx.to(logits.device)]

            def chunk_lp(a: int, b: int) -> Any:
                return torch.log_softmax(sel[a:b].float(), dim=-1)

        n = len(tgt)
        parts: dict[str, list[Any]] = {"chosen": [], "greedy": [], "topk_ids": [], "topk_logprobs": [], "entropy": []}
        for a in range(0, n, HEAD_CHUNK):
            lp = chunk_lp(a, min(n, a + HEAD_CHUNK))
            t = tgt[a : a + HEAD_CHUNK].to(lp.device)
            chosen = lp.gather(1, t[:, None])[:, 0]
            parts["chosen"].append(chosen.cpu())
            if greedy:
                parts["greedy"].append(_is_argmax(lp, chosen, t).cpu())
            if topk:
                tv, ti = lp.topk(min(topk, lp.shape[-1]), dim=-1)
                parts["topk_logprobs"].append(tv.cpu())
                parts["topk_ids"].append(ti.cpu())
            if entropy:
                parts["entropy"].append((-(lp.exp() * lp).sum(-1)).cpu())
        empty = {"chosen": torch.zeros(0), "greedy": torch.zeros(0, dtype=torch.bool),
                 "topk_ids": torch.zeros((0, topk), dtype=torch.long), "topk_logprobs": torch.zeros((0, topk)),
                 "entropy": torch.zeros(0)}
        return {k: torch.cat(v) if v else empty[k] for k, v in parts.items()}

    def _finish_logits(self, logits: Any) -> Any:
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        logits = logits.float()
        if cap:
            logits = self.torch.tanh(logits / cap) * cap
        return self.torch.log_softmax(logits, dim=-1)

    def _check_head_path(self) -> bool:
        """Use base model + LM head at scored positions only if that equals the model's own logits here
        (models that scale or post-process logits in forward fall back to full logits)."""
        torch = self.torch
        try:
            head = self.model.get_output_embeddings()
            base = self.model.base_model
            if head is None or base is self.model:
                return False
            ids = torch.tensor([[self.prefix_token_id, *range(1, 8)]], device=self.device) % self.model.config.vocab_size
            with torch.inference_mode():
                full = torch.log_softmax(self.model(input_ids=ids).logits.float(), dim=-1)[0]
                mine = self._finish_logits(head(base(input_ids=ids).last_hidden_state[0]))
            return bool(torch.allclose(full, mine, atol=1e-4, rtol=1e-4))
        except Exception:
            return False


def _is_argmax(lp: Any, chosen: Any, t: Any) -> Any:
    """``lp.argmax(-1) == t`` (first index wins ties, as in lm-eval), computed as a max (about 10x cheaper
    than argmax on CPU) with argmax only for the rows where the target reaches the max."""
    hit = chosen == lp.amax(-1)
    rows = hit.nonzero()[:, 0]
    if len(rows):
        hit[rows] = lp[rows].argmax(-1) == t[rows]
    return hit


def segment_mask(seg: Any, dtype: Any) -> Any:
    """Additive 4D mask [B, 1, L, L]: query q sees key k <= q when k is in the shared prefix (segment 0) or in
    q's own segment; padding (segment -1) is never seen. Additive (0 / dtype min) so every attention
    implementation reads it the same way, and rows never end up fully masked (no NaN)."""
    import torch

    L = seg.shape[1]
    causal = torch.ones((L, L), dtype=torch.bool).tril()
    sk = seg[:, None, :]
    sq = seg[:, :, None]
    allowed = causal[None] & (sk >= 0) & ((sk == 0) | (sk == sq))
    allowed |= torch.eye(L, dtype=torch.bool)[None]  # padding queries attend to themselves (output unused)
    mask = torch.zeros(allowed.shape, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def plan_batches(units: list[Unit], batch_size: int, max_batch_tokens: int) -> list[list[Unit]]:
    """Longest first (lm-eval's order: memory errors show up at once), at most ``batch_size`` sequences and
    ``max_batch_tokens`` padded tokens per batch (a longer single sequence runs alone)."""
    order = sorted(units, key=lambda u: (-len(u.tokens), u.owner))
    batches: list[list[Unit]] = []
    cur: list[Unit] = []
    for u in order:
        width = len(cur[0].tokens) if cur else len(u.tokens)
        if cur and (len(cur) >= batch_size or (len(cur) + 1) * width > max_batch_tokens):
            batches.append(cur)
            cur = []
        cur.append(u)
    if cur:
        batches.append(cur)
    return batches


def messages_json(r: Request) -> str | None:
    return canonical_json([dict(m) for m in r.messages]) if r.messages else None

"""The transformers backend (``backend: hf``): loglikelihood, rolling and generate on CPU or GPU.

The request rules (lm-evaluation-harness ``HFLM`` tokenisation, loglikelihood units with a shared
prefix, rolling windows) are :mod:`rescore.gen.units`, the rows :mod:`rescore.gen.rows`; this module is the
engine that scores units with a transformers model.

Multiple-choice rows share work: the choices' token sequences ``ctx_j + cont_j[:-1]`` have a common
prefix (the context, at least), which is fed once, followed by each choice's remaining tokens as its
own segment. A 4D attention mask lets a segment see the shared prefix and itself only, and position ids
restart after the prefix, so each token gets exactly the attention it would get in a per-choice forward.
Only the hidden states at scored positions go through the LM head and log-softmax.

Identical sequences of a batch run once: when left-truncation to max_length leaves several choices of a
request with the same input (one-token continuations after a long few-shot prompt, MMLU 5-shot at 256), the
batch plan counts them as one sequence and the forward pass feeds it once (``score_batch``). A batch without
such twins, and every batch of a unit that stores distributions, runs as it would without this.

Generation is the seeded decode loop of :mod:`rescore.gen.sampling`, with this backend as its :class:`Decoder`.

Stored per token: the target's logprob (float32, from the float32 log-softmax of the model's logits),
and, when the task asks for ``topk > 0``, the top-k alternatives and (rolling) the entropy of the
next-token distribution.

The checkpoint comes from ``ModelConfig.loader`` (:mod:`rescore.gen.loaders`; ``hf`` by default: transformers
``save_pretrained`` directories). Backend options (``ModelConfig.options``, besides the loader's,
:class:`HFOptions`): ``share_prefix`` (default true; off automatically under attention implementations
that take no custom mask, e.g. flash_attention_2).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from rescore.config import ModelConfig
from rescore.core import Request
from rescore.gen.base import RunContext, backend, backend_and_loader_options
from rescore.gen.dist import count_positions, dist_arrays, empty_array, row_dist, selected
from rescore.gen.loaders import loaders
from rescore.gen.rows import RowCollector, loglikelihood_row, rolling_row
from rescore.gen.sampling import run_generate
from rescore.gen.units import RequestRules, SpanResult, Unit, eos_ids, plan_batches, sequence_key
from rescore.params import Params

HEAD_CHUNK = 2048  # scored positions projected through the LM head at once (bounds N x vocab memory)


class HFOptions(Params):
    """Options of the ``hf`` backend (its loader's come on top)."""

    share_prefix: bool = True  # one sequence per multiple-choice row (see the module docstring)


@backend("hf", options=HFOptions, loader=True)
class HFBackend:
    stores_dist = True  # stores the distributions a task's dist asks for (rescore.gen.dist)

    @classmethod
    def check(cls, cfg: ModelConfig) -> None:
        _, loader_opts = backend_and_loader_options(cls, cfg)
        loaders.get(cfg.loader).check(cfg, loader_opts)

    def __init__(self, cfg: ModelConfig) -> None:
        import torch

        self.cfg = cfg
        opts, loader_opts = backend_and_loader_options(self, cfg)
        loaded = loaders.get(cfg.loader)(cfg, loader_opts)
        self.model, self._tok, self.info = loaded.model, loaded.tokenizer, loaded.info
        self.torch = torch
        self.device = torch.device(loaded.device)
        self.max_length: int = loaded.max_length
        # Shared-prefix packing needs a custom 4D mask, which sdpa and eager attention take (flash does not).
        attn = getattr(getattr(self.model, "config", None), "_attn_implementation", "sdpa")
        self.share_prefix: bool = opts.share_prefix and attn in ("sdpa", "eager")
        tok = self._tok
        self.rules = RequestRules(tok, self.max_length, share_prefix=self.share_prefix, model_path=cfg.path)
        self.prefix_token_id = self.rules.prefix_token_id
        self.pad_token_id: int = tok.pad_token_id if tok.pad_token_id is not None else self.prefix_token_id
        self.eos_ids = eos_ids(tok, getattr(self.model, "generation_config", None))
        self._mask_dtype = next(self.model.parameters()).dtype
        if not self._mask_dtype.is_floating_point:
            self._mask_dtype = torch.float32
        self._head_path = self._check_head_path()
        # Identical sequences of a batch run once (see score_batch); False runs every unit as its own row.
        self.dedupe: bool = True
        self.forward_sequences = 0  # rows fed to the model by score_batch so far (what dedupe saves)

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
                yield from run_generate(self, reqs, ctx)
            else:
                raise ValueError(f"unknown request type {rt!r}")

    def dist_positions(self, requests: Sequence[Request], cfg: Any) -> int:
        """How many positions of ``requests`` a task's ``dist`` selects (before anything runs)."""
        return count_positions(self.rules, requests, cfg)

    @property
    def dist_vocab(self) -> int:
        return self._vocab()

    def tok_encode(self, text: str) -> list[int]:
        return self.rules.tok_encode(text)

    # -- Decoder protocol (rescore.gen.sampling) ---------------------------------------------------------
    def prefill(self, ids: Any, attention_mask: Any, position_ids: Any) -> tuple[Any, Any]:
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        return cache, self._last_logits(ids, attention_mask, position_ids, cache)

    def extend(self, state: Any, ids: Any, attention_mask: Any, position_ids: Any) -> Any:
        return self._last_logits(ids, attention_mask, position_ids, state)

    def _last_logits(self, ids: Any, attn: Any, pos: Any, cache: Any) -> Any:
        out = self.model(input_ids=ids, attention_mask=attn, position_ids=pos, past_key_values=cache, use_cache=True,
                         logits_to_keep=1)
        return out.logits[:, -1, :].float()

    # -- loglikelihood and rolling -----------------------------------------------------------------------
    def _run_loglikelihood(self, reqs: list[Request], ctx: RunContext) -> Iterator[list[dict[str, Any]]]:
        units, meta = self.rules.loglikelihood_plan(reqs)

        def make_row(i: int, res: dict[int, SpanResult]) -> dict[str, Any]:
            conts, shared = meta[i]
            out = [res[j] for j in range(len(reqs[i].continuations))]
            return self._with_dist(loglikelihood_row(reqs[i], conts, shared, out, topk=ctx.topk), ctx, out)

        starts = {}
        if ctx.dist is not None:
            for i, (conts, _) in enumerate(meta):
                off = np.concatenate([[0], np.cumsum([len(c) for c in conts])])
                starts.update({(i, j): int(off[j]) for j in range(len(conts))})
        yield from self._score(units, reqs, ctx, make_row, entropy=False, greedy=True, starts=starts)

    def _run_rolling(self, reqs: list[Request], ctx: RunContext) -> Iterator[list[dict[str, Any]]]:
        units, targets = self.rules.rolling_plan(reqs)
        want_entropy = ctx.topk > 0

        def make_row(i: int, res: dict[int, SpanResult]) -> dict[str, Any]:
            out = [res[w] for w in sorted(res)]
            return self._with_dist(rolling_row(reqs[i], targets[i], out, self._tok, topk=ctx.topk,
                                               entropy=want_entropy), ctx, out)

        starts: dict[tuple[int, int], int] = {}
        if ctx.dist is not None:
            seen: dict[int, int] = {}
            for u in units:  # a request's windows in order
                for sp in u.spans:
                    starts[(u.owner, sp.slot)] = seen.get(u.owner, 0)
                    seen[u.owner] = seen.get(u.owner, 0) + len(sp.targets)
        yield from self._score(units, reqs, ctx, make_row, entropy=want_entropy, greedy=False, starts=starts)

    def _with_dist(self, row: dict[str, Any], ctx: RunContext, out: list[SpanResult]) -> dict[str, Any]:
        if ctx.dist is not None:
            row["_dist"] = row_dist(ctx.dist, [o.dist for o in out if o.dist is not None], self._vocab())
            row["dist_positions"] = row["_dist"]["positions"].tolist()
        return row

    def _vocab(self) -> int:
        head = self.model.get_output_embeddings()
        return int(head.weight.shape[0]) if head is not None else int(self.model.config.vocab_size)

    # -- the scoring engine ------------------------------------------------------------------------------
    def _score(self, units: list[Unit], reqs: Sequence[Request], ctx: RunContext, make_row: Any, *, entropy: bool,
               greedy: bool, starts: dict[tuple[int, int], int] | None = None) -> Iterator[list[dict[str, Any]]]:
        """Run the planned batches of ``units`` and yield each pending request's row once all its units are
        scored. Batches are planned from every request, stored or not (see :mod:`rescore.gen.base`): a batch
        whose requests are all stored is skipped, any other runs whole and its stored requests' results are
        dropped, so every computed value comes from the batch an uninterrupted run computes it in."""
        rows = RowCollector(units, (i for i, r in enumerate(reqs) if r.sample_id not in ctx.done), make_row)
        dist = None
        if ctx.dist is not None:
            n_scored: dict[int, int] = {}
            for u in units:
                n_scored[u.owner] = n_scored.get(u.owner, 0) + sum(len(sp.targets) for sp in u.spans)
            masks = {i: selected(ctx.dist, r.request_type, r.sample_id, n_scored.get(i, 0)) for i, r in enumerate(reqs)}
            dist = (ctx.dist, starts or {}, masks)
        for u in units:
            if not u.tokens and rows.wants(u.owner):
                rows.add(u, [SpanResult(np.zeros(0, np.float32), True, [], [], []) for _ in u.spans])
        done = rows.take()
        if done:
            yield done
        for batch in plan_batches([u for u in units if u.tokens], ctx.batch_size, ctx.max_batch_tokens,
                                  dedupe=self.dedupe and dist is None):
            if not any(rows.wants(u.owner) for u in batch):
                continue
            results = self.score_batch(batch, ctx.topk, entropy, greedy, dist=dist)
            ctx.on_tokens(sum(len(u.tokens) for u in batch))
            for u, res in zip(batch, results, strict=True):
                rows.add(u, res)  # a stored request's unit is dropped: computed only to keep the batch as planned
            done = rows.take()
            if done:
                yield done

    def score_batch(self, batch: list[Unit], topk: int, entropy: bool, greedy: bool = True,
                    dist: Any = None) -> list[list[SpanResult]]:
        """One forward pass over ``batch`` (right-padded); per unit, per span, the scored values. ``dist``:
        (DistConfig, each span's first token in its row's numbering, each row's selected-positions mask).

        With ``self.dedupe``, units with identical sequences (a left-truncated multiple-choice request's
        one-token choices all see the same last max_length context tokens) share one row of the forward
        pass, and each reads its scored positions from that row; a batch without such twins is unchanged."""
        torch = self.torch
        dev = self.device
        row_of: list[int] = []  # per unit: its row in the forward pass
        firsts: list[Unit] = []  # per row: the first unit that has it
        keys: dict[tuple[Any, ...], int] = {}
        for u in batch:
            key = sequence_key(u) if self.dedupe and dist is None else (len(firsts),)
            if key not in keys:
                keys[key] = len(firsts)
                firsts.append(u)
            row_of.append(keys[key])
        B, L = len(firsts), max(len(u.tokens) for u in batch)
        self.forward_sequences += B
        ids = torch.full((B, L), self.pad_token_id, dtype=torch.long)
        pos = torch.zeros((B, L), dtype=torch.long)
        seg = torch.full((B, L), -1, dtype=torch.long)  # -1 = padding
        for b, u in enumerate(firsts):
            n = len(u.tokens)
            ids[b, :n] = torch.tensor(u.tokens)
            pos[b, :n] = torch.tensor(u.position_ids) if u.position_ids is not None else torch.arange(n)
            seg[b, :n] = torch.tensor(u.segments) if u.segments is not None else 0
        # Plain causal sequences need no mask: right padding comes after every real token, so a causal
        # model never attends to it (and no mask keeps the fast causal attention kernels).
        mask = segment_mask(seg, self._mask_dtype) if any(u.segments is not None for u in batch) else None
        b_idx, p_idx, tgt = [], [], []
        span_sel: list[np.ndarray] = []  # per span: which of its positions keep their distribution
        for b, u in zip(row_of, batch, strict=True):
            for sp in u.spans:
                b_idx += [b] * len(sp.positions)
                p_idx += sp.positions
                tgt += sp.targets
                if dist is not None:
                    s0 = dist[1][(u.owner, sp.slot)]
                    span_sel.append(dist[2][u.owner][s0 : s0 + len(sp.positions)])
        dsel = (dist[0], np.concatenate(span_sel) if span_sel else np.zeros(0, bool)) if dist is not None else None
        inv = None
        if B < len(batch):  # twins score the same positions: each distinct position goes through the head once
            first: dict[tuple[int, int], int] = {}
            inv = np.array([first.setdefault(bp, len(first)) for bp in zip(b_idx, p_idx, strict=True)], np.int64)
            b_idx, p_idx = [bp[0] for bp in first], [bp[1] for bp in first]
        with torch.inference_mode():
            stats = self._scored_stats(ids.to(dev), None if mask is None else mask.to(dev), pos.to(dev),
                                       torch.tensor(b_idx), torch.tensor(p_idx), torch.tensor(tgt, dtype=torch.long),
                                       greedy=greedy, topk=topk, entropy=entropy, dist=dsel, inv=inv)
        chosen = stats["chosen"].numpy()
        is_greedy = stats["greedy"].numpy() if greedy else None
        ti = stats["topk_ids"].tolist() if topk else None
        tv = stats["topk_logprobs"].tolist() if topk else None
        ent = stats["entropy"].tolist() if entropy else None
        out: list[list[SpanResult]] = []
        k = 0
        d_at = 0  # rows of the batch's dist arrays taken so far
        si = 0
        for u in batch:
            res = []
            for sp in u.spans:
                sl = slice(k, k + len(sp.positions))
                span_dist = None
                if dsel is not None:
                    m = span_sel[si]
                    si += 1
                    nd = int(m.sum())
                    s0 = dist[1][(u.owner, sp.slot)]
                    span_dist = (s0 + np.flatnonzero(m), np.asarray(sp.targets)[m],
                                 {key: a[d_at : d_at + nd] for key, a in stats["dist"].items()})
                    d_at += nd
                res.append(SpanResult(
                    logprobs=chosen[sl].astype(np.float32),
                    greedy=bool(is_greedy[sl].all()) if is_greedy is not None else False,
                    topk_ids=ti[sl] if ti is not None else None,
                    topk_logprobs=tv[sl] if tv is not None else None,
                    entropy=ent[sl] if ent is not None else None,
                    dist=span_dist,
                ))
                k += len(sp.positions)
            out.append(res)
        return out

    def _scored_stats(self, ids: Any, mask: Any, pos: Any, b_idx: Any, p_idx: Any, tgt: Any, *, greedy: bool,
                      topk: int, entropy: bool, dist: Any = None, inv: np.ndarray | None = None) -> dict[str, Any]:
        """Per scored position (CPU tensors): the target's logprob, whether it is the argmax, top-k, entropy.

        The hidden states at the scored positions go through the LM head and a float32 log-softmax in
        chunks of HEAD_CHUNK positions, reduced right away (no [N, vocab] tensor for the whole batch).
        ``inv`` (no ``dist``): the positions ``b_idx``/``p_idx`` are distinct and scored position k (target
        ``tgt[k]``) reads position ``inv[k]``."""
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

        n = len(tgt) if inv is None else len(b_idx)
        parts: dict[str, list[Any]] = {"chosen": [], "greedy": [], "topk_ids": [], "topk_logprobs": [], "entropy": []}
        dists: list[dict[str, np.ndarray]] = []
        order = None
        if inv is not None:  # scored positions grouped by the chunk of the position they read, then put back
            order = torch.from_numpy(np.argsort(inv, kind="stable"))
            inv_sorted = torch.from_numpy(inv)[order]
        for a in range(0, n, HEAD_CHUNK):
            lp = chunk_lp(a, min(n, a + HEAD_CHUNK))
            if order is None:
                t = tgt[a : a + HEAD_CHUNK].to(lp.device)
            else:
                ks = ((inv_sorted >= a) & (inv_sorted < a + HEAD_CHUNK)).nonzero()[:, 0]
                lp = lp.index_select(0, (inv_sorted[ks] - a).to(lp.device))
                t = tgt[order[ks]].to(lp.device)
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
            if dist is not None:
                sel = dist[1][a : a + HEAD_CHUNK]
                if sel.all():  # positions: all / answer select every row of the chunk: no copy
                    dists.append(dist_arrays(dist[0], lp))
                elif sel.any():
                    keep = torch.from_numpy(np.flatnonzero(sel)).to(lp.device)
                    dists.append(dist_arrays(dist[0], lp.index_select(0, keep)))
        empty = {"chosen": torch.zeros(0), "greedy": torch.zeros(0, dtype=torch.bool),
                 "topk_ids": torch.zeros((0, topk), dtype=torch.long), "topk_logprobs": torch.zeros((0, topk)),
                 "entropy": torch.zeros(0)}
        out = {k: torch.cat(v) if v else empty[k] for k, v in parts.items()}
        if order is not None:
            back = torch.empty_like(order)
            back[order] = torch.arange(len(order))
            out = {k: v[back] if len(v) else v for k, v in out.items()}
        if dist is not None:
            names = ["logprobs"] if dist[0].topk is None else ["topk_ids", "topk_logprobs", "tail_logmass"]
            out["dist"] = {k: np.concatenate([d[k] for d in dists]) if dists else empty_array(dist[0], k, self._vocab())
                           for k in names}
        return out

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


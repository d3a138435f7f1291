"""Iterative unmasking (masked-diffusion style) over any model that gives next-token logits.

A candidate starts as its prompt followed by ``length`` mask tokens (the *canvas*). Each of ``steps``
denoising steps runs the model over the whole sequence, draws a token for every canvas position from the
model's distribution there, and keeps (unmasks) some of the still-masked positions; the others stay
masked for the next step. After the last step every position holds a token. Two methods choose which
positions a step unmasks:

- ``confidence``: those whose drawn token the model gives the highest probability (ties: the leftmost),
  as in MaskGIT and LLaDA's low-confidence remasking;
- ``random``: the next ones of a random order of the canvas drawn once per candidate.

The model is one that :class:`rescore.gen.Loaded` holds: ``model(input_ids=, attention_mask=,
position_ids=).logits`` are next-token logits, so the token at position ``i`` is drawn from the logits at
``i - 1`` (the "shifted" prediction of diffusion models adapted from autoregressive ones). With
``full_attention`` every position attends to the whole sequence (an additive 4D mask of zeros, which
transformers' sdpa and eager attention take), so a masked position also sees the tokens already unmasked
to its right; without it attention stays causal.

Determinism: each candidate draws from its own ``torch.Generator`` seeded with its seed, the same number
of draws at every step (one uniform per canvas position, plus the random order once), so its tokens
depend only on its prompt, its seed, the model and the parameters: not on other requests, batch sizes
or where a run resumed. The candidates of one prompt run as one model batch of fixed shape.

Stored per token: the logprob of the chosen token under the *unmodified* model distribution (float32
``log_softmax`` of the raw logits, before temperature, top-k or top-p) at the step that unmasked it, and
the top-k alternatives there. They are per-token scores of the sampler, not the likelihood of the
sequence under the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rescore.core import GenParams

METHODS = ("confidence", "random")


@dataclass
class Canvas:
    """One candidate's canvas after the last step, position by position."""

    token_ids: list[int]
    logprobs: list[float]
    topk_ids: list[list[int]] = field(default_factory=list)
    topk_logprobs: list[list[float]] = field(default_factory=list)
    order: list[int] = field(default_factory=list)  # canvas positions in the order they were unmasked


def schedule(length: int, steps: int) -> list[int]:
    """How many positions each step unmasks: ``length`` spread evenly over ``min(steps, length)`` steps
    (the earlier steps take the remainder)."""
    s = max(1, min(steps, length))
    return [length // s + (1 if i < length % s else 0) for i in range(s)]


def _warpers(p: GenParams) -> list[Any]:
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    out: list[Any] = []
    if p.temperature != 1.0:
        out.append(TemperatureLogitsWarper(float(p.temperature)))
    if p.top_k > 0:
        out.append(TopKLogitsWarper(p.top_k))
    if p.top_p < 1.0:
        out.append(TopPLogitsWarper(p.top_p))
    return out


def draw(logits: Any, p: GenParams, gens: Sequence[Any], mask_id: int) -> Any:
    """A token for every position of ``logits`` ``[B, L, V]`` (never the mask token): the argmax when
    greedy, else temperature, top-k and top-p (transformers' warpers) and inverse-CDF sampling with one
    uniform per position from row ``b``'s generator ``gens[b]``."""
    import torch

    scores = logits.clone()
    scores[..., mask_id] = float("-inf")
    if p.greedy:
        return scores.argmax(-1)
    B, L, V = scores.shape
    flat = scores.reshape(B * L, V)
    for w in _warpers(p):
        flat = w(None, flat)
    cdf = torch.softmax(flat, dim=-1).double().cumsum(-1).reshape(B, L, V)
    u = torch.stack([torch.rand(L, generator=g, dtype=torch.float64) for g in gens])
    x = (u * cdf[..., -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, x, right=True).squeeze(-1).clamp(max=V - 1)


def unmask(model: Any, prompt_ids: Sequence[int], seeds: Sequence[int], *, length: int, steps: int, method: str,
           mask_id: int, params: GenParams, full_attention: bool = True, device: Any = "cpu",
           on_tokens: Callable[[int], None] = lambda n: None) -> list[Canvas]:
    """Fill a canvas of ``length`` tokens after ``prompt_ids`` for each seed of ``seeds`` (one candidate
    each, run as one batch) in ``steps`` steps with ``method``; return the canvases in seed order."""
    import torch

    if method not in METHODS:
        raise ValueError(f"unknown unmasking method {method!r} (methods: {', '.join(METHODS)})")
    B, P, L = len(seeds), len(prompt_ids), length
    T = P + L
    x = torch.full((B, T), mask_id, dtype=torch.long)
    x[:, :P] = torch.tensor(list(prompt_ids), dtype=torch.long)
    masked = torch.ones((B, L), dtype=torch.bool)
    lps = torch.zeros((B, L), dtype=torch.float32)
    gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    orders = [torch.randperm(L, generator=g) for g in gens] if method == "random" else None
    unmasked: list[list[int]] = [[] for _ in range(B)]
    k = max(params.logprobs_topk, 0)
    top_ids: list[list[list[int]]] = [[[] for _ in range(L)] for _ in range(B)]
    top_lps: list[list[list[float]]] = [[[] for _ in range(L)] for _ in range(B)]
    pos = torch.arange(T).expand(B, T).to(device)
    if full_attention:
        dtype = next(model.parameters()).dtype
        attn = torch.zeros((B, 1, T, T), dtype=dtype if dtype.is_floating_point else torch.float32, device=device)
    else:
        attn = torch.ones((B, T), dtype=torch.long, device=device)
    done = 0
    with torch.inference_mode():
        for count in schedule(L, steps):
            logits = model(input_ids=x.to(device), attention_mask=attn, position_ids=pos).logits
            logits = logits[:, P - 1 : T - 1].float().cpu()  # [B, L, V]: the prediction of each canvas position
            on_tokens(B * T)
            lp = torch.log_softmax(logits, dim=-1)
            x0 = draw(logits, params, gens, mask_id)
            x0_lp = lp.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
            if k:
                tv, ti = lp.topk(min(k, lp.shape[-1]), dim=-1)
            for b in range(B):
                if orders is not None:
                    chosen = orders[b][done : done + count]
                else:
                    conf = x0_lp[b].masked_fill(~masked[b], float("-inf"))
                    chosen = torch.sort(conf, descending=True, stable=True).indices[:count]
                x[b, P + chosen] = x0[b, chosen]
                masked[b, chosen] = False
                lps[b, chosen] = x0_lp[b, chosen]
                where = chosen.tolist()
                if k:
                    for j, a, v in zip(where, ti[b, chosen].tolist(), tv[b, chosen].tolist(), strict=True):
                        top_ids[b][j], top_lps[b][j] = a, v
                unmasked[b] += where
            done += count
    return [Canvas(x[b, P:].tolist(), lps[b].tolist(), top_ids[b] if k else [], top_lps[b] if k else [], unmasked[b])
            for b in range(B)]


__all__ = ["METHODS", "Canvas", "draw", "schedule", "unmask"]

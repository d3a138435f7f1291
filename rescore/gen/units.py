"""Request rules shared by every backend: tokenisation, loglikelihood and rolling units, batch plans.

Tokenisation follows lm-evaluation-harness 0.4.x ``hf`` (``HFLM``) so that results can match it:

- ``tok_encode(s)`` uses the tokenizer's default special tokens (Llama-style tokenizers add BOS), except
  when ``s`` already starts with the prefix token's text.
- loglikelihood: trailing spaces of the context move to the continuation; ``whole = enc(ctx + cont)``,
  ``ctx_enc = enc(ctx)``, ``cont_enc = whole[len(ctx_enc):]``; an empty context is the prefix token
  (BOS, else EOS). The model sees ``(ctx_enc + cont_enc)[-(max_length + 1):][:-1]``.
- rolling documents: ``enc(text)`` cut into lm-eval's disjoint rolling windows of ``max_length`` with the
  prefix token in front of the first window; packed windows (``Request.token_ids``) are scored from
  ``score_from`` on.
- generation prompts: chat requests are rendered with the tokenizer's chat template
  (``add_generation_prompt=True``; no template is an error, never a fallback), then encoded with
  ``tok_encode``; prompts longer than ``max_length - max_new_tokens`` keep their last tokens.

A :class:`Unit` is one model sequence with the :class:`Span` s of positions whose next tokens are scored.
With ``share_prefix``, the choices of a multiple-choice request become one unit: the common prefix of
their inputs ``ctx_j + cont_j[:-1]`` followed by each choice's remaining tokens as its own segment (the
engine masks segments from each other and restarts position ids after the prefix). Nothing here imports
torch: an engine turns units into :class:`SpanResult` s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rescore.config import ModelConfig
from rescore.core import Request
from rescore.errors import BackendError


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
    # stored distributions (TaskConfig.dist): the selected positions (numbered over the row's scored tokens),
    # their targets and arrays (rescore.gen.dist)
    dist: tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]] | None = None


# per request: the continuation tokens of each choice, and the shared context tokens (or None)
ChoiceTokens = tuple[list[list[int]], list[int] | None]


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


def eos_ids(tokenizer: Any, generation_config: Any) -> set[int]:
    """The ids that end generation: the tokenizer's eos and the generation config's eos id(s)."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_eos = getattr(generation_config, "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos:
        ids.update(int(i) for i in gen_eos)
    return ids


def render_prompt(tokenizer: Any, r: Request, model: ModelConfig) -> str:
    """The prompt text of a generate request: its prompt, or its messages through the chat template."""
    if not r.chat:
        if r.prompt is None:
            raise BackendError(f"request {r.sample_id!r} of task {r.task!r} has no prompt", hint="chat: false needs prompt text")
        return r.prompt
    if not getattr(tokenizer, "chat_template", None):
        raise BackendError(
            f"task {r.task!r} asks for chat: true but model {model.name!r} ({model.path}) has no chat template",
            hint="use a chat (SFT) checkpoint whose tokenizer has a chat template, or set chat: false for this task",
        )
    if not r.messages:
        raise BackendError(f"request {r.sample_id!r} of task {r.task!r} is a chat request without messages")
    return tokenizer.apply_chat_template([dict(m) for m in r.messages], add_generation_prompt=True, tokenize=False)


class RequestRules:
    """lm-eval's ``HFLM`` request rules bound to one tokenizer and context window."""

    def __init__(self, tokenizer: Any, max_length: int, *, share_prefix: bool = False, model_path: str = "") -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.share_prefix = share_prefix
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if prefix is None:
            raise BackendError(f"tokenizer of {model_path!r} has neither a bos nor an eos token", hint="fix the tokenizer config")
        self.prefix_token_id: int = prefix
        self._prefix_text = tokenizer.decode([prefix])

    # -- tokenisation --------------------------------------------------------------------------------------
    def tok_encode(self, text: str) -> list[int]:
        if self._prefix_text and text.startswith(self._prefix_text):
            return list(self.tokenizer.encode(text, add_special_tokens=False))
        return list(self.tokenizer.encode(text))

    def encode_pair(self, context: str, continuation: str, cache: dict[str, list[int]]) -> tuple[list[int], list[int]]:
        def enc(s: str) -> list[int]:
            if s not in cache:
                cache[s] = self.tok_encode(s)
            return cache[s]

        if context == "":
            cont = list(self.tokenizer.encode(continuation, add_special_tokens=False))
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

    def generation_prompts(self, reqs: Sequence[Request], max_new_tokens: int,
                           model: ModelConfig) -> tuple[list[str], list[list[int]]]:
        """Every request's prompt text and token ids (its last ``max_length - max_new_tokens``). All are
        rendered before any compute, so a template error stops a run before it starts."""
        keep = self.max_length - max_new_tokens
        if keep < 1:
            raise BackendError(f"max_new_tokens {max_new_tokens} leaves no room for a prompt in the model's context of "
                               f"{self.max_length} tokens", hint="lower gen.max_new_tokens or raise max_length")
        texts, ids = [], []
        for r in reqs:
            text = render_prompt(self.tokenizer, r, model)
            enc = self.tok_encode(text)[-keep:]
            if not enc:
                raise BackendError(f"request {r.sample_id!r} of task {r.task!r} has an empty prompt",
                                   hint="give the prompt some text (or a tokenizer that adds a bos token)")
            texts.append(text)
            ids.append(enc)
        return texts, ids

    # -- loglikelihood -------------------------------------------------------------------------------------
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
            return [shared_unit(owner, pairs)], conts, shared_ctx
        units = []
        for j, (c, x) in enumerate(pairs):
            if not x:
                units.append(Unit(owner, [], [Span(j, [], [])]))
                continue
            inp = (c + x)[-(self.max_length + 1) :][:-1]
            n = len(inp)
            units.append(Unit(owner, inp, [Span(j, list(range(n - len(x), n)), x)]))
        return units, conts, shared_ctx

    def loglikelihood_plan(self, reqs: Sequence[Request]) -> tuple[list[Unit], list[ChoiceTokens]]:
        """Every request's units (in request order) and its choice tokens, for the rows."""
        cache: dict[str, list[int]] = {}
        units: list[Unit] = []
        meta: list[ChoiceTokens] = []
        for i, r in enumerate(reqs):
            us, conts, shared = self.loglikelihood_units(i, r, cache)
            units += us
            meta.append((conts, shared))
        return units, meta

    # -- rolling -------------------------------------------------------------------------------------------
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

    def rolling_plan(self, reqs: Sequence[Request]) -> tuple[list[Unit], list[list[int]]]:
        """Every request's units (an empty document gets one empty unit) and its scored target tokens."""
        units: list[Unit] = []
        targets: list[list[int]] = []
        for i, r in enumerate(reqs):
            us, tg = self.rolling_units(i, r)
            if not us:  # empty document: nothing to score
                us = [Unit(i, [], [Span(0, [], [])])]
            units += us
            targets.append(tg)
        return units, targets


def shared_unit(owner: int, pairs: list[tuple[list[int], list[int]]]) -> Unit:
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


def sequence_key(u: Unit) -> tuple[Any, ...]:
    """What a forward pass of ``u`` depends on: units with equal keys have equal logits at every position."""
    return (tuple(u.tokens), None if u.position_ids is None else tuple(u.position_ids),
            None if u.segments is None else tuple(u.segments))


def plan_batches(units: list[Unit], batch_size: int, max_batch_tokens: int, *, dedupe: bool = False) -> list[list[Unit]]:
    """Longest first (lm-eval's order: memory errors show up at once), at most ``batch_size`` sequences and
    ``max_batch_tokens`` padded tokens per batch (a longer single sequence runs alone).

    With ``dedupe``, units whose sequences are identical (:func:`sequence_key`; e.g. the choices of a
    left-truncated multiple-choice request whose continuations are one token each) count as one sequence,
    since the engine runs each distinct sequence of a batch once. A plan without such duplicates is the
    same either way."""
    order = sorted(units, key=lambda u: (-len(u.tokens), u.owner))
    batches: list[list[Unit]] = []
    cur: list[Unit] = []
    seen: set[tuple[Any, ...]] = set()
    for u in order:
        key = sequence_key(u) if dedupe else None
        if key is not None and key in seen:
            cur.append(u)  # runs with its twin: no new sequence
            continue
        width = len(cur[0].tokens) if cur else len(u.tokens)
        n = len(seen) if dedupe else len(cur)
        if cur and (n >= batch_size or (n + 1) * width > max_batch_tokens):
            batches.append(cur)
            cur = []
            seen = set()
        cur.append(u)
        if key is not None:
            seen.add(key)
    if cur:
        batches.append(cur)
    return batches


__all__ = ["ChoiceTokens", "RequestRules", "Span", "SpanResult", "Unit", "eos_ids", "plan_batches", "render_prompt",
           "rolling_windows", "sequence_key", "shared_unit"]

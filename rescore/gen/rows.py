"""Artifact rows from what an engine computed: one builder per request type, shared by every backend.

- :func:`loglikelihood_row`: a multiple-choice request from its choices' scored spans;
- :func:`rolling_row`: a perplexity request (document or packed window) from its windows' spans, in order;
- :func:`generate_row`: a generate request from its candidates (greedy candidates of one prompt are
  identical: one is computed and copied to the others, each with its own derived seed);
- :class:`RowCollector`: collects the span results of each request's units as they come back (in any
  order, from any batch) and builds the request's row when its last unit is in.

The rows hold the columns of ``rescore.artifacts.schema.schema_for(request_type)``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rescore.core import GenParams, Request, canonical_json, derive_seed
from rescore.gen.base import RunContext
from rescore.gen.units import SpanResult, Unit


@dataclass
class Candidate:
    """One generated candidate of a prompt: its tokens, their logprobs and top-k, its text and why it ended."""

    owner: int
    index: int
    prompt_ids: list[int]
    seed: int
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    topk_ids: list[list[int]] = field(default_factory=list)
    topk_logprobs: list[list[float]] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None


def lm_eval_n_words(text: str) -> int:
    """Word count as lm-eval's perplexity tasks compute it (``len(re.split(r"\\s+", doc))``)."""
    return len(re.split(r"\s+", text))


def loglikelihood_row(r: Request, conts: list[list[int]], shared: list[int] | None, out: list[SpanResult], *,
                      topk: int) -> dict[str, Any]:
    """The artifact row of a loglikelihood request from its choices' scored spans."""
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
    """The artifact row of a rolling request from its scored spans (in order)."""
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


def generate_row(r: Request, prompt: str, prompt_ids: list[int], cands: list[Candidate], ctx: RunContext) -> dict[str, Any]:
    """The artifact row of a generate request from its candidates, in candidate order."""
    p: GenParams = ctx.params
    if p.greedy and p.n > 1:  # greedy candidates are identical: copy the one computed
        c0 = cands[0]
        cands = [c0] + [
            Candidate(c0.owner, c, c0.prompt_ids, derive_seed(ctx.seed, r.sample_id, c), c0.token_ids, c0.logprobs,
                      c0.topk_ids, c0.topk_logprobs, c0.text, c0.finish_reason)
            for c in range(1, p.n)
        ]
    row = r.base_row()
    row.update(
        prompt=prompt,
        prompt_token_ids=prompt_ids,
        chat=r.chat,
        messages=canonical_json([dict(m) for m in r.messages]) if r.chat and r.messages else None,
        seed=ctx.seed,
        sampling=canonical_json(p.to_dict()),
        candidates=[c.text for c in cands],
        cand_token_ids=[c.token_ids for c in cands],
        cand_logprobs=[c.logprobs for c in cands],
        cand_topk_ids=[c.topk_ids for c in cands] if p.logprobs_topk else None,
        cand_topk_logprobs=[c.topk_logprobs for c in cands] if p.logprobs_topk else None,
        cand_finish_reason=[c.finish_reason for c in cands],
        cand_seed=[c.seed for c in cands],
    )
    return row


class RowCollector:
    """Builds each request's row once every one of its units has its span results.

    ``owners`` are the requests whose rows are wanted (the pending ones); results for units of other
    requests (computed only to keep a batch as planned) are dropped by :meth:`add`."""

    def __init__(self, units: Iterable[Unit], owners: Iterable[int],
                 make_row: Callable[[int, dict[int, SpanResult]], dict[str, Any]]) -> None:
        self._make_row = make_row
        self._left: dict[int, int] = {o: 0 for o in owners}
        self._results: dict[int, dict[int, SpanResult]] = {o: {} for o in self._left}
        for u in units:
            if u.owner in self._left:
                self._left[u.owner] += 1
        self._ready: list[dict[str, Any]] = []

    def wants(self, owner: int) -> bool:
        return owner in self._left

    def add(self, unit: Unit, results: list[SpanResult]) -> None:
        """The results of ``unit``'s spans, in span order."""
        if unit.owner not in self._left:
            return
        got = self._results[unit.owner]
        for sp, res in zip(unit.spans, results, strict=True):
            got[sp.slot] = res
        self._left[unit.owner] -= 1
        if self._left[unit.owner] == 0:
            del self._left[unit.owner]
            self._ready.append(self._make_row(unit.owner, self._results.pop(unit.owner)))

    def take(self) -> list[dict[str, Any]]:
        """The rows completed since the last call."""
        rows, self._ready = self._ready, []
        return rows

    @property
    def unfinished(self) -> int:
        """Wanted requests whose rows are not built yet."""
        return len(self._left)


__all__ = ["Candidate", "RowCollector", "generate_row", "lm_eval_n_words", "loglikelihood_row", "rolling_row"]

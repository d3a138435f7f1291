"""The ``fake`` backend: deterministic outputs without a model.

Every value is a pure function of (sample id, run seed, candidate index), so a resumed run, a different
batch size or another machine gives byte-identical rows. It is registered like the real backends and
writes the same schema; the store, the scorer and their benchmarks run on it.

Options (``ModelConfig.options``, :class:`FakeOptions`):
  rows_per_s   simulate a backend of that speed (sleeps); 0 = as fast as possible
  fail_after   raise :class:`InjectedFailure` after this many rows in this process (crash tests)
  p_correct    probability that a candidate or the gold choice "wins" (default 0.6)
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from pydantic import Field

from rescore.config import ModelConfig
from rescore.core import GenParams, Request, canonical_json, derive_seed
from rescore.errors import InjectedFailure
from rescore.gen.base import RunContext, backend, backend_options
from rescore.params import Params

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_WORDS = ("the", "model", "answer", "is", "a", "number", "we", "add", "then", "so", "first", "next",
          "total", "each", "result", "value", "python", "list", "item", "json", "ok", "done")


def _key(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser -> uniforms in [0, 1)."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def uniforms(key: str, n: int) -> np.ndarray:
    """``n`` uniforms in [0, 1) from a splitmix64 stream keyed by ``key`` (fast, portable, deterministic)."""
    with np.errstate(over="ignore"):
        return _mix(np.uint64(_key(key)) + np.arange(1, n + 1, dtype=np.uint64) * _GOLDEN)


class ByteTokenizer:
    """UTF-8 bytes as token ids; 256 = eos. Has a simple chat template."""

    eos_token_id = 256
    bos_token_id = 257
    vocab_size = 258
    chat_template = "{role}: {content}"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")

    def render_chat(self, messages: Sequence[Any]) -> str:
        return "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages) + "<|assistant|>\n"


class FakeOptions(Params):
    """Options of the ``fake`` backend."""

    rows_per_s: float = Field(0.0, ge=0)  # simulated speed; 0 = as fast as possible
    fail_after: int | None = Field(None, ge=0)  # crash after this many rows in this process
    p_correct: float = Field(0.6, ge=0, le=1)


@backend("fake", options=FakeOptions)
class FakeBackend:
    @classmethod
    def check(cls, cfg: ModelConfig) -> None:
        backend_options(cls, cfg)

    def __init__(self, cfg: ModelConfig) -> None:
        self.cfg = cfg
        opts = backend_options(self, cfg)
        self.rows_per_s = opts.rows_per_s
        self.fail_after = opts.fail_after
        self.p_correct = opts.p_correct
        self._tok = ByteTokenizer()
        self._emitted = 0

    @property
    def tokenizer(self) -> ByteTokenizer:
        return self._tok

    def describe(self) -> dict[str, Any]:
        return {
            "dtype": "float32", "device": "cpu",
            "fingerprint": hashlib.sha256(f"fake:{self.cfg.path}".encode()).hexdigest(),
            "tokenizer_hash": "bytes-v1", "chat_template_hash": hashlib.sha256(b"fake-chat-v1").hexdigest()[:16],
            "versions": {"fake": "1"},
        }

    def close(self) -> None:
        pass

    # -- generation ------------------------------------------------------------------------------------
    def run(self, requests: Sequence[Request], ctx: RunContext) -> Iterator[list[dict[str, Any]]]:
        make = {"loglikelihood": self._loglikelihood, "rolling": self._rolling, "generate": self._generate}
        requests = ctx.pending(requests)  # every row is a function of its request alone: skip the stored ones
        bs = max(1, ctx.batch_size)
        t0 = time.perf_counter()
        for i in range(0, len(requests), bs):
            batch = requests[i : i + bs]
            if self.fail_after is not None and self._emitted + len(batch) > int(self.fail_after):
                keep = max(0, int(self.fail_after) - self._emitted)
                if keep:
                    yield [make[r.request_type](r, ctx) for r in batch[:keep]]
                raise InjectedFailure(f"fake backend: injected failure after {int(self.fail_after)} rows")
            if all(r.request_type == "loglikelihood" for r in batch):
                rows = self._loglikelihood_batch(batch, ctx)
            else:
                rows = [make[r.request_type](r, ctx) for r in batch]
            self._emitted += len(rows)
            if self.rows_per_s > 0:
                wait = t0 + self._emitted / self.rows_per_s - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
            ctx.on_tokens(sum(len(r.get("prompt_token_ids") or ()) for r in rows))
            yield rows

    def _topk(self, key: str, n: int, k: int) -> tuple[list[list[int]] | None, list[list[float]] | None]:
        if k <= 0 or n == 0:
            return None, None
        u = uniforms(key + "|topk", n * k).reshape(n, k)
        ids = (u * 256).astype(np.int32)
        lps = np.sort(-(u * 6.0 + 0.01), axis=1)[:, ::-1].astype(np.float32)
        return ids.tolist(), lps.tolist()

    def _loglikelihood(self, r: Request, ctx: RunContext) -> dict[str, Any]:
        return self._loglikelihood_batch([r], ctx)[0]

    def _loglikelihood_batch(self, reqs: Sequence[Request], ctx: RunContext) -> list[dict[str, Any]]:
        """Vectorised over the whole batch; every value still depends only on (sample id, position)."""
        enc = self._tok.encode
        toks = [[enc(c) or [32] for c in r.continuations] for r in reqs]
        lens = [[len(t) for t in ts] for ts in toks]
        per_row = [sum(ls) for ls in lens]
        bases = np.array([_key(f"{r.sample_id}|ll") for r in reqs], dtype=np.uint64)
        pos = np.concatenate([np.arange(1, n + 2, dtype=np.uint64) for n in per_row])
        u = _mix(np.repeat(bases, np.array(per_row) + 1) + pos * _GOLDEN)
        lps = -(u * 3.0 + 0.05)
        row_start = np.concatenate([[0], np.cumsum(np.array(per_row) + 1)])
        rows = []
        for j, r in enumerate(reqs):
            a = int(row_start[j])
            seg = lps[a : a + per_row[j]]
            win = u[a + per_row[j]] < self.p_correct
            if win and r.gold is not None and 0 <= r.gold < len(lens[j]):
                g0 = sum(lens[j][: r.gold])
                seg = seg.copy()
                seg[g0 : g0 + lens[j][r.gold]] *= 0.3
            seg32 = seg.astype(np.float32)
            bounds = np.cumsum([0] + lens[j])
            sums = np.add.reduceat(seg32.astype(np.float64), bounds[:-1]).tolist()
            maxes = np.maximum.reduceat(seg32, bounds[:-1])
            out_lps = [seg32[bounds[i] : bounds[i + 1]] for i in range(len(lens[j]))]
            tk_ids, tk_lps = [], []
            if ctx.topk:
                for i, n in enumerate(lens[j]):
                    x, y = self._topk(f"{r.sample_id}|{i}", n, ctx.topk)
                    tk_ids.append(x)
                    tk_lps.append(y)
            row = r.base_row()
            ctx0 = r.contexts[0] if r.contexts else ""
            row.update(
                prompt=ctx0, prompt_token_ids=enc(ctx0), choices=list(r.continuations),
                contexts=None if all(c == ctx0 for c in r.contexts) else list(r.contexts),
                choice_token_ids=toks[j], choice_logprobs=out_lps, choice_sum_logprob=sums,
                choice_is_greedy=(maxes > -0.5).tolist(), choice_n_tokens=lens[j],
                choice_n_chars=[len(c) for c in r.continuations],
                choice_n_bytes=[len(c.encode("utf-8")) for c in r.continuations],
                choice_topk_ids=tk_ids or None, choice_topk_logprobs=tk_lps or None, per_token_available=True,
            )
            rows.append(row)
        return rows

    def _rolling(self, r: Request, ctx: RunContext) -> dict[str, Any]:
        if r.token_ids is not None:
            toks = list(r.token_ids[r.score_from :])
            text = self._tok.decode(toks)
        else:
            text = r.text or ""
            toks = self._tok.encode(text)
        n = len(toks)
        lp = (-(uniforms(f"{r.sample_id}|roll", n) * 4.0 + 0.02)).astype(np.float32)
        a, b = self._topk(r.sample_id, n, ctx.topk)
        row = r.base_row()
        row.update(
            prompt=text, prompt_token_ids=None, token_ids=toks, logprobs=lp.tolist(),
            sum_logprob=float(lp.astype(np.float64).sum()), n_tokens=n,
            n_bytes=r.n_bytes if r.n_bytes is not None else len(text.encode("utf-8")),
            n_words=r.n_words if r.n_words is not None else len(text.split()),
            topk_ids=a, topk_logprobs=b,
            entropy=(uniforms(f"{r.sample_id}|ent", n) * 3).astype(np.float32).tolist() if ctx.topk else None,
            per_token_available=True,
        )
        return row

    def _candidate_text(self, r: Request, u: np.ndarray) -> str:
        answer = (r.meta or {}).get("answer")
        words = " ".join(_WORDS[int(x * len(_WORDS))] for x in u[2 : 2 + 3 + int(u[1] * 12)])
        if answer is not None:
            if u[0] < self.p_correct:
                return f"{words.capitalize()}. The answer is {answer}.\n#### {answer}"
            return f"{words.capitalize()}.\n#### {int(u[1] * 100)}"
        checks = (r.meta or {}).get("checks") or {}
        if "bullets" in checks and u[0] < self.p_correct:
            return "\n".join(f"- {w}" for w in words.split()[: int(checks["bullets"].get("count", 3))])
        if "json" in checks and u[0] < self.p_correct:
            keys = checks["json"].get("required_keys") or []
            return json.dumps({k: w for k, w in zip(keys, words.split() * 4, strict=False)})
        return words

    def _generate(self, r: Request, ctx: RunContext) -> dict[str, Any]:
        p: GenParams = ctx.params
        if r.chat:
            prompt = self._tok.render_chat(r.messages or ())
        else:
            prompt = r.prompt or ""
        texts, tok_lists, lps, reasons, seeds, tk_ids, tk_lps = [], [], [], [], [], [], []
        for c in range(p.n):
            seed = derive_seed(0, r.sample_id, 0) if p.greedy else derive_seed(ctx.seed, r.sample_id, c)
            u = uniforms(f"gen|{seed}", 20)
            text = self._candidate_text(r, u)
            reason = "eos"
            for s in p.stop:
                j = text.find(s)
                if j >= 0:
                    text, reason = text[:j], "stop"
            toks = self._tok.encode(text)
            if len(toks) > p.max_new_tokens:
                toks = toks[: p.max_new_tokens]
                text, reason = self._tok.decode(toks), "length"
            lp = (-(uniforms(f"gen|{seed}|lp", len(toks)) * 2.0 + 0.01)).astype(np.float32)
            a, b = self._topk(f"gen|{seed}", len(toks), p.logprobs_topk)
            texts.append(text)
            tok_lists.append(toks)
            lps.append(lp.tolist())
            reasons.append(reason)
            seeds.append(seed)
            tk_ids.append(a or [])
            tk_lps.append(b or [])
        row = r.base_row()
        row.update(
            prompt=prompt, prompt_token_ids=self._tok.encode(prompt), chat=r.chat,
            messages=canonical_json(list(r.messages)) if r.messages else None, seed=ctx.seed,
            sampling=canonical_json(p.to_dict()), candidates=texts, cand_token_ids=tok_lists, cand_logprobs=lps,
            cand_topk_ids=tk_ids, cand_topk_logprobs=tk_lps, cand_finish_reason=reasons, cand_seed=seeds,
        )
        return row

"""The backend ``calculator``: answers ``arithmetic`` questions without a model (one byte per token).

It writes the rows every backend writes, through rescore's row builder (:func:`rescore.gen.generate_row`),
and follows the Backend protocol's resume rule: its rows do not depend on their batch, so it runs only
the requests whose rows are not stored yet (``RunContext.pending``)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

from pydantic import Field

from rescore.config import ModelConfig
from rescore.core import Request, derive_seed
from rescore.errors import BackendError
from rescore.gen import Candidate, Params, RunContext, backend, backend_options, generate_row


class Bytes:
    """UTF-8 bytes as token ids; 256 ends a text."""

    eos_token_id = 256
    bos_token_id = None
    vocab_size = 257

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class CalculatorOptions(Params):
    wrong_every: int = Field(0, ge=0)  # every n-th question gets a wrong answer (0: none)


@backend("calculator", options=CalculatorOptions)
class Calculator:
    @classmethod
    def check(cls, cfg: ModelConfig) -> None:
        backend_options(cls, cfg)  # a bad option stops `rescore gen` before anything is planned

    def __init__(self, cfg: ModelConfig) -> None:
        self.cfg = cfg
        self.options: CalculatorOptions = backend_options(self, cfg)
        self._tok = Bytes()

    @property
    def tokenizer(self) -> Bytes:
        return self._tok

    def describe(self) -> dict[str, Any]:
        return {"dtype": "none", "device": "cpu", "fingerprint": hashlib.sha256(b"calculator-1").hexdigest(),
                "versions": {"rescore-example-plugin": "0.1.0"}}

    def close(self) -> None:
        pass

    def run(self, requests: Sequence[Request], ctx: RunContext) -> Iterator[list[dict[str, Any]]]:
        todo = ctx.pending(requests)
        for i in range(0, len(todo), max(1, ctx.batch_size)):
            yield [self._row(r, ctx) for r in todo[i : i + ctx.batch_size]]

    def _row(self, r: Request, ctx: RunContext) -> dict[str, Any]:
        if r.request_type != "generate" or "a" not in r.meta:
            raise BackendError(f"the calculator backend answers arithmetic questions only, not {r.task!r}")
        total = int(r.meta["a"]) + int(r.meta["b"])
        if self.options.wrong_every and int(r.sample_id) % self.options.wrong_every == 0:
            total += 1
        text = f"{r.meta['a']} + {r.meta['b']} = {total}\n#### {total}"
        ids = self._tok.encode(text)
        p = ctx.params
        cands = [
            Candidate(0, c, self._tok.encode(r.prompt or ""), derive_seed(ctx.seed, r.sample_id, c), ids, [0.0] * len(ids),
                      [[t] for t in ids] if p.logprobs_topk else [], [[0.0]] * len(ids) if p.logprobs_topk else [],
                      text, "stop")
            for c in range(1 if p.greedy else p.n)
        ]
        return generate_row(r, r.prompt or "", self._tok.encode(r.prompt or ""), cands, ctx)

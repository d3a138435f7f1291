"""Core value types shared by tasks, backends, the store and the scorer.

Nothing here imports torch: a :class:`Request` is plain data that a task builds from a dataset row and
a backend turns into one artifact row (see ``rescore.artifacts.schema`` for the row columns).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

RequestType = Literal["loglikelihood", "rolling", "generate"]
REQUEST_TYPES: tuple[RequestType, ...] = ("loglikelihood", "rolling", "generate")


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the input of every content hash."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default)


def _json_default(o: Any) -> Any:
    if hasattr(o, "model_dump"):
        return o.model_dump(mode="json")
    if hasattr(o, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(o)
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def content_hash(obj: Any, length: int = 16) -> str:
    """Hex sha256 of the canonical JSON of ``obj``, cut to ``length`` characters."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()[:length]


def derive_seed(run_seed: int, sample_id: str, candidate: int) -> int:
    """The sampling seed of one candidate.

    It depends only on (run seed, sample id, candidate index), never on batch size, order or where a run
    resumed, so the same candidate always draws the same tokens. 63 bits so it fits a signed int64.
    """
    digest = hashlib.sha256(f"{run_seed}\x1f{sample_id}\x1f{candidate}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


@dataclass(frozen=True)
class GenParams:
    """Sampling parameters of ``generate`` requests. ``temperature == 0`` means greedy decoding."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    n: int = 1
    logprobs_topk: int = 5

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "max_new_tokens": self.max_new_tokens,
            "stop": list(self.stop),
            "n": self.n,
            "logprobs_topk": self.logprobs_topk,
        }


@dataclass(frozen=True)
class Request:
    """One sample of a task, ready for a backend.

    Common fields travel unchanged into the artifact row. Which of the other groups is used depends on
    ``request_type``:

    - ``loglikelihood``: ``contexts[i]`` + ``continuations[i]`` for each choice ``i`` (a shared context is
      repeated; winogrande-style partial scoring has different contexts and the same continuation).
    - ``rolling``: either ``text`` (a whole document, scored with rolling windows of the model's max
      length) or ``token_ids`` (a pre-packed window) of which the first ``score_from`` tokens are context
      only (overlap) and are not scored. ``n_bytes``/``n_words`` describe the scored text (for bits per
      byte and word perplexity).
    - ``generate``: ``messages`` (chat, rendered with the tokenizer's chat template) when ``chat`` is
      true, else the raw ``prompt`` text.
    """

    sample_id: str
    task: str
    request_type: RequestType
    target: str | None = None
    gold: int | None = None
    category: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    # loglikelihood
    contexts: tuple[str, ...] = ()
    continuations: tuple[str, ...] = ()
    # rolling
    text: str | None = None
    token_ids: tuple[int, ...] | None = None
    score_from: int = 0
    n_bytes: int | None = None
    n_words: int | None = None
    # generate
    prompt: str | None = None
    messages: tuple[Mapping[str, str], ...] | None = None
    chat: bool = False

    def base_row(self) -> dict[str, Any]:
        """The columns every artifact row has, filled from the request."""
        return {
            "sample_id": self.sample_id,
            "task": self.task,
            "request_type": self.request_type,
            "target": self.target,
            "gold": self.gold,
            "category": self.category,
            "meta": canonical_json(dict(self.meta)) if self.meta else None,
        }


@runtime_checkable
class Tokenizer(Protocol):
    """What tasks need of a tokenizer (packing PPL windows, counting tokens)."""

    eos_token_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


def logsumexp(values: Sequence[float]) -> float:
    m = max(values)
    if m == -math.inf:
        return -math.inf
    return m + math.log(sum(math.exp(v - m) for v in values))

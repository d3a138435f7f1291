"""The backend Protocol and its registry.

A backend turns :class:`~rescore.core.Request` objects into artifact rows (dicts with the columns of
``rescore.artifacts.schema.schema_for(request_type)``). It batches as it likes and yields rows in
batches; the runner appends each yielded batch to the store and fsyncs, so a crash loses at most the
batch in flight. Rows may come back in any order: the store keys them by ``sample_id``.

Resume: a backend always gets *all* of a unit's requests, and ``RunContext.done`` names the sample ids
already stored. It must plan its batches from all requests (so a batch's composition, padding and
shapes never depend on where a run was interrupted), run only the planned batches that hold a pending
row, and return rows for pending requests only (the runner drops any other). A backend whose rows do
not depend on their batch (``fake``) or that makes no bit-exactness promise (``vllm``) may simply skip
the done requests.

Backends are registered in :data:`backends` as factories ``(ModelConfig) -> Backend``; heavy ones
(``hf``, ``vllm``) are lazy ``"module:attr"`` entries so nothing imports torch until asked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from rescore.config import ModelConfig
from rescore.core import GenParams, Request, Tokenizer
from rescore.registry import Registry


@dataclass
class RunContext:
    """What a backend needs to know about the unit it is generating."""

    seed: int
    params: GenParams = field(default_factory=GenParams)
    topk: int = 0  # top-k alternatives stored for loglikelihood / rolling tokens
    batch_size: int = 8
    max_batch_tokens: int = 8192
    # called with the number of model tokens processed, for tokens/s in progress displays
    on_tokens: Callable[[int], None] = lambda n: None
    # sample ids whose rows are already stored (a resumed unit): no rows for them, and no work where it
    # can be skipped without changing the other rows
    done: frozenset[str] = frozenset()

    def pending(self, requests: Sequence[Request]) -> list[Request]:
        """The requests whose rows are still to be written."""
        return [r for r in requests if r.sample_id not in self.done] if self.done else list(requests)


class Backend(Protocol):
    name: str

    @property
    def tokenizer(self) -> Tokenizer: ...

    def describe(self) -> dict[str, Any]:
        """Manifest ``model`` section: precision, dtype, device, fingerprint, tokenizer/chat-template hash,
        library versions. Must be JSON-serialisable."""
        ...

    def run(self, requests: Sequence[Request], ctx: RunContext) -> Iterator[list[dict[str, Any]]]:
        """Yield complete artifact rows, a batch at a time, for every request."""
        ...

    def close(self) -> None: ...


BackendFactory = Callable[[ModelConfig], Backend]

backends: Registry[BackendFactory] = Registry("backend")
backends.register_lazy("fake", "rescore.gen.fake:FakeBackend")
backends.register_lazy("hf", "rescore.gen.hf:HFBackend")
backends.register_lazy("vllm", "rescore.gen.vllm:VLLMBackend")


def make_backend(model: ModelConfig) -> Backend:
    return backends.get(model.backend)(model)

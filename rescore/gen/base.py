"""The backend Protocol and its registry.

A backend turns :class:`~rescore.core.Request` objects into artifact rows (dicts with the columns of
``rescore.artifacts.schema.schema_for(request_type)``). It batches as it likes and yields rows in
batches; the runner appends each yielded batch to the store and fsyncs, so a crash loses at most the
batch in flight. Rows may come back in any order: the store keys them by ``sample_id``.

One call of :meth:`Backend.run` generates one *unit*: one model config (its backend, options and
checkpoint) x one task x one seed. The unit's run id is a hash of that resolved config, so two values of
a backend option (a sampling method, say) are two units, and a unit already complete in the store is
never given to a backend again. Deterministic tasks (loglikelihood, rolling, greedy generation) run
under the suite's first seed only; sampled generation runs once per seed, and ``rescore results``
aggregates a model's units of one task across their seeds.

The rows a backend writes (build them with :mod:`rescore.gen.rows`, as every built-in backend does):

- ``generate``: :func:`~rescore.gen.rows.generate_row` from the request, its prompt text and token ids,
  and its candidates (:class:`~rescore.gen.rows.Candidate`): ``ctx.params.n`` of them in candidate order,
  each with its token ids, their logprobs (one per token; stored per token and used by best-of-n
  selection), top-k alternatives when ``ctx.params.logprobs_topk`` > 0, its text (what the metrics read)
  and finish reason (``eos``, ``stop`` or ``length``), and its seed
  ``derive_seed(ctx.seed, sample_id, candidate)``. A greedy request (``ctx.params.greedy``) needs one
  computed candidate; ``generate_row`` copies it to the others.
- ``loglikelihood`` / ``rolling``: :func:`~rescore.gen.rows.loglikelihood_row` and
  :func:`~rescore.gen.rows.rolling_row`; :class:`~rescore.gen.units.RequestRules` gives lm-evaluation-harness's
  tokenisation and units. A backend that cannot score a request type raises a
  :class:`~rescore.errors.BackendError` naming the task before it writes anything.

Seeds: a sampled candidate draws only from its own random stream, seeded with
``rescore.core.derive_seed(ctx.seed, request.sample_id, candidate_index)``, so its tokens never depend on
the batch size, the order of requests, the other candidates or where a run resumed; the same unit run
twice gives identical rows.

Resume: a backend always gets *all* of a unit's requests, and ``RunContext.done`` names the sample ids
already stored. It must plan its batches from all requests (so a batch's composition, padding and
shapes never depend on where a run was interrupted), run only the planned batches that hold a pending
row, and return rows for pending requests only (the runner drops any other). A backend whose rows do
not depend on their batch (``fake``, ``examples/diffusion``) or that makes no bit-exactness promise
(``vllm``) may simply skip the done requests (:meth:`RunContext.pending`).

Backends are classes ``(ModelConfig) -> Backend`` decorated with :func:`backend`, which names them and
gives their options model (the keys of ``ModelConfig.options`` they understand, a
:class:`~rescore.params.Params`). They are registered in :data:`backends`: the built-in ones as lazy
``"module:attr"`` entries so nothing imports torch until asked, other packages' through the entry-point
group ``rescore.backends``; a model config may also name one as ``backend: mypkg.mod:MyBackend``. A
backend class may have a classmethod ``check(cfg)`` for what can be checked before anything is planned
(its options, a missing checkpoint). docs/guides/add-a-backend-or-loader.md walks through a complete
one (examples/diffusion).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from rescore.config import DistConfig, ModelConfig
from rescore.core import GenParams, Request, Tokenizer
from rescore.errors import ConfigError
from rescore.params import NoParams, Params, parse_params, split_options
from rescore.registry import Registry


@dataclass
class RunContext:
    """What a backend needs to know about the unit it is generating."""

    seed: int  # the unit's seed: candidates draw from derive_seed(seed, sample_id, candidate)
    # generate tasks: n candidates, temperature (0 = greedy), top_p, top_k, max_new_tokens, stop, logprobs_topk
    params: GenParams = field(default_factory=GenParams)
    topk: int = 0  # top-k alternatives stored for loglikelihood / rolling tokens
    batch_size: int = 8
    max_batch_tokens: int = 8192
    # called with the number of model tokens processed, for tokens/s in progress displays
    on_tokens: Callable[[int], None] = lambda n: None
    # sample ids whose rows are already stored (a resumed unit): no rows for them, and no work where it
    # can be skipped without changing the other rows
    done: frozenset[str] = frozenset()
    # distributions to store per scored position (TaskConfig.dist); a backend that cannot store them refuses
    dist: DistConfig | None = None

    def pending(self, requests: Sequence[Request]) -> list[Request]:
        """The requests whose rows are still to be written."""
        return [r for r in requests if r.sample_id not in self.done] if self.done else list(requests)


class Backend(Protocol):
    """What a backend class implements; made once per model config by ``cls(cfg)`` (load the model there,
    after parsing ``cfg.options`` with :func:`backend_options`), then used for each of the model's units."""

    name: str  # set by @backend
    options_model: type[Params]  # set by @backend

    @property
    def tokenizer(self) -> Tokenizer:
        """``encode``/``decode`` and ``eos_token_id``: tasks use it to build requests (e.g. to pack
        perplexity windows)."""
        ...

    def describe(self) -> dict[str, Any]:
        """Manifest ``model`` section: precision, dtype, device, fingerprint (a content hash of the weights:
        a unit resumes only with the weights it started with), tokenizer/chat-template hash (results of
        differing ones are not shown side by side), library versions (``versions``), and anything else
        that says how rows were made. Must be JSON-serialisable."""
        ...

    def run(self, requests: Sequence[Request], ctx: RunContext) -> Iterator[list[dict[str, Any]]]:
        """Yield complete artifact rows, a batch at a time, for the pending requests of one unit (all of
        ``requests`` but those in ``ctx.done``); see the module docstring for the rows, seeds and resume."""
        ...

    def close(self) -> None:
        """Free the model (the runner calls it before it loads another model)."""
        ...


BackendFactory = Callable[[ModelConfig], Backend]


def _backend(obj: object) -> BackendFactory:
    if not isinstance(obj, type) or not isinstance(getattr(obj, "options_model", None), type):
        what = f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', type(obj).__qualname__)}"
        raise ConfigError(f"{what} is not a backend",
                          hint="decorate a class (ModelConfig) -> Backend with @rescore.gen.backend(NAME, options=Model)")
    return obj  # type: ignore[return-value]


backends: Registry[BackendFactory] = Registry("backend", group="rescore.backends", coerce=_backend)
backends.register_lazy("fake", "rescore.gen.fake:FakeBackend")
backends.register_lazy("hf", "rescore.gen.hf:HFBackend")
backends.register_lazy("vllm", "rescore.gen.vllm:VLLMBackend")


def backend(name: str, *, options: type[Params] = NoParams, loader: bool = False) -> Callable[[type], type]:
    """Class decorator that registers a backend under ``name`` with its options model::

        class EchoOptions(Params):
            reverse: bool = False

        @backend("echo", options=EchoOptions)
        class EchoBackend:
            def __init__(self, cfg: ModelConfig) -> None:
                self.options = backend_options(self, cfg)
            ...

    ``loader=True`` for a backend that loads through a checkpoint loader (``ModelConfig.loader``), whose
    options come on top of the backend's. The class is returned unchanged, with ``name``, ``options_model``
    and ``uses_loader`` set."""

    def deco(cls: type) -> type:
        cls.name = name  # type: ignore[attr-defined]
        cls.options_model = options  # type: ignore[attr-defined]
        cls.uses_loader = loader  # type: ignore[attr-defined]
        backends.register(name, _backend(cls))
        return cls

    return deco


def backend_options(b: Any, cfg: ModelConfig, values: dict[str, Any] | None = None) -> Any:
    """``cfg.options`` (or ``values``, the backend's share of them) as the options model of backend ``b``
    (a class or an instance); a one-line :class:`ConfigError` naming the model, the key and the valid keys."""
    return parse_params(b.options_model, cfg.options if values is None else values,
                        component=f"model {cfg.name!r} ({b.name} backend)", what="option")


def backend_and_loader_options(b: Any, cfg: ModelConfig) -> tuple[Any, Any]:
    """For a backend that loads through a checkpoint loader (``hf``): ``cfg.options`` split between the
    backend's options model and the loader's, each parsed (an unknown key names both sets of keys)."""
    from rescore.gen.loaders import loader_options, loaders

    ld = loaders.get(cfg.loader)
    mine, theirs = split_options(cfg.options, [b.options_model, ld.options_model],
                                 component=f"model {cfg.name!r} ({b.name} backend, {cfg.loader} loader)")
    return backend_options(b, cfg, mine), loader_options(cfg, theirs)[1]


def check_options(model: ModelConfig) -> None:
    """``model.options`` against its backend's options model (and its loader's, for a backend that loads
    through one): a one-line :class:`ConfigError` naming a bad key and the valid ones. Nothing is loaded and
    no checkpoint is looked up."""
    factory = backends.get(model.backend)
    if getattr(factory, "uses_loader", False):
        backend_and_loader_options(factory, model)
    else:
        backend_options(factory, model)


def check_model(model: ModelConfig) -> None:
    """What can be checked of ``model`` before anything is planned: the backend's name, and its ``check``
    (options, a missing checkpoint)."""
    factory = backends.get(model.backend)
    check = getattr(factory, "check", None)
    if check is not None:
        check(model)


def make_backend(model: ModelConfig) -> Backend:
    return backends.get(model.backend)(model)

"""Checkpoint loaders: how a checkpoint becomes a model the ``hf`` backend can run, and its registry.

A loader is a function ``(ModelConfig, options) -> Loaded`` decorated with :func:`loader`, which names it
and gives its options model (a :class:`~rescore.params.Params`; the keys of ``ModelConfig.options`` it
understands). ``ModelConfig.loader`` (``rescore gen --loader NAME``, default ``hf``) picks one: a
registered name, an entry point of the group ``rescore.loaders``, or ``"module:attr"``.

What a loader returns (:class:`Loaded`):

- ``model``: a torch module in eval mode on its device whose
  ``model(input_ids=, attention_mask=, position_ids=).logits`` are the next-token logits ``[B, T, V]``
  (a transformers causal LM is one; the hf backend also uses its KV cache for generation);
- ``tokenizer``: a transformers-compatible tokenizer (``encode``/``decode``, bos/eos/pad ids, and a
  ``chat_template`` for chat tasks);
- ``info``: the manifest's ``model`` section, JSON-serialisable, with at least ``precision``, ``dtype`` (the
  dtype used, e.g. ``"float32"``), ``device``, ``fingerprint`` (a content hash of the weights; None when
  there is nothing to hash) and ``max_length`` (the context window).

The built-in ``hf`` loader (``rescore.gen.loading``) loads ``save_pretrained`` directories with transformers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from rescore.config import ModelConfig
from rescore.errors import BackendError, ConfigError
from rescore.params import NoParams, Params, parse_params
from rescore.registry import Registry

REQUIRED_INFO = ("precision", "dtype", "device", "fingerprint", "max_length")


@dataclass
class Loaded:
    model: Any  # torch module giving next-token logits, in eval mode
    tokenizer: Any  # transformers-compatible tokenizer
    info: dict[str, Any]  # the manifest's model section (REQUIRED_INFO and anything else worth recording)

    def __post_init__(self) -> None:
        missing = [k for k in REQUIRED_INFO if k not in self.info]
        if missing:
            raise BackendError(f"a checkpoint loader returned no {', '.join(missing)} in Loaded.info",
                               hint=f"a loader's info holds at least {', '.join(REQUIRED_INFO)}")

    @property
    def fingerprint(self) -> str | None:
        return self.info["fingerprint"]

    @property
    def dtype(self) -> str:
        return str(self.info["dtype"])

    @property
    def device(self) -> str:
        return str(self.info["device"])

    @property
    def max_length(self) -> int:
        return int(self.info["max_length"])


@dataclass(frozen=True)
class Preview:
    """What requests and stored distributions depend on, read without the weights (see :func:`loader`)."""

    tokenizer: Any
    vocab: int  # the width of the logits
    max_length: int  # the context window, as the loaded model's ``info["max_length"]`` will be


class Loader(Protocol):
    name: str
    options_model: type[Params]

    def __call__(self, cfg: ModelConfig, options: Any) -> Loaded: ...

    def check(self, cfg: ModelConfig, options: Any) -> None:
        """What can be checked without loading (a missing directory), before anything is planned."""
        ...


def _loader(obj: object) -> Loader:
    if not callable(obj) or not isinstance(getattr(obj, "options_model", None), type):
        what = f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', type(obj).__qualname__)}"
        raise ConfigError(f"{what} is not a checkpoint loader",
                          hint="decorate a function (cfg, options) -> Loaded with @rescore.gen.loader(NAME, options=Model)")
    return obj  # type: ignore[return-value]


loaders: Registry[Loader] = Registry("checkpoint loader", group="rescore.loaders", coerce=_loader)
loaders.register_lazy("hf", "rescore.gen.loading:load_hf")
loaders.register_lazy("nanotron", "rescore.gen.loader_nanotron:load_nanotron")
loaders.register_lazy("torch_state_dict", "rescore.gen.loader_state_dict:load_state_dict")


def loader(name: str, *, options: type[Params] = NoParams, check: Callable[[ModelConfig, Any], None] | None = None,
           preview: Callable[[ModelConfig, Any], Preview] | None = None) -> Callable[[Callable[..., Loaded]], Loader]:
    """Decorator that registers a checkpoint loader under ``name``::

        class MyOptions(Params):
            shard: int = 0

        @loader("my_format", options=MyOptions)
        def load_my_format(cfg: ModelConfig, options: MyOptions) -> Loaded:
            ...

    ``check(cfg, options)``, when given, runs before anything is planned (e.g. that the checkpoint exists).
    ``preview(cfg, options)``, when given, returns a :class:`Preview` (tokenizer, output vocabulary, context
    window) read without the weights: ``rescore plan`` uses it to size a task's stored distributions before
    anything loads (without it, plan says the size is known when ``gen`` loads the model)."""

    def deco(fn: Callable[..., Loaded]) -> Loader:
        fn.name = name  # type: ignore[attr-defined]
        fn.options_model = options  # type: ignore[attr-defined]
        fn.check = check or (lambda cfg, opts: None)  # type: ignore[attr-defined]
        fn.preview = preview  # type: ignore[attr-defined]
        loaders.register(name, _loader(fn))
        return fn  # type: ignore[return-value]

    return deco


def loader_options(cfg: ModelConfig, values: dict[str, Any] | None = None) -> tuple[Loader, Params]:
    """``cfg``'s loader and its options (``values``: the loader's share of ``cfg.options``; all of them
    when not given)."""
    ld = loaders.get(cfg.loader)
    opts = parse_params(ld.options_model, cfg.options if values is None else values,
                        component=f"model {cfg.name!r} ({cfg.loader} loader)", what="option")
    return ld, opts


__all__ = ["Loaded", "Loader", "Preview", "loader", "loader_options", "loaders"]

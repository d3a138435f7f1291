"""The ``torch_state_dict`` checkpoint loader: a plain PyTorch state dict plus the factory that builds its module.

For models that are not ``transformers`` models (a nanoGPT-style GPT, a research architecture)::

    models:
      - name: gpt-step-5000
        path: ckpts/gpt/ckpt_5000.pt          # or .safetensors; a dict holding "model" (nanoGPT's ckpt.pt) works too
        loader: torch_state_dict
        options:
          factory: mypkg.model:build_gpt       # called with factory_kwargs, returns the torch.nn.Module
          factory_kwargs: {n_layer: 12, n_embd: 768}
          tokenizer: tokenizers/gpt2           # a local tokenizer directory (save_pretrained)

``.pt``/``.pth``/``.bin`` files load with ``torch.load(weights_only=True)``: a file that needs arbitrary code to
unpickle is refused. The module's ``forward(input_ids)`` returns the logits of every position ``[B, T, V]`` (or a
tuple whose first item is, or an object with ``.logits``). Each sequence of a batch runs on its own without its
padding, so a module needs no attention mask or position ids, and the values do not depend on how a batch was
padded; generation recomputes the whole sequence at each step (no KV cache): this loader is for small models.
Precision: fp32, bf16, fp16, and int8/int4 through bitsandbytes: every layer of type ``torch.nn.Linear`` is
quantized except the output layer (see :mod:`rescore.gen.quantize`).
"""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pydantic import Field

from rescore.config import ModelConfig
from rescore.errors import BackendError
from rescore.gen.loaders import Loaded, Preview, loader
from rescore.gen.quantize import QUANTIZED, dtype_for, quantization_info, quantize_linears
from rescore.params import Params

SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


class StateDictOptions(Params):
    """Options of the ``torch_state_dict`` loader."""

    factory: str = Field(description="'package.module:callable' that returns the torch.nn.Module")
    factory_kwargs: dict[str, Any] = Field(default_factory=dict)
    tokenizer: str = Field(description="a local tokenizer directory")


def check_state_dict(cfg: ModelConfig, options: StateDictOptions) -> None:
    path = Path(cfg.path).expanduser()
    if not path.is_file():
        raise BackendError(f"state dict file {path} not found", hint="path is a .pt/.pth/.bin or .safetensors file")
    if path.suffix not in SUFFIXES:
        raise BackendError(f"state dict file {path} is not one of {', '.join(SUFFIXES)}",
                           hint="save the model's state_dict() with torch.save or safetensors")
    if ":" not in options.factory:
        raise BackendError(f"options.factory {options.factory!r} is not 'package.module:callable'",
                           hint="name the function (or class) that builds the module")
    if not Path(options.tokenizer).expanduser().is_dir():
        raise BackendError(f"options.tokenizer {options.tokenizer!r} is not a local directory",
                           hint="save the tokenizer with save_pretrained and give its directory")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _state_dict(path: Path) -> dict[str, Any]:
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except Exception as e:  # noqa: BLE001 - a damaged file: named, one line
            raise BackendError(f"cannot read {path}: {_first_line(e)}", hint="the file is damaged or not safetensors") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - UnpicklingError and friends
        if "weights_only" in str(e) or "Unpickl" in type(e).__name__:
            raise BackendError(f"{path} needs arbitrary code to unpickle, which rescore does not run "
                               "(torch.load with weights_only=True)",
                               hint="save a plain state dict: torch.save(model.state_dict(), path), or a .safetensors file") from None
        raise BackendError(f"cannot read {path}: {_first_line(e)}", hint="the file is damaged or not a torch save") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):  # nanoGPT's ckpt.pt
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BackendError(f"{path} holds no state dict (a mapping of names to tensors)",
                           hint="save model.state_dict()")
    prefix = "_orig_mod."  # torch.compile'd modules save their parameters under it
    return {k.removeprefix(prefix): v for k, v in obj.items()}


def _build(options: StateDictOptions) -> Any:
    import torch

    mod_name, _, attr = options.factory.partition(":")
    try:
        fn = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as e:
        raise BackendError(f"cannot import the factory {options.factory!r}: {_first_line(e)}",
                           hint="give 'package.module:callable' importable here (PYTHONPATH)") from None
    try:
        module = fn(**options.factory_kwargs)
    except Exception as e:  # noqa: BLE001 - the factory is user code: its failure in one line
        raise BackendError(f"the factory {options.factory!r} raised {_first_line(e)}",
                           hint="check options.factory_kwargs against the factory's arguments") from None
    if not isinstance(module, torch.nn.Module):
        raise BackendError(f"the factory {options.factory!r} returned a {type(module).__name__}, not a torch.nn.Module",
                           hint="the factory builds and returns the model")
    return module


class PlainLM:
    """A module giving logits for ``[B, T]`` ids, behind the interface the ``hf`` backend calls: ``config``,
    ``forward(input_ids=, attention_mask=, position_ids=, past_key_values=, ...).logits``. Every sequence runs
    alone without its padding; with a cache, the sequence so far is kept on it and run again whole."""

    def __init__(self, module: Any, vocab: int, max_length: int) -> None:
        from transformers import PretrainedConfig

        self.module = module
        self.config = PretrainedConfig(num_hidden_layers=1, vocab_size=vocab,  # type: ignore[call-arg]
                                       max_position_embeddings=max_length)
        self.base_model = self

    def eval(self) -> PlainLM:
        self.module.eval()
        return self

    def parameters(self) -> Any:
        return self.module.parameters()

    def get_output_embeddings(self) -> None:
        return None

    def to(self, *args: Any, **kw: Any) -> PlainLM:
        self.module.to(*args, **kw)
        return self

    def _logits(self, ids: Any) -> Any:
        out = self.module(ids)
        out = out[0] if isinstance(out, tuple) else getattr(out, "logits", out)
        if out.dim() != 3 or out.shape[1] != ids.shape[1]:
            raise BackendError(f"the module returned logits of shape {tuple(out.shape)} for {tuple(ids.shape)} ids",
                               hint="forward(input_ids) must return the logits of every position, [B, T, V]")
        return out

    def _rows(self, ids: Any, mask: Any) -> Any:
        import torch

        outs = []
        for b in range(ids.shape[0]):
            keep = mask[b].bool() if mask is not None else torch.ones(ids.shape[1], dtype=torch.bool, device=ids.device)
            logits = self._logits(ids[b][keep][None])[0]
            full = logits.new_zeros((ids.shape[1], logits.shape[-1]))
            full[keep] = logits
            outs.append(full)
        return torch.stack(outs)

    def __call__(self, input_ids: Any, attention_mask: Any = None, position_ids: Any = None,
                 past_key_values: Any = None, use_cache: bool = False, logits_to_keep: int = 0, **_: Any) -> Any:
        import torch

        if past_key_values is None:
            return SimpleNamespace(logits=self._rows(input_ids, attention_mask), past_key_values=None)
        prev = getattr(past_key_values, "rescore_ids", None)
        ids = input_ids if prev is None else torch.cat([prev, input_ids], dim=1)
        past_key_values.rescore_ids = ids
        mask = attention_mask if attention_mask is not None and attention_mask.shape[1] == ids.shape[1] else None
        logits = self._rows(ids, mask)[:, -input_ids.shape[1]:]
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return SimpleNamespace(logits=logits, past_key_values=past_key_values)


def _fingerprint(path: Path, options: StateDictOptions) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"factory": options.factory, "kwargs": options.factory_kwargs}, sort_keys=True, default=str).encode())
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _max_length(cfg: ModelConfig, module: Any) -> int:
    return int(cfg.max_length or getattr(getattr(module, "config", None), "block_size", 0) or 2048)


def preview_state_dict(cfg: ModelConfig, options: StateDictOptions) -> Preview:
    """The tokenizer, logits width and context window, from the factory's module built on the meta device (no
    weights read or allocated; one forward pass of one token gives the width)."""
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(Path(options.tokenizer).expanduser()), local_files_only=True)
    with torch.device("meta"):
        module = _build(options)
        vocab = int(PlainLM(module, 0, 1)._logits(torch.zeros((1, 1), dtype=torch.long)).shape[-1])
    return Preview(tokenizer, vocab, _max_length(cfg, module))


@loader("torch_state_dict", options=StateDictOptions, check=check_state_dict, preview=preview_state_dict)
def load_state_dict(cfg: ModelConfig, options: StateDictOptions) -> Loaded:
    check_state_dict(cfg, options)
    import torch
    from transformers import AutoTokenizer

    from rescore.gen.loading import (
        chat_template_hash,
        library_versions,
        quiet_libraries,
        resolve_device,
        tokenizer_hash,
    )

    quiet_libraries()
    path = Path(cfg.path).expanduser()
    tok_dir = Path(options.tokenizer).expanduser()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds
        raise BackendError(f"cannot load the tokenizer in {tok_dir}: {_first_line(e)}",
                           hint="give a directory saved with save_pretrained") from None
    sd = _state_dict(path)
    module = _build(options)
    result = module.load_state_dict(sd, strict=False)
    if result.missing_keys or result.unexpected_keys:
        what = (f"lacks {', '.join(result.missing_keys[:3])}" if result.missing_keys
                else f"has keys the module does not: {', '.join(result.unexpected_keys[:3])}")
        raise BackendError(f"the state dict {path} does not fit the module of {options.factory!r}: it {what}",
                           hint="check options.factory and options.factory_kwargs against the checkpoint")
    device = resolve_device(cfg.device)
    dtype = dtype_for(cfg.precision, device)
    max_length = _max_length(cfg, module)
    module.to(dtype=dtype)
    model = PlainLM(module, 0, max_length).eval()
    with torch.inference_mode():  # the logits' width is the vocabulary the scorer sees (it may pad the tokenizer's)
        model.config.vocab_size = int(model._logits(torch.zeros((1, 1), dtype=torch.long)).shape[-1])
    if cfg.precision in QUANTIZED:  # the output layer (vocabulary-wide or tied) stays unquantized
        quantize_linears(module, cfg.precision, device, skip=(), vocab=model.config.vocab_size)
        module.eval()
    else:
        module.to(device=device)
    info = {
        "precision": cfg.precision, "dtype": str(dtype).removeprefix("torch."), "device": device,
        "fingerprint": _fingerprint(path, options), "tokenizer_hash": tokenizer_hash(tok_dir, tokenizer),
        "chat_template_hash": chat_template_hash(tokenizer), "max_length": max_length, "loader": "torch_state_dict",
        "factory": options.factory, "versions": library_versions(),
        "quantization": quantization_info(cfg.precision),
    }
    return Loaded(model=model, tokenizer=tokenizer, info=info)


__all__ = ["PlainLM", "StateDictOptions", "load_state_dict"]

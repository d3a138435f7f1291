"""Precision for every checkpoint loader: the torch dtype of a precision and bitsandbytes int8/int4 on a module.

The ``hf`` loader hands int8/int4 to ``transformers`` (``BitsAndBytesConfig``); the loaders that build their
module in memory (``nanotron``, ``torch_state_dict``, third-party loaders) call :func:`quantize_linears` on it.
Both do the same thing, so one checkpoint gives the same logits whichever loader reads it:

- the module is first cast to the compute dtype (:func:`dtype_for`: float32 on CPU, where bitsandbytes' kernels
  run it exactly and fastest; bfloat16 on CUDA);
- every layer whose type is exactly ``torch.nn.Linear`` becomes ``bitsandbytes.nn.Linear8bitLt`` (LLM.int8(),
  outlier threshold 6.0, no fp16 copy of the weights) or ``bitsandbytes.nn.Linear4bit`` (NF4, no double
  quantization, compute in the compute dtype); subclasses of Linear are left alone (``nn.MultiheadAttention``'s
  output projection is one, and its forward reads the weight directly);
- the output layer stays in the compute dtype, as transformers keeps ``lm_head``: the layers named in ``skip``,
  any Linear whose ``out_features`` is the vocabulary's width, and any whose weight is shared with another
  module (tied embeddings).
"""

from __future__ import annotations

from typing import Any

from rescore.errors import BackendError

QUANTIZED = ("int8", "int4")


def dtype_for(precision: str, device: str) -> Any:
    """The torch dtype a precision loads in; for int8/int4 the dtype of the parts left unquantized."""
    import torch

    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    return torch.float32 if device == "cpu" else torch.bfloat16


def require_bitsandbytes(precision: str) -> Any:
    """The bitsandbytes module, or a one-line error saying what to install."""
    try:
        import bitsandbytes
    except Exception as e:  # ImportError, or a broken native library
        raise BackendError(
            f"precision {precision} needs bitsandbytes, which cannot be imported here: {e}",
            hint="pip install 'bitsandbytes==0.50.2' or use precision fp32/bf16/fp16",
        ) from None
    return bitsandbytes


def quantization_info(precision: str) -> dict[str, Any] | None:
    """The manifest's record of how the weights were quantized (None for fp32/bf16/fp16)."""
    if precision == "int8":
        return {"method": "bitsandbytes", "bits": 8, "scheme": "llm.int8"}
    if precision == "int4":
        return {"method": "bitsandbytes", "bits": 4, "scheme": "nf4"}
    return None


def _kept(module: Any, skip: set[str], vocab: int | None) -> set[str]:
    """Names of the Linear layers that stay unquantized: ``skip``, the vocabulary-wide ones, tied ones."""
    from torch import nn

    owners: dict[int, list[str]] = {}
    for name, mod in module.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            owners.setdefault(id(p), []).append(f"{name}.{pname}")
    kept = set()
    for name, mod in module.named_modules():
        if type(mod) is not nn.Linear:
            continue
        if name in skip or (vocab is not None and mod.out_features == vocab) or len(owners[id(mod.weight)]) > 1:
            kept.add(name)
    return kept


def quantize_linears(module: Any, precision: str, device: str, *, skip: tuple[str, ...] = ("lm_head",),
                     vocab: int | None = None) -> int:
    """Replace ``module``'s Linear layers (on CPU, in the compute dtype) by bitsandbytes' int8/int4 layers on
    ``device``, in place; the other parameters move to ``device`` too. Returns how many layers were replaced."""
    import torch
    from torch import nn

    if precision not in QUANTIZED:
        raise ValueError(precision)
    bnb = require_bitsandbytes(precision)
    dtype = dtype_for(precision, device)
    module.to(device="cpu", dtype=dtype)
    kept = _kept(module, set(skip), vocab)
    replaced = 0
    for name, mod in list(module.named_modules()):
        if type(mod) is not nn.Linear or name in kept:
            continue
        weight = mod.weight.data.to("cpu")
        if precision == "int8":
            new = bnb.nn.Linear8bitLt(mod.in_features, mod.out_features, mod.bias is not None,
                                      has_fp16_weights=False, threshold=6.0, device="meta")
            new.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
        else:
            new = bnb.nn.Linear4bit(mod.in_features, mod.out_features, mod.bias is not None, dtype,
                                    compress_statistics=False, quant_type="nf4", quant_storage=torch.uint8,
                                    device="meta")
            new.weight = bnb.nn.Params4bit(weight, requires_grad=False, compress_statistics=False,
                                           quant_type="nf4", quant_storage=torch.uint8)
        if mod.bias is not None:
            new.bias = nn.Parameter(mod.bias.data, requires_grad=False)
        new.requires_grad_(False)
        new.train(mod.training)
        module.set_submodule(name, new.to(device))  # bitsandbytes quantizes when the weight moves
        replaced += 1
    if not replaced:
        raise BackendError(f"precision {precision}: the model has no torch.nn.Linear layer to quantize",
                           hint="use precision fp32, bf16 or fp16 for this model")
    module.to(device)
    return replaced


__all__ = ["QUANTIZED", "dtype_for", "quantization_info", "quantize_linears", "require_bitsandbytes"]

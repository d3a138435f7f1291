"""Precision applies to every checkpoint loader alike: int8/int4 through ``nanotron`` and ``torch_state_dict``
quantize the same layers the same way as the ``hf`` loader, so one checkpoint gives the same logits."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import invoke

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
try:
    import bitsandbytes as bnb
except Exception as e:  # noqa: BLE001 - not installed, or no native library here
    pytest.skip(f"bitsandbytes unavailable: {e}", allow_module_level=True)

from test_loader_nanotron import logits, tiny, write_nanotron  # noqa: E402

from rescore.config import ModelConfig  # noqa: E402
from rescore.gen.loaders import loaders  # noqa: E402

LLAMA_FACTORY = '''
from transformers import LlamaConfig, LlamaForCausalLM


def build(config_dir):
    return LlamaForCausalLM(LlamaConfig.from_pretrained(config_dir))
'''

GPT_FACTORY = '''
import torch
from torch import nn


class GPT(nn.Module):
    def __init__(self, vocab=2048, d=32):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.lm_head = nn.Linear(d, vocab, bias=False)

    def forward(self, idx):
        x = self.wte(idx)
        t = idx.shape[1]
        causal = torch.triu(torch.ones(t, t, dtype=torch.bool), 1)
        x = x + self.attn(x, x, x, attn_mask=causal, need_weights=False)[0]
        return self.lm_head(x + self.mlp(x))


def build():
    return GPT()
'''


def _load(cfg: ModelConfig) -> Any:
    spec = loaders.get(cfg.loader)
    return spec(cfg, spec.options_model.model_validate(cfg.options))


@pytest.fixture(scope="module")
def factories(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("factories")
    (root / "llamafactory.py").write_text(LLAMA_FACTORY)
    (root / "gptfactory.py").write_text(GPT_FACTORY)
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))


IDS = torch.randint(0, 200, (2, 24), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("precision", ["int8", "int4"])
@pytest.mark.parametrize("tied", [False, True])
def test_nanotron_quantizes_as_the_hf_loader(precision: str, tied: bool, tmp_path: Path) -> None:
    hf = tiny(tmp_path, tied=tied)
    nt = write_nanotron(hf, tmp_path / "ckpt", interleaved=True)
    ref = logits(ModelConfig(name="hf", path=str(hf), device="cpu", precision=precision), IDS)
    cfg = ModelConfig(name="nt", path=str(nt), loader="nanotron", device="cpu", precision=precision)
    loaded = _load(cfg)
    kind = bnb.nn.Linear8bitLt if precision == "int8" else bnb.nn.Linear4bit
    assert isinstance(loaded.model.model.layers[0].self_attn.q_proj, kind)
    assert type(loaded.model.lm_head) is torch.nn.Linear  # the output layer stays unquantized, as in hf
    assert loaded.info["precision"] == precision and loaded.info["dtype"] == "float32"
    assert loaded.info["quantization"]["bits"] == (8 if precision == "int8" else 4)
    assert torch.equal(logits(cfg, IDS), ref)
    fp32 = logits(ModelConfig(name="hf", path=str(hf), device="cpu"), IDS)
    assert not torch.equal(ref, fp32)  # the comparison above is between quantized models


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_torch_state_dict_quantizes_as_the_hf_loader(precision: str, tmp_path: Path, tiny_model: Path,
                                                     factories: Path) -> None:
    from transformers import LlamaForCausalLM

    sd = LlamaForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).state_dict()
    torch.save(sd, tmp_path / "llama.pt")
    cfg = ModelConfig(name="sd", path=str(tmp_path / "llama.pt"), loader="torch_state_dict", device="cpu",
                      precision=precision, max_length=128,
                      options={"factory": "llamafactory:build", "factory_kwargs": {"config_dir": str(tiny_model)},
                               "tokenizer": str(tiny_model)})
    ref = logits(ModelConfig(name="hf", path=str(tiny_model), device="cpu", precision=precision), IDS)
    assert torch.equal(logits(cfg, IDS), ref)  # each sequence alone, unpadded: the same logits as hf's


def test_torch_state_dict_int8_leaves_the_head_and_linear_subclasses(tmp_path: Path, tiny_model: Path,
                                                                     factories: Path) -> None:
    import gptfactory

    torch.manual_seed(0)
    module = gptfactory.build()
    torch.save(module.state_dict(), tmp_path / "gpt.pt")
    base = {"name": "gpt", "path": str(tmp_path / "gpt.pt"), "loader": "torch_state_dict", "device": "cpu",
            "max_length": 64, "options": {"factory": "gptfactory:build", "tokenizer": str(tiny_model)}}
    loaded = _load(ModelConfig(**base, precision="int8"))
    inner = loaded.model.module
    assert all(isinstance(inner.mlp[i], bnb.nn.Linear8bitLt) for i in (0, 2))
    assert type(inner.lm_head) is torch.nn.Linear  # vocabulary-wide: the output layer
    assert type(inner.attn.out_proj) is not bnb.nn.Linear8bitLt  # MultiheadAttention reads its weight itself
    assert loaded.info["quantization"]["scheme"] == "llm.int8"
    with torch.no_grad():
        q = loaded.model(input_ids=IDS).logits
        ref = _load(ModelConfig(**base)).model(input_ids=IDS).logits
    assert torch.isfinite(q).all() and not torch.equal(q, ref)
    assert (q - ref).abs().max().item() < 0.5  # int8 rounding of two small layers, not a different model


def test_gen_at_int8_through_the_nanotron_loader_matches_hf(tmp_path: Path) -> None:
    hf = tiny(tmp_path)
    nt = write_nanotron(hf, tmp_path / "ckpt", interleaved=True)
    models = tmp_path / "m.yaml"
    models.write_text(yaml.safe_dump({"models": [
        {"name": "hf", "path": str(hf), "device": "cpu", "precision": "int8"},
        {"name": "nt", "path": str(nt), "loader": "nanotron", "device": "cpu", "precision": "int8"}]}))
    store = tmp_path / "s"
    r = invoke("gen", "demo", "--model", str(models), "--store", str(store), "--no-progress", "-t", "arc_easy")
    assert r.exit_code == 0, r.output
    assert invoke("score", "--store", str(store), "--no-progress").exit_code == 0
    from rescore.artifacts.store import Store
    from rescore.score.engine import read_results

    units = {u.manifest["model"]["name"]: u for u in Store(store).units()}
    assert {n: u.manifest["model"]["precision"] for n, u in units.items()} == {"hf": "int8", "nt": "int8"}
    assert units["nt"].manifest["model"]["quantization"] == units["hf"].manifest["model"]["quantization"]
    a, b = units["hf"].read_table(), units["nt"].read_table()
    assert a.column("choice_logprobs").to_pylist() == b.column("choice_logprobs").to_pylist()
    acc = {x["model"]: x["value"] for x in read_results(Store(store)).to_pylist()
           if x["task"] == "arc_easy" and x["metric"] == "acc" and x["seed"] == "agg"}
    assert set(acc) == {"hf", "nt"} and acc["hf"] == acc["nt"]

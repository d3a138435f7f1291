"""The ``torch_state_dict`` loader: a nanoGPT-style module from a plain state dict and a factory."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
import yaml
from support import invoke

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from rescore.config import ModelConfig  # noqa: E402
from rescore.core import Request  # noqa: E402
from rescore.gen.base import RunContext, make_backend  # noqa: E402

GPT = '''
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        t = x.shape[1]
        causal = torch.triu(torch.ones(t, t, dtype=torch.bool, device=x.device), 1)
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=causal, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """A nanoGPT-like model: learned positions, forward(idx) -> (logits of every position, None)."""

    def __init__(self, vocab=2048, d=64, layers=2, heads=2, block_size=128):
        super().__init__()
        self.config = type("C", (), {"block_size": block_size})()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(block_size, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f, self.lm_head = nn.LayerNorm(d), nn.Linear(d, vocab, bias=False)

    def forward(self, idx, targets=None):
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for b in self.blocks:
            x = b(x)
        return self.lm_head(self.ln_f(x)) * 4.0, None


def build(**kw):
    return GPT(**kw)


def broken(**kw):
    raise RuntimeError("no such size")
'''


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path):
    root = tmp_path_factory.mktemp("sd")
    (root / "mygpt.py").write_text(GPT)
    sys.path.insert(0, str(root))
    import mygpt

    torch.manual_seed(0)
    model = mygpt.build().eval()
    torch.save(model.state_dict(), root / "ckpt.pt")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "ckpt.safetensors"))
    yield root, model
    sys.path.remove(str(root))


def cfg(root: Path, tiny_model: Path, file: str = "ckpt.pt", **opts) -> ModelConfig:
    return ModelConfig(name="gpt", path=str(root / file), loader="torch_state_dict", device="cpu", max_length=128,
                       options={"factory": "mygpt:build", "tokenizer": str(tiny_model), **opts})


def requests() -> list[Request]:
    words = "the quick brown fox jumps over the lazy dog while a cat sleeps in the warm sun".split()
    rng = random.Random(3)
    out = []
    for i in range(10):
        ctx = " ".join(rng.choice(words) for _ in range(rng.randint(3, 14)))
        conts = tuple(" " + " ".join(rng.choice(words) for _ in range(rng.randint(1, 4))) for _ in range(3))
        out.append(Request(sample_id=f"{i:03d}", task="t", request_type="loglikelihood", contexts=(ctx,) * 3,
                           continuations=conts, gold=0))
    return out


def test_loglikelihoods_equal_the_module_run_by_hand(setup, tiny_model: Path) -> None:
    root, model = setup
    for file in ("ckpt.pt", "ckpt.safetensors"):
        be = make_backend(cfg(root, tiny_model, file))
        rows = [r for b in be.run(requests(), RunContext(seed=0, batch_size=4)) for r in b]
        be.close()
        for r in rows[:4]:
            for ids, lps in zip(r["choice_token_ids"], r["choice_logprobs"], strict=True):
                full = torch.tensor([list(r["prompt_token_ids"]) + list(ids)])
                with torch.no_grad():
                    logp = torch.log_softmax(model(full)[0][0].float(), -1)
                n = len(r["prompt_token_ids"])
                want = [logp[n + j - 1, t].item() for j, t in enumerate(ids)]
                assert max(abs(a - b) for a, b in zip(lps, want, strict=True)) <= 1e-5


def test_a_resumed_run_is_bit_identical(setup, tiny_model: Path) -> None:
    import pyarrow as pa

    from rescore.artifacts.schema import schema_for

    root, _ = setup
    be = make_backend(cfg(root, tiny_model))
    reqs = requests()
    full = {r["sample_id"]: r for b in be.run(reqs, RunContext(seed=0, batch_size=3)) for r in b}
    done = frozenset(list(full)[:4])
    rest = [r for b in be.run(reqs, RunContext(seed=0, batch_size=3, done=done)) for r in b]
    be.close()
    merged = sorted([full[i] for i in done] + rest, key=lambda r: r["sample_id"])
    expected = sorted(full.values(), key=lambda r: r["sample_id"])
    sch = schema_for("loglikelihood")
    assert pa.Table.from_pylist(merged, schema=sch).equals(pa.Table.from_pylist(expected, schema=sch))


def test_gen_and_score_from_the_cli_with_generation(setup, tiny_model: Path, tmp_path: Path) -> None:
    root, _ = setup
    models = tmp_path / "m.yaml"
    models.write_text(yaml.safe_dump({"models": [{"name": "gpt", "path": str(root / "ckpt.pt"), "loader": "torch_state_dict",
                                                  "device": "cpu", "max_length": 128,
                                                  "options": {"factory": "mygpt:build", "tokenizer": str(tiny_model)}}]}))
    store = tmp_path / "store"
    r = invoke("gen", "demo", "--model", str(models), "--store", str(store), "--no-progress", "-t", "arc_easy,gsm8k_chat",
               "-O", "tasks.gsm8k_chat.gen.max_new_tokens=6")
    assert r.exit_code == 0, r.output
    assert invoke("score", "--store", str(store), "--no-progress").exit_code == 0
    from rescore.artifacts.store import Store

    units = {u.manifest["task"]["name"]: u for u in Store(store).units()}
    assert units["arc_easy"].manifest["model"]["loader"] == "torch_state_dict"
    cands = units["gsm8k_chat"].read_table().column("candidates").to_pylist()
    assert all(len(c) == 2 for c in cands) and any(any(x) for x in cands)


def _error(root: Path, tiny_model: Path, tmp_path: Path, file: str = "ckpt.pt", **opts) -> str:
    models = tmp_path / "m.yaml"
    c = cfg(root, tiny_model, file, **opts)
    models.write_text(yaml.safe_dump({"models": [json.loads(c.model_dump_json())]}))
    r = invoke("gen", "demo", "--model", str(models), "--store", str(tmp_path / "s"), "--no-progress", "-t", "arc_easy")
    assert r.exit_code != 0 and "Traceback" not in r.output, r.output
    (line,) = [x for x in r.output.strip().splitlines() if x.startswith("error:")]
    return line


def test_bad_input_is_one_line(setup, tiny_model: Path, tmp_path: Path) -> None:
    root, _ = setup
    assert "the factory 'mygpt:broken' raised RuntimeError: no such size" in _error(root, tiny_model, tmp_path, factory="mygpt:broken")
    assert "does not fit the module" in _error(root, tiny_model, tmp_path, factory_kwargs={"layers": 3})
    evil = root / "evil.pt"
    import mygpt

    torch.save({"model": {"x": torch.zeros(1)}, "hook": mygpt.build}, evil)  # a function: unpickling imports code
    assert "needs arbitrary code to unpickle" in _error(root, tiny_model, tmp_path, file="evil.pt")
    assert "not found" in _error(root, tiny_model, tmp_path, file="nope.pt")


def test_the_preview_reads_no_weights_and_agrees_with_the_loaded_model(setup, tiny_model: Path, tmp_path: Path) -> None:
    """`rescore plan` sizes stored distributions from the loader's preview: the module built on the meta device
    (no weights read; the checkpoint file is not even opened) gives the logits width and context window the
    loaded model has."""
    from rescore.gen.loaders import loaders
    from rescore.plan.dist_cost import _rules

    root, _ = setup
    c = cfg(root, tiny_model)
    ld = loaders.get("torch_state_dict")
    opts = ld.options_model.model_validate(c.options)
    loaded = ld(c, opts)
    gone = c.model_copy(update={"path": str(tmp_path / "absent.pt"), "max_length": None})
    got = ld.preview(gone, opts)  # type: ignore[attr-defined]
    assert got.vocab == loaded.model.config.vocab_size == 2048
    assert got.max_length == 128 == loaded.max_length  # the module's block_size; max_length unset
    assert len(got.tokenizer) == len(loaded.tokenizer)
    rules, vocab = _rules(c)
    assert vocab == 2048 and rules.max_length == 128

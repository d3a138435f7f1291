"""The ``nanotron`` loader: a Nanotron-layout checkpoint written from a tiny Llama loads to the same model.

The writer follows Nanotron's layout (its serialize/weights.py and the Llama conversion example): one
safetensors file per parameter under the dotted name as directories, the tensor under ``data``, the
tensor-parallel modules with a ``_pp-rank-0-of-1_tp-rank-0-of-1`` suffix and their slices in the header, q/k/v
and gate/up fused, q/k rows in interleaved rotary order when ``rope_interleaved``, no lm_head when tied."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import invoke

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from rescore.config import ModelConfig  # noqa: E402
from rescore.gen.loaders import loaders  # noqa: E402


def _file(weights: Path, name: str, tensor: Any, shard: tuple[int, int] | None = None,
          meta: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    folder = weights.joinpath(*name.split(".")[:-1])
    folder.mkdir(parents=True, exist_ok=True)
    leaf = name.rsplit(".", 1)[-1]
    fname = f"model_{leaf}.safetensors" if shard is None else f"model_{leaf}_pp-rank-0-of-1_tp-rank-{shard[0]}-of-{shard[1]}.safetensors"
    save_file({"data": tensor.contiguous()}, str(folder / fname), metadata=meta)


def _sliced(weights: Path, name: str, tensor: Any, tp: int, with_meta: bool = True) -> None:
    """A tensor-parallel parameter as Nanotron saves it: row blocks per tp rank with their slices."""
    rows = tensor.shape[0] // tp
    for r in range(tp):
        part = tensor[r * rows:(r + 1) * rows]
        none = "|None,None,None" * (tensor.dim() - 1)
        meta = {"version": "1.4", "unsharded_shape": str(tuple(tensor.shape)),
                "local_global_slices_pairs": f"0,{rows},None{none}#{r * rows},{(r + 1) * rows},None{none}"}
        _file(weights, name, part, (r, tp), meta if with_meta else None)


def _interleave(w: Any, heads: int, d: int) -> Any:
    """transformers' half-split rows to Nanotron's interleaved rotary pairs, per head."""
    return w.reshape(heads, 2, d // 2, -1).transpose(1, 2).reshape(heads * d, -1)


def write_nanotron(hf_dir: Path, out: Path, *, interleaved: bool, tp: int = 1, with_meta: bool = True,
                   omit: str | None = None) -> Path:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    c = model.config
    sd = model.state_dict()
    heads, kv = c.num_attention_heads, c.num_key_value_heads
    d = c.hidden_size // heads
    w = out / "model"
    tensors: dict[str, Any] = {"model.token_position_embeddings.pp_block.token_embedding.weight": sd["model.embed_tokens.weight"]}
    plain: dict[str, Any] = {"model.final_layer_norm.pp_block.weight": sd["model.norm.weight"]}
    for i in range(c.num_hidden_layers):
        nt, hf = f"model.decoder.{i}.pp_block", f"model.layers.{i}"
        q, k = sd[f"{hf}.self_attn.q_proj.weight"], sd[f"{hf}.self_attn.k_proj.weight"]
        if interleaved:
            q, k = _interleave(q, heads, d), _interleave(k, kv, d)
        tensors[f"{nt}.attn.qkv_proj.weight"] = torch.cat([q, k, sd[f"{hf}.self_attn.v_proj.weight"]])
        tensors[f"{nt}.attn.o_proj.weight"] = sd[f"{hf}.self_attn.o_proj.weight"]
        tensors[f"{nt}.mlp.gate_up_proj.weight"] = torch.cat([sd[f"{hf}.mlp.gate_proj.weight"], sd[f"{hf}.mlp.up_proj.weight"]])
        tensors[f"{nt}.mlp.down_proj.weight"] = sd[f"{hf}.mlp.down_proj.weight"]
        plain[f"{nt}.input_layernorm.weight"] = sd[f"{hf}.input_layernorm.weight"]
        plain[f"{nt}.post_attention_layernorm.weight"] = sd[f"{hf}.post_attention_layernorm.weight"]
    if not c.tie_word_embeddings:
        tensors["model.lm_head.pp_block.weight"] = sd["lm_head.weight"]
    for name, t in tensors.items():
        if name != omit:
            _sliced(w, name, t, tp, with_meta)
    for name, t in plain.items():
        if name != omit:
            _file(w, name, t)
    conf = {"bos_token_id": c.bos_token_id, "eos_token_id": c.eos_token_id, "hidden_act": "silu",
            "hidden_size": c.hidden_size, "initializer_range": 0.02, "intermediate_size": c.intermediate_size,
            "is_llama_config": True, "max_position_embeddings": c.max_position_embeddings,
            "num_attention_heads": heads, "num_hidden_layers": c.num_hidden_layers, "num_key_value_heads": kv,
            "pad_token_id": c.pad_token_id, "pretraining_tp": 1, "rms_norm_eps": c.rms_norm_eps, "rope_scaling": None,
            "rope_theta": c.rope_parameters["rope_theta"] if getattr(c, "rope_parameters", None) else c.rope_theta,
            "tie_word_embeddings": bool(c.tie_word_embeddings), "use_cache": True, "vocab_size": c.vocab_size}
    if interleaved is False:
        conf["rope_interleaved"] = False  # newer Nanotron: half-split order; older configs lack the key
    (out / "model_config.json").write_text(json.dumps(conf, indent=2))
    (out / "config.yaml").write_text(yaml.safe_dump({"general": {"project": "t"},
                                                     "tokenizer": {"tokenizer_name_or_path": str(hf_dir)}}))
    return out


def tiny(tmp: Path, *, tied: bool = False, gqa: bool = False) -> Path:
    """The tiny Llama, or a variant of it with tied embeddings or one key/value head (new random weights)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from rescore.gen.tiny import build_tiny_model

    base = build_tiny_model(tmp / "hf")
    if not (tied or gqa):
        return base
    conf = LlamaConfig.from_pretrained(base)
    conf.tie_word_embeddings = tied
    if gqa:
        conf.num_key_value_heads = 1
    torch.manual_seed(1)
    out = tmp / "hf-variant"
    LlamaForCausalLM(conf).save_pretrained(out)
    for f in base.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(f, out / f.name)
    return out


def logits(cfg: ModelConfig, ids: Any) -> Any:
    loaded = loaders.get(cfg.loader)(cfg, loaders.get(cfg.loader).options_model.model_validate(cfg.options))
    with torch.no_grad():
        return loaded.model(input_ids=ids).logits.float()


CASES = {"untied-interleaved": {}, "half-split": {"interleaved": False}, "tied": {"tied": True},
         "gqa": {"gqa": True}, "tp2": {"tp": 2}}


@pytest.mark.parametrize("case", list(CASES))
def test_same_logits_as_the_transformers_model(case: str, tmp_path: Path) -> None:
    kw = dict(CASES[case])
    hf = tiny(tmp_path, tied=kw.pop("tied", False), gqa=kw.pop("gqa", False))
    nt = write_nanotron(hf, tmp_path / "ckpt" / "stage1" / "100", interleaved=kw.pop("interleaved", True), **kw)
    ids = torch.randint(0, 200, (2, 24), generator=torch.Generator().manual_seed(0))
    ref = logits(ModelConfig(name="hf", path=str(hf), device="cpu"), ids)
    got = logits(ModelConfig(name="nt", path=str(nt), loader="nanotron", device="cpu"), ids)
    assert (got - ref).abs().max().item() <= 1e-5
    if case == "untied-interleaved":  # bf16: the same bf16 weights as transformers' own bf16 load
        ref16 = logits(ModelConfig(name="hf", path=str(hf), device="cpu", precision="bf16"), ids)
        got16 = logits(ModelConfig(name="nt", path=str(nt), loader="nanotron", device="cpu", precision="bf16"), ids)
        assert (got16 - ref16).abs().max().item() <= 1e-5


@pytest.mark.slow  # over 5 s on 2 cores: the slow tier (CI runs it too)
def test_gen_with_the_nanotron_loader_gives_the_hf_rows_and_scores(tmp_path: Path) -> None:
    """Per-choice loglikelihoods, acc and greedy generations equal those of the same weights loaded by hf."""
    from rescore.artifacts.store import Store

    hf = tiny(tmp_path)
    nt = write_nanotron(hf, tmp_path / "ckpt" / "stage1" / "100", interleaved=True)
    models = tmp_path / "models.yaml"
    models.write_text(yaml.safe_dump({"models": [
        {"name": "hf", "path": str(hf), "device": "cpu"},
        {"name": "nt", "path": str(nt), "loader": "nanotron", "device": "cpu"}]}))
    store = tmp_path / "store"
    r = invoke("gen", "demo", "--model", str(models), "--store", str(store), "--no-progress", "-t", "arc_easy,gsm8k_chat")
    assert r.exit_code == 0, r.output
    assert invoke("score", "--store", str(store), "--no-progress").exit_code == 0
    units: dict[tuple[str, str, int], Any] = {}
    for u in Store(store).units():
        units[(u.manifest["model"]["name"], u.manifest["task"]["name"], u.manifest["seed"])] = u
    for (name, task, seed), u in units.items():
        if name != "nt":
            continue
        a, b = units[("hf", task, seed)].read_table(), u.read_table()
        if task == "arc_easy":
            assert a.column("choice_sum_logprob").to_pylist() == b.column("choice_sum_logprob").to_pylist()
            assert a.column("choice_logprobs").to_pylist() == b.column("choice_logprobs").to_pylist()
        else:
            assert a.column("candidates").to_pylist() == b.column("candidates").to_pylist()
    assert units[("nt", "arc_easy", 0)].manifest["model"]["loader"] == "nanotron"
    from rescore.score.engine import read_results

    acc = {x["model"]: x["value"] for x in read_results(Store(store)).to_pylist()
           if x["task"] == "arc_easy" and x["metric"] == "acc" and x["seed"] == "agg"}
    assert acc["nt"] == acc["hf"]


def _fails(tmp_path: Path, cfg_path: Path, **extra: Any) -> str:
    models = tmp_path / "m.yaml"
    models.write_text(yaml.safe_dump({"models": [{"name": "nt", "path": str(cfg_path), "loader": "nanotron",
                                                  "device": "cpu", **extra}]}))
    r = invoke("gen", "demo", "--model", str(models), "--store", str(tmp_path / "s"), "--no-progress", "-t", "arc_easy")
    assert r.exit_code != 0 and "Traceback" not in r.output
    lines = [x for x in r.output.strip().splitlines() if x.startswith("error:")]
    assert len(lines) == 1, r.output
    return lines[0]


def test_bad_checkpoints_are_one_line_errors_naming_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hf = tiny(tmp_path)
    good = write_nanotron(hf, tmp_path / "good", interleaved=True)
    no_conf = tmp_path / "no_conf"
    shutil.copytree(good, no_conf)
    (no_conf / "model_config.json").unlink()
    assert "no model_config.json" in _fails(tmp_path, no_conf)
    missing = write_nanotron(hf, tmp_path / "missing", interleaved=True, omit="model.decoder.1.pp_block.mlp.down_proj.weight")
    assert "model.decoder.1.pp_block.mlp.down_proj.weight" in _fails(tmp_path, missing)
    bad_shape = tmp_path / "bad_shape"
    shutil.copytree(good, bad_shape)
    conf = json.loads((bad_shape / "model_config.json").read_text())
    conf["intermediate_size"] += 8
    (bad_shape / "model_config.json").write_text(json.dumps(conf))
    assert "shape" in _fails(tmp_path, bad_shape)
    no_meta = write_nanotron(hf, tmp_path / "no_meta", interleaved=True, tp=2, with_meta=False)
    assert "no slices to merge them by" in _fails(tmp_path, no_meta)
    truncated = tmp_path / "truncated"
    shutil.copytree(good, truncated)
    f = next((truncated / "model").rglob("model_weight.safetensors"))
    f.write_bytes(f.read_bytes()[:40])
    assert str(f) in _fails(tmp_path, truncated)
    with monkeypatch.context() as m:  # int8 without bitsandbytes importable: what to install
        m.setitem(sys.modules, "bitsandbytes", None)
        assert "precision int8 needs bitsandbytes" in _fails(tmp_path, good, precision="int8")
    r = invoke("gen", "demo", "--model", str(good), "--loader", "nanotrn", "--store", str(tmp_path / "s2"), "--no-progress")
    assert r.exit_code == 2 and "did you mean 'nanotron'" in r.output


@pytest.mark.slow  # over 5 s on 2 cores: the slow tier (CI runs it too)
def nanotron_matrix(tmp: Path, ckpts: Path, steps: str, dist: dict[str, Any] | None = None) -> Path:
    """A matrix over ``ckpts``/stage1/STEP Nanotron directories, with arc_easy (4 rows; ``dist`` when given)."""
    import textwrap

    from support import ARC_EASY, write_suite

    task = {**ARC_EASY, "subset_size": 4, **({"dist": dist} if dist else {})}
    suite = write_suite(tmp / "suite.yaml", Path(__file__).resolve().parents[1] / "rescore" / "data", [task], name="one")
    matrix = tmp / "matrix.yaml"
    matrix.write_text(textwrap.dedent(f"""
        name: nt
        precision: fp32
        suites: [{suite}]
        model: {{loader: nanotron, device: cpu}}
        stages:
          - {{name: stage1, path: "{ckpts}/stage1/{{step}}", steps: {steps}}}
    """))
    return matrix


def test_plan_and_backfill_find_nanotron_checkpoint_directories(tmp_path: Path) -> None:
    """A matrix over Nanotron's <ckpts>/<stage>/<STEP>/ directories with model: {loader: nanotron}: plan checks for
    model_config.json (not config.json), names a step that is not there, and backfill generates through the loader."""

    from support import cli

    hf = tiny(tmp_path)
    ckpts = tmp_path / "ckpts"
    write_nanotron(hf, ckpts / "stage1" / "100", interleaved=True)

    def write(steps: str) -> Path:
        return nanotron_matrix(tmp_path, ckpts, steps)

    matrix = write("[100, 200]")
    r = cli("plan", str(matrix), "--store", str(tmp_path / "store"))
    assert r.returncode == 2 and "stage1 step 200" in r.stderr and "does not exist" in r.stderr, r.stderr
    (ckpts / "stage1" / "200").mkdir(parents=True)
    shutil.copy(hf / "config.json", ckpts / "stage1" / "200" / "config.json")  # an hf directory, not nanotron
    r = cli("plan", str(matrix), "--store", str(tmp_path / "store"))
    assert r.returncode == 2 and "has no model_config.json" in r.stderr, r.stderr
    write("[100]")
    r = cli("backfill", str(matrix), "--store", str(tmp_path / "store"))
    assert r.returncode == 0, r.stderr
    from rescore.artifacts.store import Store

    (u,) = Store(tmp_path / "store").units()
    assert u.complete and u.manifest["model"]["loader"] == "nanotron" and u.manifest["model"]["step"] == 100


def test_plan_sizes_the_stored_distributions_of_a_nanotron_checkpoint_as_gen_does(tmp_path: Path) -> None:
    """`rescore plan` reads a Nanotron checkpoint's tokenizer and config (its loader's preview, no weights) and
    shows the positions and bytes of a task's stored distributions that gen then prints and writes."""

    from rescore.artifacts.store import Store

    hf = tiny(tmp_path)
    ckpts = tmp_path / "ckpts"
    write_nanotron(hf, ckpts / "stage1" / "100", interleaved=True)
    matrix = nanotron_matrix(tmp_path, ckpts, "[100]", dist={"format": {"topk": 8}})
    store = tmp_path / "store"
    out = invoke("plan", str(matrix), "--store", str(store), "--json")
    assert out.exit_code == 0, out.output
    (row,) = json.loads(out.stdout)["units"]
    assert row["dist_positions"] > 0 and row["dist_bytes"] > 0 and row["dist_problem"] is None, row
    r = invoke("backfill", str(matrix), "--store", str(store))
    assert r.exit_code == 0, r.output
    (u,) = Store(store).units()
    assert u.manifest["dist"]["positions"] == row["dist_positions"]
    # per position: position and target, a float32 tail, 8 uint16 ids and 8 float16 logprobs
    assert u.manifest["dist"]["positions"] * (8 + 4 + 8 * (2 + 2)) == row["dist_bytes"]

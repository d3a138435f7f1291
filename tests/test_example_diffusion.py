"""Your own generator as a backend: the worked example examples/diffusion (iterative unmasking with two
methods over the tiny Llama) run through `rescore gen --backend examples.diffusion:Backend` on a GSM8K slice
of ../shared/data and the SFT-native prompts, scored on CPU: each method x seed is a unit of its own, its
rows are ordinary generate rows, seeds aggregate per method, reruns and resumes give identical rows, and a
bad method is a one-line error."""

from __future__ import annotations

import json
import textwrap
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from support import assert_one_line_error, cli, invoke

from rescore.artifacts.schema import schema_for
from rescore.artifacts.store import Store
from rescore.core import derive_seed

ROOT = Path(__file__).resolve().parents[1]
BACKEND = "examples.diffusion:Backend"
METHODS = ("confidence", "random")
N_GSM8K, N_SFT, MAX_NEW = 3, 2, 12


def write_suite(tmp: Path, data: Path) -> Path:
    p = tmp / "suite.yaml"
    p.write_text(textwrap.dedent(f"""\
        name: diffusion
        data_root: {data}
        seeds: [0, 1]
        tasks:
          - name: gsm8k
            family: gsm8k
            source: {{path: gsm8k/test.jsonl}}
            subset_size: 3
            gen: {{temperature: 0.8, top_p: 0.95, n: {N_GSM8K}, max_new_tokens: {MAX_NEW}, stop: ["Question:"]}}
          - name: sft_native
            family: sft_native
            subset_size: 3
            chat: true
            gen: {{temperature: 0.7, n: {N_SFT}, max_new_tokens: {MAX_NEW}}}
    """))
    return p


def write_models(tmp: Path, model: Path, name: str = "models.yaml", **extra: object) -> Path:
    """One model per method (the backend comes from --backend on the command line)."""
    p = tmp / name
    lines = ["models:"]
    for m in METHODS:
        opts = {"method": m, "steps": 3, **extra}
        lines.append(f"  - {{name: diff-{m}, path: {model}, options: {json.dumps(opts)}}}")
    p.write_text("\n".join(lines) + "\n")
    return p


def gen(suite: Path, models: Path, store: Path, *more: str):  # type: ignore[no-untyped-def]
    return invoke("gen", suite, "--model", models, "--backend", BACKEND, "--store", store, "--no-progress", *more)


@pytest.fixture(scope="module")
def importable() -> Iterator[None]:
    """`examples.diffusion` importable in this process, as it is for `rescore` run from the repository root."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(ROOT))
        yield


@pytest.fixture(scope="module")
def generated(importable: None, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    shared = ROOT.parent / "shared" / "data"
    if not (shared / "gsm8k" / "test.jsonl").is_file():
        pytest.skip(f"shared data not found at {shared}")
    tmp = tmp_path_factory.mktemp("diffusion")
    suite, models, store = write_suite(tmp, shared), write_models(tmp, tiny_model), tmp / "store"
    r = gen(suite, models, store)
    assert r.exit_code == 0, r.output[-3000:]
    r = invoke("score", "--store", store)
    assert r.exit_code == 0, r.output[-3000:]
    return {"tmp": tmp, "suite": suite, "models": models, "store": store}


def units(store: Path) -> dict[tuple[str, str, int], tuple[str, dict, list[dict]]]:
    """(model, task, seed) -> (run id, manifest, rows sorted by sample id); every unit complete."""
    out = {}
    for u in Store(store).units():
        assert u.complete, u.run_id
        m = u.manifest
        key = (m["model"]["name"], m["task"]["name"], m["seed"])
        assert key not in out, f"two units for {key}"
        rows = sorted(pq.read_table(u.parquet_path).to_pylist(), key=lambda r: r["sample_id"])
        out[key] = (u.run_id, m, rows)
    return out


def rows_by_unit(store: Path) -> dict[tuple[str, str, int], tuple[str, list[dict]]]:
    """(model, task, seed) -> (run id, rows): what a rerun must reproduce exactly."""
    return {key: (run_id, rows) for key, (run_id, _, rows) in units(store).items()}


def test_each_method_and_seed_is_a_unit_of_ordinary_generate_rows(generated: dict[str, Path], tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    got = units(generated["store"])
    assert sorted(got) == sorted((f"diff-{m}", t, s) for m in METHODS for t in ("gsm8k", "sft_native") for s in (0, 1))
    assert len({run_id for run_id, _, _ in got.values()}) == 8  # method and seed are both part of the unit's identity
    schema = schema_for("generate")
    for (model, task, seed), (run_id, manifest, rows) in got.items():
        method = model.removeprefix("diff-")
        assert manifest["model"]["backend"] == BACKEND and manifest["model"]["sampler"]["method"] == method
        assert manifest["resolved"]["model"]["options"]["method"] == method and manifest["seed"] == seed
        assert pq.read_schema(Store(generated["store"]).gen_dir / run_id / "rows.parquet").names == schema.names
        n = N_GSM8K if task == "gsm8k" else N_SFT
        assert len(rows) == 3
        for r in rows:
            assert r["request_type"] == "generate" and r["seed"] == seed and r["chat"] is (task == "sft_native")
            assert json.loads(r["sampling"])["n"] == n
            assert r["cand_seed"] == [derive_seed(seed, r["sample_id"], c) for c in range(n)]
            assert r["prompt_token_ids"] == tok.encode(r["prompt"])
            assert r["prompt"].endswith("<|im_start|>assistant\n" if r["chat"] else "Answer:")
            assert len(r["candidates"]) == len(r["cand_token_ids"]) == len(r["cand_logprobs"]) == n
            for text, ids, lps, why, tk_ids, tk_lps in zip(r["candidates"], r["cand_token_ids"], r["cand_logprobs"],
                                                           r["cand_finish_reason"], r["cand_topk_ids"],
                                                           r["cand_topk_logprobs"], strict=True):
                assert 1 <= len(ids) == len(lps) == len(tk_ids) == len(tk_lps) <= MAX_NEW
                assert all(lp <= 0 for lp in lps) and all(len(t) == 5 for t in tk_ids)
                assert all(t[0] >= lp - 1e-6 for t, lp in zip(tk_lps, lps, strict=True))  # the top-1 is the most likely
                if why == "eos":
                    assert ids[-1] in (tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>"))
                    assert text == tok.decode(ids[:-1], skip_special_tokens=True)
                elif why == "length":
                    assert len(ids) == MAX_NEW and text == tok.decode(ids, skip_special_tokens=True)
                else:
                    assert why == "stop" and "Question:" in tok.decode(ids, skip_special_tokens=True)
    for task in ("gsm8k", "sft_native"):
        for seed in (0, 1):
            a, b = (got[(f"diff-{m}", task, seed)][2] for m in METHODS)
            assert [r["sample_id"] for r in a] == [r["sample_id"] for r in b]
            assert [r["cand_token_ids"] for r in a] != [r["cand_token_ids"] for r in b]  # the method matters
        c0, c1 = (got[("diff-confidence", task, s)][2] for s in (0, 1))
        assert [r["cand_token_ids"] for r in c0] != [r["cand_token_ids"] for r in c1]  # so does the seed


def test_gsm8k_best_of_n_and_sft_metrics_aggregate_the_seeds_of_each_method(generated: dict[str, Path]) -> None:
    r = invoke("results", "--store", generated["store"], "--seed", "*", "-f", "json")
    assert r.exit_code == 0, r.output[-3000:]
    rows = json.loads(r.stdout)
    agg = {(x["model"], x["task"], x["metric"]): x for x in rows if x["seed"] == "agg" and x["subset"] == "all"}
    per_seed = Counter((x["model"], x["task"], x["metric"]) for x in rows if x["seed"] != "agg" and x["subset"] == "all")
    wanted = {"gsm8k": ("exact_match_strict", "exact_match_flexible", "maj_at_n", "pass_at_1", "bon_first",
                             "bon_oracle", "bon_majority", "bon_max_mean_logprob", "bon_max_sum_logprob"),
              "sft_native": ("all_checks_pass_rate", "instruction_match_rate", "chat_clean_rate")}
    got = units(generated["store"])
    for m in METHODS:
        for task, metrics in wanted.items():
            run_ids = ",".join(got[(f"diff-{m}", task, s)][0] for s in (0, 1))
            for metric in metrics:
                a = agg[(f"diff-{m}", task, metric)]
                assert a["n_seeds"] == 2 and a["run_id"] == run_ids and a["value"] is not None
                assert 0.0 <= a["value"] <= 1.0 and per_seed[(f"diff-{m}", task, metric)] == 2


def test_a_rerun_and_a_resumed_run_give_identical_rows(generated: dict[str, Path], tiny_model: Path) -> None:
    """A run stopped after 2 rows (fail_after is a runtime option, not part of the run id), then run again
    with another batch size: the unit it stopped in resumes, the others are generated in batches of
    another size, and every row equals the first store's."""
    tmp = generated["tmp"]
    ref = {k: v for k, v in rows_by_unit(generated["store"]).items() if k[1] == "gsm8k"}
    again = tmp / "again"
    r = gen(generated["suite"], write_models(tmp, tiny_model, "failing.yaml", fail_after=2), again, "-t", "gsm8k")
    assert r.exit_code == 1 and "stopped after 2 rows" in r.stderr, r.output[-3000:]
    (partial,) = Store(again).units()
    assert not partial.complete and partial.rows_done() == 2
    r = gen(generated["suite"], generated["models"], again, "-t", "gsm8k", "--batch-size", "1")
    assert r.exit_code == 0, r.output[-3000:]
    assert "3 generated, 1 resumed" in r.stdout
    assert rows_by_unit(again) == ref
    r = gen(generated["suite"], generated["models"], again, "-t", "gsm8k")  # complete: nothing to do
    assert r.exit_code == 0 and "4 already complete" in r.stdout


def test_a_bad_method_or_option_is_a_one_line_error_and_writes_nothing(tmp_path: Path, tiny_model: Path) -> None:
    suite = write_suite(tmp_path, ROOT.parent / "shared" / "data")
    models = tmp_path / "models.yaml"
    models.write_text(f"models:\n  - {{name: diff, path: {tiny_model}, options: {{method: confidance}}}}\n")
    env = {"PYTHONPATH": str(ROOT)}
    out = cli("gen", suite, "--model", models, "--backend", BACKEND, "--store", tmp_path / "s", cwd=tmp_path, env=env)
    err = assert_one_line_error(out, 2, contains="option method must be 'confidence' or 'random', got 'confidance'")
    assert "model 'diff' (diffusion backend" in err
    models.write_text(f"models:\n  - {{name: diff, path: {tiny_model}, options: {{methd: random}}}}\n")
    out = cli("gen", suite, "--model", models, "--backend", BACKEND, "--store", tmp_path / "s", cwd=tmp_path, env=env)
    err = assert_one_line_error(out, 2, contains="unknown option 'methd'")
    assert "attention" in err and "method" in err and "steps" in err  # the valid keys, the loader's too
    assert not (tmp_path / "s").exists()
    out = cli("gen", suite, "--model", tiny_model, "--backend", "examples.difusion:Backend", "--store", tmp_path / "s",
              cwd=tmp_path, env=env)
    assert_one_line_error(out, 2, contains="cannot import backend 'examples.difusion:Backend'")
    assert not (tmp_path / "s").exists()


def test_the_sampler_unmasks_every_position_once_in_its_methods_order(importable: None, tiny_model: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from examples.diffusion import schedule, unmask
    from rescore.core import GenParams

    assert schedule(10, 4) == [3, 3, 2, 2] and schedule(3, 8) == [1, 1, 1]
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    prompt, L = [0, 17, 250, 31], 9
    sampled, greedy = GenParams(temperature=0.9, n=2, logprobs_topk=3), GenParams(temperature=0.0, logprobs_topk=0)

    def run(method: str, seeds: list[int], p: GenParams, steps: int = L):  # type: ignore[no-untyped-def]
        return unmask(model, prompt, seeds, length=L, steps=steps, method=method, mask_id=2, params=p)

    for method in ("confidence", "random"):
        a = run(method, [11, 12], sampled)
        assert all(sorted(c.order) == list(range(L)) and 2 not in c.token_ids for c in a)
        assert all(len(c.topk_ids) == L and all(len(t) == 3 for t in c.topk_ids) for c in a)
        assert [(c.token_ids, c.logprobs, c.order) for c in run(method, [11, 12], sampled)] == \
            [(c.token_ids, c.logprobs, c.order) for c in a]  # the seeds decide
        assert a[0].token_ids != a[1].token_ids
    causal = unmask(model, prompt, [11], length=L, steps=L, method="random", mask_id=2, params=sampled,
                    full_attention=False)[0]
    rand = run("random", [11], sampled)[0]
    assert causal.order == rand.order and causal.token_ids != rand.token_ids  # the canvas seen from the left only
    assert rand.order == torch.randperm(L, generator=torch.Generator().manual_seed(11)).tolist()
    # greedy and confidence: one step per position, each the most confident of the masked ones; the seed is unused
    g1, g2 = run("confidence", [1], greedy)[0], run("confidence", [2], greedy)[0]
    assert g1.token_ids == g2.token_ids and g1.order == g2.order and g1.topk_ids == []
    with pytest.raises(ValueError, match="unknown unmasking method 'confidance'"):
        run("confidance", [1], greedy)

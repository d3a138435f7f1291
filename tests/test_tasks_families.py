"""Every family builds requests from the real data in ../shared/data, and runs end to end through the
runner (prepare -> gen -> rows) on the fake backend; the SFT-native set is complete and well-formed."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest

import rescore.tasks
from rescore.config import ModelConfig, TaskConfig
from rescore.tasks.base import families
from rescore.tasks.data import get_task_data, prepare_task
from rescore.tasks.gsm8k import final_answer
from rescore.tasks.sft_native import CATEGORIES, CHECKS, load_prompts
from rescore.tasks.suites import load_suite, suite_data_root


class ByteTok:
    eos_token_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


LOCAL_TASKS = [
    dict(name="hellaswag", family="multiple_choice", source={"path": "hellaswag/hellaswag_val_full.txt.bz2"},
         params={"prompt": "hellaswag", "schema": "hellaswag_text"}),
    dict(name="arc_easy", family="multiple_choice", source={"path": "arc_easy/arc_easy.jsonl"},
         params={"prompt": "arc", "schema": "llm_foundry"}),
    dict(name="arc_challenge", family="multiple_choice", source={"path": "arc_challenge/arc_challenge.jsonl"},
         params={"prompt": "arc", "schema": "llm_foundry", "skip_duplicate_choices": True}),
    dict(name="piqa", family="multiple_choice", source={"path": "piqa/piqa.jsonl"},
         params={"prompt": "piqa", "schema": "llm_foundry"}),
    dict(name="winogrande", family="multiple_choice", source={"path": "winogrande/winogrande.jsonl"},
         params={"prompt": "winogrande", "schema": "llm_foundry"}),
    dict(name="copa", family="multiple_choice", source={"path": "copa/copa.jsonl"},
         params={"prompt": "copa", "schema": "llm_foundry"}),
    dict(name="openbookqa", family="multiple_choice", source={"path": "openbookqa/test.tsv"},
         params={"prompt": "openbookqa", "schema": "obqa_tsv"}),
    dict(name="commonsense_qa", family="multiple_choice", source={"path": "commonsense_qa/dev_rand_split.jsonl"},
         params={"prompt": "commonsense_qa"}),
    dict(name="mmlu", family="multiple_choice", source={"path": "mmlu/test", "fewshot_path": "mmlu/dev"},
         num_fewshot=5, params={"prompt": "mmlu", "schema": "mmlu_csv"}),
    dict(name="gsm8k", family="gsm8k", source={"path": "gsm8k/test.jsonl", "fewshot_path": "gsm8k/train.jsonl"}, num_fewshot=5),
    dict(name="gsm8k_chat", family="gsm8k", source={"path": "gsm8k/test.jsonl"}, chat=True),
    dict(name="wt2_packed", family="ppl_packed", source={"path": "wikitext2/wiki.test.raw"},
         params={"documents": "wikitext_pages", "line_ending": "crlf_doubled", "target_tokens": 2000, "seq_len": 256}),
    dict(name="wt2_docs", family="ppl_docs", source={"path": "wikitext2/wiki.test.raw"},
         params={"documents": "wikitext_pages", "line_ending": "crlf_doubled", "detokenize": "wikitext"}),
    dict(name="sft_native", family="sft_native", chat=True),
]


@pytest.mark.parametrize("spec", LOCAL_TASKS, ids=[s["name"] for s in LOCAL_TASKS])
def test_family_builds_requests_from_real_data(spec: dict, shared_data: Path, tmp_path: Path):
    subset = None if spec["family"] == "ppl_packed" else 12
    task = TaskConfig(**spec, subset_size=subset)
    assert families.get(task.family).check(task) == []
    data = prepare_task(tmp_path, task, data_root=shared_data)
    reqs = rescore.tasks.build_requests(task, data, ByteTok())
    assert reqs and len({r.sample_id for r in reqs}) == len(reqs)
    assert reqs == rescore.tasks.build_requests(task, get_task_data(tmp_path, task), ByteTok())  # deterministic
    rt = rescore.tasks.request_type(task)
    for r in reqs:
        assert r.request_type == rt and r.task == task.name
        if rt == "loglikelihood":
            assert len(r.contexts) == len(r.continuations) >= 2 and 0 <= r.gold < len(r.contexts)
            assert all(c.startswith(" ") for c in r.continuations)
        elif rt == "generate":
            assert (r.messages is not None) == r.chat == task.chat
            assert r.prompt or r.messages
        else:
            assert (r.text is not None) != (r.token_ids is not None) and r.n_bytes and r.n_words


def test_few_shot_winogrande_acc_norm_divides_by_the_option_context_without_the_examples(shared_data: Path,
                                                                                      tmp_path: Path):
    import pyarrow as pa

    from rescore.artifacts.schema import schema_for
    from rescore.core import GenParams
    from rescore.gen.base import RunContext
    from rescore.gen.fake import FakeBackend
    from rescore.score.metrics_choice import _norm_lengths
    from rescore.score.spec import UnitInfo

    task = TaskConfig(name="winogrande", family="multiple_choice", subset_size=6, num_fewshot=2,
                      source={"path": "winogrande/winogrande.jsonl", "fewshot_path": "winogrande/winogrande.jsonl"},
                      params={"prompt": "winogrande", "schema": "llm_foundry"})
    reqs = rescore.tasks.build_requests(task, prepare_task(tmp_path, task, data_root=shared_data), ByteTok())
    rows = [row for batch in FakeBackend(ModelConfig(name="f", path="fake", backend="fake")).run(
        reqs, RunContext(seed=0, params=GenParams(), batch_size=8)) for row in batch]
    schema = schema_for("loglikelihood")
    full = pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows], schema=schema)
    # as the scorer loads it: acc_norm's columns only; contexts and meta come through unit.read
    table = full.select(["sample_id", "category", "choice_sum_logprob", "gold", "choice_n_chars", "choice_n_bytes",
                         "choices"])
    reads = []

    def read(columns):  # type: ignore[no-untyped-def]
        reads.append(sorted(columns))
        return full.select(columns)

    unit = UnitInfo("x", {}, read=read)
    got_chars = _norm_lengths(table, unit, "chars")
    got_bytes = _norm_lengths(table, unit, "bytes")
    assert reads == [["contexts", "meta"]]  # once, shared by both
    # lm-eval's choice strings: the sentence up to the blank with each option, i.e. the zero-shot contexts
    zero = TaskConfig(**{**task.model_dump(), "num_fewshot": 0})
    options = {r.sample_id: r.contexts for r in rescore.tasks.build_requests(
        zero, prepare_task(tmp_path, zero, data_root=shared_data), ByteTok())}
    for i, r in enumerate(reqs):
        assert len(r.meta["fewshot_idx"]) == 2 and all(c.endswith(o) and c != o for c, o in
                                                       zip(r.contexts, options[r.sample_id], strict=True))
        assert list(got_chars[2 * i : 2 * i + 2]) == [len(o) for o in options[r.sample_id]]
        assert list(got_bytes[2 * i : 2 * i + 2]) == [len(o.encode("utf-8")) for o in options[r.sample_id]]
    # zero-shot rows pin nothing: their contexts are the choice strings already
    assert all("choice_chars" not in (r.meta or {}) for r in rescore.tasks.build_requests(
        zero, prepare_task(tmp_path, zero, data_root=shared_data), ByteTok()))


def test_mmlu_all_subjects_from_the_local_copy(shared_data: Path):
    task = TaskConfig(name="mmlu", family="multiple_choice", source={"path": "mmlu/test", "fewshot_path": "mmlu/dev"},
                      num_fewshot=5, subset_size=300, params={"prompt": "mmlu", "schema": "mmlu_csv"})
    data = get_task_data(Path("/nonexistent"), task, data_root=shared_data)
    assert data.meta["counts"]["source_rows"] == 14079 and len(data.fewshot_rows) == 285
    reqs = rescore.tasks.build_requests(task, data, None)
    subjects = {r.category for r in reqs}
    assert len(subjects) > 40
    for r in reqs:
        human = r.category.replace("_", " ")
        assert r.contexts[0].startswith(f"The following are multiple choice questions (with answers) about {human}.\n\n")
        assert r.contexts[0].count("\nAnswer: ") == 5 and r.continuations == (" A", " B", " C", " D")
    single = TaskConfig(name="hscs", family="multiple_choice", source={"path": "mmlu/test"},
                        params={"prompt": "mmlu", "schema": "mmlu_csv", "subjects": ["high_school_computer_science"]})
    assert len(get_task_data(Path("/nonexistent"), single, data_root=shared_data).rows) == 100


def test_gsm8k_targets_and_answers(shared_data: Path):
    task = TaskConfig(name="gsm8k", family="gsm8k", source={"path": "gsm8k/test.jsonl"}, subset_size=5)
    data = get_task_data(Path("/nonexistent"), task, data_root=shared_data)
    for r in rescore.tasks.build_requests(task, data, None):
        assert r.target.split("####")[-1].strip().replace(",", "") == r.meta["answer"]
        assert r.prompt.startswith("Question: ") and r.prompt.endswith("\nAnswer:")
    assert final_answer("so 1,234 in total\n#### 1,234") == "1234"
    chat = TaskConfig(name="c", family="gsm8k", source={"path": "gsm8k/test.jsonl"}, subset_size=2, chat=True,
                      params={"instruction": "Solve it."})
    reqs = rescore.tasks.build_requests(chat, get_task_data(Path("/x"), chat, data_root=shared_data), None)
    assert reqs[0].messages[0]["role"] == "user" and reqs[0].messages[0]["content"].startswith("Solve it.\n\n")


def test_sft_native_prompt_set():
    prompts = load_prompts()
    assert len(prompts) >= 48
    counts = Counter(p["category"] for p in prompts)
    assert set(counts) == set(CATEGORIES) and min(counts.values()) >= 8
    assert len({p["id"] for p in prompts}) == len(prompts)
    for p in prompts:
        assert set(p["checks"]) <= CHECKS
    used = {c for p in prompts for c in p["checks"]}
    assert {"bullets", "numbered", "json", "python_parses", "max_words", "no_role_leak", "refusal"} <= used


def test_sft_native_requests_and_plain_prompts():
    task = TaskConfig(name="sft", family="sft_native", chat=True, params={"categories": ["strict_json"]})
    data = get_task_data(Path("/nonexistent"), task)
    reqs = rescore.tasks.build_requests(task, data, None)
    assert len(reqs) == 8 and {r.category for r in reqs} == {"strict_json"}
    assert all(r.chat and r.meta["checks"]["json"]["kind"] in ("object", "array") for r in reqs)
    plain = task.model_copy(update={"chat": False})
    r = rescore.tasks.build_requests(plain, data, None)[4]  # has a system message
    assert not r.chat and r.messages is None and "\n\n" in r.prompt


def test_bad_prompt_file_is_reported(tmp_path: Path):
    from rescore.errors import ConfigError

    f = tmp_path / "p.yaml"
    f.write_text("prompts:\n  - {id: a, category: poetry, messages: [{role: user, content: hi}], checks: {rhymes: true}}\n")
    with pytest.raises(ConfigError) as e:
        load_prompts(f)
    assert "poetry" in e.value.render() and "rhymes" in e.value.render()


def test_demo_suite_end_to_end_on_the_fake_backend(shared_data: Path, tmp_path: Path):
    from rescore.artifacts.store import Store
    from rescore.gen.runner import plan_units, run_units

    suite = load_suite("demo")
    root = suite_data_root(suite, shared_data)
    store = Store(tmp_path / "store")
    for t in suite.tasks:
        prepare_task(store.root, t, data_root=root)
    plans = plan_units(store, suite, [ModelConfig(name="fake", path="fake", backend="fake")], data_root=root)
    results = run_units(store, plans)
    assert {r.plan.task.name for r in results} == {t.name for t in suite.tasks}
    by_task = Counter(r.plan.task.name for r in results)
    assert by_task["gsm8k_chat"] == 2 and by_task["hellaswag"] == 1  # sampled tasks run per seed
    expected = {"wikitext2_packed": 4, "wikitext2_docs": 2, "hellaswag": 8, "arc_easy": 8, "gsm8k_chat": 4, "sft_native": 8}
    for r in results:
        table = store.unit(r.plan.run_id).read_table()
        assert table.num_rows == expected[r.plan.task.name]
    gsm = next(r for r in results if r.plan.task.name == "gsm8k_chat")
    t = store.unit(gsm.plan.run_id).read_table(columns=["candidates", "meta"]).to_pylist()
    assert all(len(row["candidates"]) == 2 for row in t)


def test_demo_suite_end_to_end_on_the_tiny_model(tiny_model: Path, shared_data: Path, tmp_path: Path):
    """The demo suite on a real (tiny) transformers model: prepare -> gen -> rows."""
    from rescore.artifacts.store import Store
    from rescore.gen.runner import plan_units, run_units

    suite = load_suite("demo")
    root = suite_data_root(suite, shared_data)
    store = Store(tmp_path / "store")
    for t in suite.tasks:
        prepare_task(store.root, t, data_root=root)
    model = ModelConfig(name="tiny", path=str(tiny_model), backend="hf", device="cpu")
    results = run_units(store, plan_units(store, suite, [model], data_root=root))
    packed = next(r for r in results if r.plan.task.name == "wikitext2_packed")
    rows = store.unit(packed.plan.run_id).read_table(columns=["n_tokens", "logprobs"]).to_pylist()
    assert [r["n_tokens"] for r in rows] == [127] * 4  # 508 scored tokens in 4 windows of 128
    mc = next(r for r in results if r.plan.task.name == "hellaswag")
    rows = store.unit(mc.plan.run_id).read_table(columns=["choices", "choice_sum_logprob", "gold"]).to_pylist()
    assert len(rows) == 8 and all(len(r["choice_sum_logprob"]) == 4 for r in rows)

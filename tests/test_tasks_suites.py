"""Shipped suites validate; suite loading, validation errors and the prepare/suites commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from support import invoke

from rescore.config import ConfigProblems
from rescore.errors import ConfigError
from rescore.tasks.suites import list_suites, load_suite, suite_data_root, suites_dir, validate_file

SHIPPED = sorted(suites_dir().glob("*.yaml"))


def test_expected_suites_are_shipped_and_listed():
    names = {n for n, _, _ in list_suites()}
    assert {"stage1", "stage2", "stage3", "stage4", "gsm8k_chat", "demo"} <= names
    assert all(desc for _, _, desc in list_suites())


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_suite_validates(path: Path):
    assert validate_file(path) == []
    suite = load_suite(path.stem)
    assert suite.name == path.stem


def tasks_of(name: str) -> dict:
    return {t.name: t for t in load_suite(name).tasks}


def test_stage_suites_have_the_issue_slices_and_tasks():
    base = {"c4_en", "codeparrot_clean", "wikitext103", "finemath_3plus", "infiwebmath_3plus", "fineweb_edu", "wikipedia_en"}
    s2 = {"finemath_4plus", "infiwebmath_4plus", "stackv2_edu", "starcoder2_lhq"}
    s3 = {"openmathreasoning_cot", "openmathinstruct1", "opencodereasoning"}
    mc = {"hellaswag", "piqa", "winogrande", "arc_easy", "arc_challenge", "openbookqa", "commonsense_qa", "social_iqa",
          "sciq", "qasc", "copa", "mmlu", "mmlu_high_school_computer_science"}
    expected = {"stage1": base, "stage2": base | s2, "stage3": base | s2 | s3, "stage4": base | s2 | s3}
    for name, slices in expected.items():
        t = tasks_of(name)
        assert {n for n, x in t.items() if x.family == "ppl_packed"} == slices
        assert {n for n, x in t.items() if x.family == "multiple_choice"} == mc
        assert all(t[n].subset_size == 12000 and t[n].tier == "tier3" for n in mc)
        assert t["sft_native"].tier == "tier4" and t["sft_native"].chat
        assert all(t[n].tier == "tier2" for n in slices)
    assert "gsm8k_chat" in tasks_of("stage4")


def test_gsm8k_chat_suite():
    suite = load_suite("gsm8k_chat")
    (task,) = suite.tasks
    assert task.chat and task.num_fewshot == 0 and task.source.hf == "openai/gsm8k"
    assert (task.gen.temperature, task.gen.top_p, task.gen.n) == (0.7, 0.9, 5)
    assert len(suite.seeds) >= 2


def test_demo_suite_is_small_and_local():
    suite = load_suite("demo")
    t = {x.name: x for x in suite.tasks}
    assert all(x.source is None or x.source.path is not None for x in suite.tasks)
    assert t["wikitext2_packed"].params["seq_len"] == 128
    assert t["hellaswag"].subset_size == 8 and t["arc_easy"].subset_size == 8 and t["sft_native"].subset_size == 8
    assert t["gsm8k_chat"].subset_size == 4 and t["gsm8k_chat"].gen.n == 2 and list(suite.seeds) == [0, 1]
    assert suite_data_root(suite) is not None and suite_data_root(suite).name == "data"
    assert suite_data_root(suite, Path("/elsewhere")) == Path("/elsewhere")


def test_validate_reports_every_problem_at_once(tmp_path: Path):
    bad = {
        "name": "Bad Name",
        "tasks": [
            {"name": "a", "family": "multipl_choice", "source": {"path": "x.jsonl"}},
            {"name": "b", "family": "multiple_choice", "source": {"path": "x.jsonl"}, "params": {"prompt": "nope", "colour": 1}},
            {"name": "c", "family": "ppl_packed", "source": {"hf": "x/y"}, "params": {}},
            {"name": "c", "family": "sft_native", "num_fewshot": 2, "unknown_field": 1},
        ],
    }
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(bad))
    problems = validate_file(p)
    text = "\n".join(problems)
    assert "name" in text and "did you mean 'multiple_choice'" in text
    assert "params.prompt 'nope'" in text and "colour" in text
    assert "target_tokens" in text and "duplicate task names ['c']" in text
    assert "unknown_field" in text
    assert len(problems) >= 6
    with pytest.raises(ConfigProblems) as e:
        load_suite(p)
    assert e.value.exit_code == 2 and len(e.value.problems) == len(problems)


def test_unknown_suite_suggests_close_names():
    with pytest.raises(ConfigError, match="did you mean gsm8k_chat"):
        load_suite("gsm8k_caht")
    with pytest.raises(ConfigError, match="not found"):
        load_suite("missing/suite.yaml")


def test_overrides_apply_before_validation():
    suite = load_suite("demo", overrides=["tasks.2.subset_size=3", "seeds=[5]"])
    assert suite.tasks[2].subset_size == 3 and suite.seeds == (5,)
    with pytest.raises(ConfigProblems, match="target_tokens") as e:
        load_suite("demo", overrides=["tasks.0.params.target_tokens=0"])
    # the message points at the override, not at the suite file (which is fine)
    assert "with -O tasks.0.params.target_tokens=0" in e.value.message and "fix the -O overrides" in e.value.hint


def test_cli_suites_and_prepare(shared_data: Path, tmp_path: Path):

    out = invoke("suites", "--json")
    assert out.exit_code == 0, out.output
    assert {"stage1", "demo"} <= {s["name"] for s in json.loads(out.output)}
    store = tmp_path / "store"
    out = invoke("prepare", "demo", "--store", str(store), "--data-root", str(shared_data),
                 "--task", "hellaswag", "--task", "arc_easy")
    assert out.exit_code == 0, out.output
    assert sorted(p.name for p in (store / "data").iterdir()) == ["arc_easy", "hellaswag"]
    out = invoke("prepare", "demo", "--store", str(store), "--task", "nope")
    assert out.exit_code == 2 and "no task 'nope'" in out.output


def test_cli_prepare_offline_hf_source_fails_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import datasets


    def offline(*a, **k):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    out = invoke("prepare", "gsm8k_chat", "--store", str(tmp_path))
    assert out.exit_code == 1
    assert "could not load Hugging Face dataset 'openai/gsm8k'" in out.output
    assert "Traceback" not in out.output

"""Prompt rendering equals lm-evaluation-harness's on real rows (golden files written by lm-eval itself,
see tests/golden/make_golden.py); no lm-eval needed here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rescore.config import TaskConfig
from rescore.tasks.base import families
from rescore.tasks.common import IDX

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(p for p in GOLDEN.glob("*.json"))


def build(case: dict, data_root: Path, eval_rows=None):
    import rescore.tasks  # noqa: F401

    task = TaskConfig(**case["task"], num_fewshot=case["num_fewshot"])
    fam = families.get(task.family)
    rows, pool = fam.load_rows(task, data_root)
    by_idx = {r[IDX]: r for r in rows}
    fs_source = pool if task.source.fewshot_path else rows
    fs_by_idx = {r[IDX]: r for r in fs_source}
    chosen = eval_rows if eval_rows is not None else [by_idx[i] for i in case["indices"]]
    shots = [fs_by_idx[i] for i in case["fewshot_indices"]]
    return fam.build_requests(task, chosen, shots, None)


def test_golden_files_exist():
    names = {p.stem for p in CASES}
    for needed in ("hellaswag_0shot", "arc_easy_0shot", "arc_challenge_2shot", "piqa_0shot", "winogrande_0shot",
                   "winogrande_2shot", "mmlu_hscs_5shot", "gsm8k_0shot", "gsm8k_5shot"):
        assert needed in names


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_prompts_equal_lm_eval(path: Path, shared_data: Path):
    case = json.loads(path.read_text(encoding="utf-8"))
    reqs = build(case, shared_data)
    assert len(reqs) == len(case["requests"])
    for r, g in zip(reqs, case["requests"], strict=True):
        assert int(r.sample_id) == g["source_idx"]
        if "prompt" in g:
            assert r.prompt == g["prompt"]
        else:
            assert list(r.contexts) == g["contexts"]
            assert list(r.continuations) == g["continuations"]
            assert r.gold == g["gold"]


def test_gsm8k_stop_sequences_match_lm_eval_in_suites():
    from rescore.tasks.suites import load_suite

    golden = json.loads((GOLDEN / "gsm8k_0shot.json").read_text())
    until = golden["requests"][0]["until"]
    for name in ("stage2", "stage3", "stage4"):
        task = load_suite(name).task("gsm8k")
        assert list(task.gen.stop) == until
        assert task.num_fewshot == 5


def test_hellaswag_hf_schema_rows_give_the_same_prompts(shared_data: Path):
    """The ten public Hugging Face rows (same items as the text form's first ten) through the hf schema."""
    case = json.loads((GOLDEN / "hellaswag_0shot.json").read_text())
    hf_rows = [json.loads(line) for line in (GOLDEN / "hellaswag_hf_rows.jsonl").read_text().splitlines() if line]
    rows = [{**r, IDX: i} for i, r in enumerate(hf_rows)]
    task = TaskConfig(name="hellaswag", family="multiple_choice", source={"hf": "Rowan/hellaswag", "split": "validation"},
                      params={"prompt": "hellaswag"})
    import rescore.tasks  # noqa: F401

    reqs = families.get("multiple_choice").build_requests(task, rows, [], None)
    assert [list(r.contexts) for r in reqs] == [g["contexts"] for g in case["requests"]]
    assert [list(r.continuations) for r in reqs] == [g["continuations"] for g in case["requests"]]


def test_hellaswag_text_form_reconstructs_hf_fields(shared_data: Path):
    from rescore.tasks.schemas import from_hellaswag_text
    from rescore.tasks.sources import read_local

    recs = read_local(shared_data / "hellaswag" / "hellaswag_val_full.txt.bz2")
    assert len(recs) == 10042
    hf_rows = [json.loads(line) for line in (GOLDEN / "hellaswag_hf_rows.jsonl").read_text().splitlines() if line]
    for ours, ref in zip(from_hellaswag_text(recs[:10], "hellaswag"), hf_rows, strict=True):
        for k in ("activity_label", "ctx_a", "ctx_b", "ctx", "endings"):
            assert ours[k] == ref[k], k
        assert ours["label"] == ref["label"]

"""Parity with lm-evaluation-harness itself (a dev dependency) on more real rows than the golden files:
the same Hugging Face-schema rows go through lm-eval's task (its YAML and utils) and through rescore."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

spec = importlib.util.spec_from_file_location("make_golden", Path(__file__).parent / "golden" / "make_golden.py")
make_golden = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_golden)

CASES = [c for c in make_golden.CASES if c["name"] != "hellaswag_0shot"] + [
    {"name": "hellaswag_text_rows", "lm_eval": "hellaswag/hellaswag.yaml", "indices": [],
     "task": {"name": "hellaswag", "family": "multiple_choice",
              "source": {"path": "hellaswag/hellaswag_val_full.txt.bz2"},
              "params": {"prompt": "hellaswag", "schema": "hellaswag_text"}}},
]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_rescore_matches_lm_eval_on_a_random_sample(case: dict, shared_data: Path):
    import rescore.tasks  # noqa: F401
    from rescore.config import TaskConfig
    from rescore.tasks.base import families

    task = TaskConfig(**case["task"], num_fewshot=case.get("num_fewshot", 0))
    fam = families.get(task.family)
    rows, pool = fam.load_rows(task, shared_data)
    sample = sorted(random.Random(case["name"]).sample(range(len(rows)), min(40, len(rows))))
    eval_rows = [rows[i] for i in sample]
    fs_source = pool if task.source.fewshot_path else rows
    shots = [r for r in fs_source if r["_idx"] in set(case.get("fewshot_indices", []))]
    if shots:
        eval_rows = [r for r in eval_rows if r not in shots]
    ours = fam.build_requests(task, eval_rows, shots, None)
    theirs = make_golden.lm_eval_requests({**case, "indices": [r["_idx"] for r in eval_rows]}, eval_rows, shots)
    assert len(ours) == len(theirs)
    for o, t in zip(ours, theirs, strict=True):
        if "prompt" in t:
            assert o.prompt == t["prompt"]
        else:
            assert (list(o.contexts), list(o.continuations), o.gold) == (t["contexts"], t["continuations"], t["gold"])

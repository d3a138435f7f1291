"""Write the golden prompt files in this directory from lm-evaluation-harness itself.

    python tests/golden/make_golden.py        (needs the dev dependency lm-eval and ../shared/data)

For each case, real rows are read from ../shared/data with rescore's readers and converted to the
Hugging Face schema (hellaswag: the ten public Hugging Face rows in hellaswag_hf_rows.jsonl, which are
the first ten items of the shipped text form), then handed to lm-eval's own task (its YAML and utils,
through ``ConfigurableTask`` with a local dataset). The contexts and continuations lm-eval builds are
written to ``<case>.json``. The tests compare rescore's requests with these files without lm-eval.
Few-shot cases use lm-eval's ``first_n`` sampler on an explicit pool, so the picks are the same on
both sides and the files check how examples, delimiters and descriptions are put together.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DATA = ROOT.parent / "shared" / "data"

CASES: list[dict[str, Any]] = [
    {"name": "hellaswag_0shot", "lm_eval": "hellaswag/hellaswag.yaml", "indices": list(range(10)),
     "lm_eval_rows": "hellaswag_hf_rows.jsonl",
     "task": {"name": "hellaswag", "family": "multiple_choice",
              "source": {"path": "hellaswag/hellaswag_val_full.txt.bz2", "split": "validation"},
              "params": {"prompt": "hellaswag", "schema": "hellaswag_text"}}},
    {"name": "arc_easy_0shot", "lm_eval": "arc/arc_easy.yaml", "indices": [0, 1, 2, 3, 93, 500, 1000, 2375],
     "task": {"name": "arc_easy", "family": "multiple_choice", "source": {"path": "arc_easy/arc_easy.jsonl"},
              "params": {"prompt": "arc", "schema": "llm_foundry"}}},
    {"name": "arc_challenge_2shot", "lm_eval": "arc/arc_challenge.yaml", "indices": [0, 1, 2, 700, 1171],
     "fewshot_indices": [10, 11, 12], "num_fewshot": 2,
     "task": {"name": "arc_challenge", "family": "multiple_choice", "source": {"path": "arc_challenge/arc_challenge.jsonl"},
              "params": {"prompt": "arc", "schema": "llm_foundry", "fewshot_sampler": "first_n"}}},
    {"name": "piqa_0shot", "lm_eval": "piqa/piqa.yaml", "indices": [0, 1, 2, 3, 900, 1837],
     "task": {"name": "piqa", "family": "multiple_choice", "source": {"path": "piqa/piqa.jsonl"},
              "params": {"prompt": "piqa", "schema": "llm_foundry"}}},
    {"name": "winogrande_0shot", "lm_eval": "winogrande/default.yaml", "indices": [0, 1, 2, 3, 600, 1266],
     "task": {"name": "winogrande", "family": "multiple_choice", "source": {"path": "winogrande/winogrande.jsonl"},
              "params": {"prompt": "winogrande", "schema": "llm_foundry"}}},
    {"name": "winogrande_2shot", "lm_eval": "winogrande/default.yaml", "indices": [4, 5, 6],
     "fewshot_indices": [20, 21], "num_fewshot": 2,
     "task": {"name": "winogrande", "family": "multiple_choice", "source": {"path": "winogrande/winogrande.jsonl"},
              "params": {"prompt": "winogrande", "schema": "llm_foundry", "fewshot_sampler": "first_n"}}},
    {"name": "mmlu_hscs_5shot", "lm_eval": "mmlu/default/mmlu_high_school_computer_science.yaml",
     "indices": [0, 1, 2, 50, 99], "fewshot_indices": [0, 1, 2, 3, 4], "num_fewshot": 5,
     "task": {"name": "mmlu_hscs", "family": "multiple_choice",
              "source": {"path": "mmlu/test/high_school_computer_science_test.csv",
                         "fewshot_path": "mmlu/dev/high_school_computer_science_dev.csv"},
              "params": {"prompt": "mmlu", "schema": "mmlu_csv"}}},
    {"name": "mmlu_abstract_algebra_0shot", "lm_eval": "mmlu/default/mmlu_abstract_algebra.yaml",
     "indices": [0, 1, 2, 99],
     "task": {"name": "mmlu_aa", "family": "multiple_choice", "source": {"path": "mmlu/test/abstract_algebra_test.csv"},
              "params": {"prompt": "mmlu", "schema": "mmlu_csv"}}},
    {"name": "gsm8k_0shot", "lm_eval": "gsm8k/gsm8k.yaml", "indices": [0, 1, 2, 1318],
     "task": {"name": "gsm8k", "family": "gsm8k", "source": {"path": "gsm8k/test.jsonl"}}},
    {"name": "gsm8k_5shot", "lm_eval": "gsm8k/gsm8k.yaml", "indices": [0, 1, 700],
     "fewshot_indices": [0, 1, 2, 3, 4], "num_fewshot": 5,
     "task": {"name": "gsm8k", "family": "gsm8k",
              "source": {"path": "gsm8k/test.jsonl", "fewshot_path": "gsm8k/train.jsonl"},
              "params": {"fewshot_sampler": "first_n"}}},
    {"name": "copa_0shot", "lm_eval": "super_glue/copa/default.yaml", "indices": [0, 1, 2, 99],
     "task": {"name": "copa", "family": "multiple_choice", "source": {"path": "copa/copa.jsonl"},
              "params": {"prompt": "copa", "schema": "llm_foundry"}}},
    {"name": "openbookqa_0shot", "lm_eval": "openbookqa/openbookqa.yaml", "indices": [0, 1, 2, 499],
     "task": {"name": "openbookqa", "family": "multiple_choice", "source": {"path": "openbookqa/test.tsv"},
              "params": {"prompt": "openbookqa", "schema": "obqa_tsv"}}},
    {"name": "commonsense_qa_0shot", "lm_eval": "commonsense_qa/default.yaml", "indices": [0, 1, 2, 1220],
     "task": {"name": "commonsense_qa", "family": "multiple_choice",
              "source": {"path": "commonsense_qa/dev_rand_split.jsonl", "split": "validation"},
              "params": {"prompt": "commonsense_qa"}}},
]


def rescore_rows(case: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The case's eval rows and few-shot pool, read by rescore from ../shared/data (HF schema + _idx)."""
    import rescore.tasks  # noqa: F401 - registers the families
    from rescore.config import TaskConfig
    from rescore.tasks.base import families

    task = TaskConfig(**case["task"], num_fewshot=case.get("num_fewshot", 0))
    rows, pool = families.get(task.family).load_rows(task, DATA)
    by_idx = {r["_idx"]: r for r in rows}
    eval_rows = [by_idx[i] for i in case["indices"]]
    fs_by_idx = {r["_idx"]: r for r in (pool if task.source.fewshot_path else rows)}
    return eval_rows, [fs_by_idx[i] for i in case.get("fewshot_indices", [])]


def to_lm_eval_schema(case: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    row = {k: v for k, v in row.items() if k != "_idx"}
    if case["task"].get("params", {}).get("prompt") == "winogrande":
        # llm-foundry's resolved form back to sentence/option1/option2/answer: any split point where
        # prefix + option_i == context_i gives lm-eval the same contexts and continuation.
        c1, c2 = row["context_options"]
        prefix = os.path.commonprefix([c1, c2])
        return {"sentence": prefix + "_ " + row["continuation"], "option1": c1[len(prefix):],
                "option2": c2[len(prefix):], "answer": str(row["gold"] + 1)}
    return row


def lm_task(yaml_rel: str, test_rows: list[dict[str, Any]], fewshot_rows: list[dict[str, Any]] | None):
    """An lm-eval ConfigurableTask from its own YAML, over local rows (first_n few-shot sampler)."""
    import datasets
    import lm_eval
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(Path(lm_eval.__file__).parent / "tasks" / yaml_rel, resolve_func=True)
    for k in ("tag", "group", "task_list", "include"):
        cfg.pop(k, None)
    split = cfg.get("test_split") or cfg.get("validation_split")
    pool = fewshot_rows or test_rows

    def custom(**_: Any) -> datasets.DatasetDict:
        d = {s: datasets.Dataset.from_list(pool)
             for s in (cfg.get("training_split"), cfg.get("validation_split"), cfg.get("fewshot_split")) if s}
        d[split] = datasets.Dataset.from_list(test_rows)
        return datasets.DatasetDict(d)

    cfg["custom_dataset"] = custom
    cfg["fewshot_config"] = {**(cfg.get("fewshot_config") or {}), "sampler": "first_n"}
    if fewshot_rows:
        cfg["fewshot_split"] = cfg.get("training_split") or cfg.get("fewshot_split") or "train"
    return ConfigurableTask(config=cfg)


def lm_eval_requests(case: dict[str, Any], eval_rows: list[dict[str, Any]],
                     pool: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if "lm_eval_rows" in case:
        lm_rows = [json.loads(line) for line in (HERE / case["lm_eval_rows"]).read_text().splitlines() if line]
    else:
        lm_rows = [to_lm_eval_schema(case, r) for r in eval_rows]
    task = lm_task(case["lm_eval"], lm_rows, [to_lm_eval_schema(case, r) for r in pool] or None)
    out = []
    for i, doc in enumerate(task.eval_docs):
        ctx = task.fewshot_context(doc, case.get("num_fewshot", 0))
        insts = task.construct_requests(doc, ctx, metadata=(case["name"], i, 1))
        if task.OUTPUT_TYPE == "generate_until":
            out.append({"prompt": insts.arguments[0], "until": insts.arguments[1]["until"]})
            continue
        if task.multiple_input:
            gold = task.doc_to_text(doc)  # partial scoring: doc_to_text gives the gold context's index
        else:
            gold = task.doc_to_target(doc)
            if isinstance(gold, str):
                gold = task.doc_to_choice(doc).index(gold)
        out.append({"contexts": [a.arguments[0] for a in insts], "continuations": [a.arguments[1] for a in insts],
                    "gold": int(gold)})
    return out


def main() -> None:
    sys.path.insert(0, str(ROOT))
    for case in CASES:
        eval_rows, pool = rescore_rows(case)
        reqs = lm_eval_requests(case, eval_rows, pool)
        for r, row in zip(reqs, eval_rows, strict=True):
            r["source_idx"] = row["_idx"]
        doc = {k: case[k] for k in ("name", "lm_eval", "task", "indices") if k in case}
        doc.update({"num_fewshot": case.get("num_fewshot", 0), "fewshot_indices": case.get("fewshot_indices", []),
                    "requests": reqs})
        (HERE / f"{case['name']}.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
        print(f"wrote {case['name']}.json ({len(reqs)} requests)")


if __name__ == "__main__":
    main()

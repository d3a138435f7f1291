"""The task family ``arithmetic``: ``n`` addition questions drawn from ``seed``, answered GSM8K-style."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from rescore.config import TaskConfig
from rescore.core import Request, RequestType, Tokenizer
from rescore.tasks import Params, param_problems, task_family, task_params


class ArithmeticParams(Params):
    n: int = Field(8, ge=1, le=10_000)  # questions
    max_operand: int = Field(99, ge=1)
    seed: int = 0


@task_family("arithmetic", params=ArithmeticParams)
class Arithmetic:
    def request_type(self, task: TaskConfig) -> RequestType:
        return "generate"

    def check(self, task: TaskConfig) -> list[str]:
        problems = param_problems(task, ArithmeticParams)
        if task.source is not None:
            problems.append(f"task {task.name}: arithmetic questions are made from params, not read from a source")
        return problems

    def load_rows(self, task: TaskConfig, data_root: Path | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        p = task_params(task, ArithmeticParams)
        rng = random.Random(p.seed)
        rows = [{"a": rng.randint(0, p.max_operand), "b": rng.randint(0, p.max_operand), "_idx": i} for i in range(p.n)]
        return rows, []

    def build_requests(self, task: TaskConfig, rows: Sequence[dict[str, Any]], fewshot_rows: Sequence[dict[str, Any]],
                       tokenizer: Tokenizer | None) -> list[Request]:
        return [
            Request(sample_id=f"{int(r['_idx']):08d}", task=task.name, request_type="generate",
                    prompt=f"Question: What is {r['a']} + {r['b']}?\nAnswer:", target=f"#### {r['a'] + r['b']}",
                    meta={"answer": str(r["a"] + r["b"]), "a": r["a"], "b": r["b"]})
            for r in rows
        ]

"""SFT-native prompts (Tier4, generate): a built-in, deterministic prompt set with declarative checks.

The prompts ship with the package (``sft_native_prompts.yaml``, 6 categories x 8 prompts) and load with
no network. Each request carries ``category`` and ``meta["checks"]`` (check name -> params, the
vocabulary in :data:`CHECKS`), which the scorer evaluates on every generated candidate. With
``chat: true`` the messages go through the model's chat template; otherwise the prompt is the system
text (if any) and the user turns joined by blank lines.

``params.categories`` keeps only some categories; ``params.prompts_file`` points at another prompt file
with the same layout (relative to the data root).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from rescore.config import TaskConfig
from rescore.core import Request, RequestType, Tokenizer
from rescore.errors import ConfigError
from rescore.params import Params
from rescore.tasks.base import task_family, task_params
from rescore.tasks.common import IDX, check_common
from rescore.tasks.sources import require_exists, resolve_path

CATEGORIES = ("format_following", "strict_json", "python_code", "instruction_priority", "chat_clean", "concise")
CHECKS = frozenset({
    "bullets", "numbered", "json", "python_parses", "max_words", "min_words", "max_sentences", "contains",
    "not_contains", "starts_with", "ends_with", "lowercase", "uppercase", "one_line", "refusal", "no_role_leak",
})
ROLES = ("system", "user", "assistant")
BUILTIN = Path(__file__).with_name("sft_native_prompts.yaml")


class SFTParams(Params):
    """Params of ``sft_native`` tasks."""

    categories: list[Literal[CATEGORIES]] | None = None  # type: ignore[valid-type]  # keep only these
    prompts_file: str | None = None  # another prompt file with the same layout (relative to the data root)


def prompts_path(task: TaskConfig | None = None, data_root: Path | None = None) -> Path:
    rel = task_params(task, SFTParams).prompts_file if task is not None else None
    if rel is None:
        return BUILTIN
    return require_exists(resolve_path(rel, data_root), "SFT-native prompts file")


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def validate_prompt(p: Any, where: str) -> list[str]:
    """Problems with one prompt entry, one line each."""
    if not isinstance(p, dict):
        return [f"{where}: not a mapping"]
    problems = []
    pid = p.get("id")
    if not isinstance(pid, str) or not pid:
        problems.append(f"{where}: missing id")
    if p.get("category") not in CATEGORIES:
        problems.append(f"{where}: category {p.get('category')!r} is not one of {list(CATEGORIES)}")
    msgs = p.get("messages")
    if not isinstance(msgs, list) or not msgs:
        problems.append(f"{where}: messages must be a non-empty list")
    else:
        for m in msgs:
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                problems.append(f"{where}: each message needs role (system/user/assistant) and content")
                break
        else:
            if msgs[-1]["role"] != "user":
                problems.append(f"{where}: the last message must be from the user")
    checks = p.get("checks")
    if not isinstance(checks, dict) or not checks:
        problems.append(f"{where}: checks must be a non-empty mapping")
    else:
        unknown = sorted(set(checks) - CHECKS)
        if unknown:
            problems.append(f"{where}: unknown checks {unknown} (known: {sorted(CHECKS)})")
    return problems


def load_prompts(path: Path = BUILTIN) -> list[dict[str, Any]]:
    from rescore.config import read_yaml, value_problem

    data = read_yaml(path)  # not UTF-8, bad syntax or too deep: one error naming the file
    prompts = data.get("prompts") if isinstance(data, dict) else None
    if not isinstance(prompts, list):
        raise ConfigError(f"{path}: expected a 'prompts:' list")
    why = value_problem(prompts)  # the prompts and their checks are recorded in every row
    if why:
        raise ConfigError(f"{path}: prompts: {why}", hint="fix the prompt file")
    problems = [q for i, p in enumerate(prompts) for q in validate_prompt(p, f"{path}: prompts[{i}]")]
    ids = [p.get("id") for p in prompts if isinstance(p, dict)]
    if len(set(ids)) != len(ids):
        problems.append(f"{path}: prompt ids are not unique")
    if problems:
        raise ConfigError("; ".join(problems), hint="fix the prompt file")
    return prompts


def _plain_prompt(messages: Sequence[dict[str, str]]) -> str:
    return "\n\n".join(m["content"] for m in messages if m["role"] in ("system", "user"))


@task_family("sft_native", params=SFTParams)
class SFTNative:
    def request_type(self, task: TaskConfig) -> RequestType:
        return "generate"

    def check(self, task: TaskConfig) -> list[str]:
        problems, _ = check_common(task, SFTParams)
        if task.source is not None:
            problems.append(f"task {task.name}: sft_native prompts are built in (use params.prompts_file, not source)")
        if task.num_fewshot:
            problems.append(f"task {task.name}: sft_native takes no few-shot examples")
        return problems

    def source_digest(self, task: TaskConfig, data_root: Path | None) -> str:
        return file_digest(prompts_path(task, data_root))

    def load_rows(self, task: TaskConfig, data_root: Path | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        prompts = load_prompts(prompts_path(task, data_root))
        cats = task_params(task, SFTParams).categories
        rows = [{**p, IDX: i} for i, p in enumerate(prompts) if not cats or p["category"] in cats]
        return rows, []

    def build_requests(self, task: TaskConfig, rows: Sequence[dict[str, Any]], fewshot_rows: Sequence[dict[str, Any]],
                       tokenizer: Tokenizer | None) -> list[Request]:
        out = []
        for row in rows:
            msgs = tuple({"role": m["role"], "content": m["content"]} for m in row["messages"])
            common = dict(sample_id=row["id"], task=task.name, request_type="generate", category=row["category"],
                          meta={"checks": row["checks"], "source_idx": int(row[IDX])})
            if task.chat:
                out.append(Request(**common, messages=msgs, chat=True))
            else:
                out.append(Request(**common, prompt=_plain_prompt(msgs)))
        return out


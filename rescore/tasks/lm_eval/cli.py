"""lm-eval's command-line habits: ``rescore gen --tasks arc_easy,gsm8k --limit N --num-fewshot N`` without
a suite file. The suite made from them is written into the store (``suites/<name>.yaml``) for provenance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from rescore.config import SuiteConfig, TaskConfig
from rescore.core import content_hash
from rescore.errors import ConfigError


def _task_name(lm_name: str) -> str:
    from rescore.names import sanitize

    return sanitize(lm_name.lower(), fallback="task")


def suite_from_tasks(tasks: str, *, limit: int | None, num_fewshot: int | None) -> SuiteConfig:
    """A suite of one ``lm_eval`` task per name of ``tasks`` (comma separated)."""
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if not names:
        raise ConfigError("--tasks names no task", hint="e.g. --tasks arc_easy,gsm8k")
    out = []
    for n in names:
        params: dict[str, Any] = {"task": n}
        if limit is not None:
            params["limit"] = limit
        if num_fewshot is not None:
            params["num_fewshot"] = num_fewshot
        out.append({"name": _task_name(n), "family": "lm_eval", "params": params})
    data = {"name": f"lm-eval-{content_hash(out, 8)}", "description": f"lm-eval tasks {','.join(names)}",
            "tasks": out}
    from rescore.config import ConfigProblems
    from rescore.tasks.suites import check_suite_data

    problems = check_suite_data(data, "--tasks")
    if problems:
        raise ConfigProblems("--tasks", problems)
    return SuiteConfig(**data)


def with_lm_eval_options(suite: SuiteConfig, *, limit: int | None, num_fewshot: int | None) -> SuiteConfig:
    """``--limit``/``--num-fewshot`` applied to the suite's ``lm_eval`` tasks."""
    if limit is None and num_fewshot is None:
        return suite
    upd = {k: v for k, v in (("limit", limit), ("num_fewshot", num_fewshot)) if v is not None}
    tasks = [t.model_copy(update={"params": {**t.params, **upd}}) if t.family == "lm_eval" else t for t in suite.tasks]
    if not any(t.family == "lm_eval" for t in suite.tasks):
        raise ConfigError("--limit and --num-fewshot apply to lm_eval tasks; the suite has none",
                          hint="use them with --tasks, or with a suite of lm_eval tasks")
    return suite.model_copy(update={"tasks": tuple(TaskConfig.model_validate(t.model_dump()) for t in tasks)})


def write_provenance(store_root: Path, suite: SuiteConfig) -> Path:
    from rescore.artifacts.io import atomic_write_text

    path = Path(store_root) / "suites" / f"{suite.name}.yaml"
    atomic_write_text(path, yaml.safe_dump(suite.model_dump(mode="json", exclude_defaults=True), sort_keys=False),
                      root=Path(store_root))
    return path

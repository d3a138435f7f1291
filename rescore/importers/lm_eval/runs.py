"""Finding lm-eval runs: ``results_<date>.json`` files and the ``samples_<task>_<date>.jsonl`` next to them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rescore.importers.common import (
    ImportFormatError,
    fail,
    read_json,
)

RESULTS_RE = re.compile(r"^results_(?P<date>.+)\.json$")


@dataclass
class LmEvalRun:
    results_path: Path
    results: dict[str, Any]
    date: str
    samples: dict[str, Path] = field(default_factory=dict)  # lm-eval task name -> samples file
    no_samples: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Options:
    model_name: str | None = None
    step: int | None = None
    stage: str | None = None
    suite: str = "lm-eval"
    tasks: tuple[str, ...] = ()  # globs over lm-eval task names; empty = all
    include_path: str | None = None  # the run's task YAMLs (lm-eval's --include_path), for its lm-eval.* metrics


# -- finding runs -------------------------------------------------------------------------------------
def find_runs(root: Path) -> list[LmEvalRun]:
    root = Path(root)
    if root.is_file():
        paths = [root]
    elif root.is_dir():
        paths = sorted(p for p in root.rglob("results_*.json") if p.is_file())
    else:
        raise ImportFormatError(f"{root}: no such file or directory")
    runs = []
    for p in paths:
        m = RESULTS_RE.match(p.name)
        if not m:
            raise ImportFormatError(f"{p}: not an lm-eval results file (expected results_<date>.json)")
        res = read_json(p)
        if not isinstance(res, dict) or not isinstance(res.get("configs"), dict):
            raise fail(p, None, "configs", "is missing: this is not an lm-evaluation-harness 0.4 results file")
        run = LmEvalRun(p, res, m.group("date"))
        for task in res["configs"]:
            if not isinstance(task, str) or "/" in task or "\\" in task or "\x00" in task or task in (".", ".."):
                raise fail(p, None, "configs", f"names a task {task!r} that cannot be part of a file name "
                                               "(samples_<task>_<date>.jsonl)", hint="the file was modified or damaged")
            s = p.parent / f"samples_{task}_{run.date}.jsonl"
            if s.is_file():
                run.samples[task] = s
            else:
                run.no_samples.append(task)
        runs.append(run)
    if not runs:
        raise ImportFormatError(f"{root}: no results_*.json found",
                                hint="point at lm-eval's --output_path of a run made with --log_samples")
    if not any(r.samples for r in runs):
        raise ImportFormatError(f"{root}: results found but no samples_<task>_<date>.jsonl next to them",
                                hint="lm-eval writes per-sample outputs only with --log_samples; re-run with it")
    return runs

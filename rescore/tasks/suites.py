"""Suites: YAML task lists shipped in the package under ``rescore/configs/suites/`` (a bare name) or any path.

:func:`validate_file` reports every problem of a suite file at once: the schema (pydantic), unknown
families, the families' own checks and duplicate task names. :func:`load_suite` raises them together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from rescore.config import ConfigProblems, SuiteConfig, TaskConfig, apply_overrides, format_validation_error, read_yaml
from rescore.errors import ConfigError, UserError, close_names
from rescore.tasks.base import families
from rescore.tasks.sources import project_root


def configs_dir() -> Path:
    """The shipped configs (YAML only): ``configs/`` inside the package, so a wheel carries them."""
    return Path(__file__).resolve().parents[1] / "configs"


def suites_dir() -> Path:
    return configs_dir() / "suites"


def suite_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.is_file() or len(p.parts) > 1:
        if not p.is_file():
            raise ConfigError(f"suite file not found: {p}", hint="check the path, or give a shipped suite's name")
        return p
    shipped = suites_dir() / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    names = [n for n, _, _ in list_suites()]
    close = close_names(str(name_or_path), names)
    hint = (f"did you mean {', '.join(close)}? " if close else "") + f"shipped suites: {', '.join(names)}"
    raise ConfigError(f"unknown suite {name_or_path!r}", hint=hint + " (or give a path to a suite YAML)")


def list_suites() -> list[tuple[str, Path, str]]:
    """(name, path, description) of every shipped suite."""
    out = []
    for p in sorted(suites_dir().glob("*.yaml")):
        try:
            data = read_yaml(p)
        except ConfigError:
            data = None
        desc = data.get("description", "") if isinstance(data, dict) else "(unreadable)"
        out.append((p.stem, p, str(desc).strip()))
    return out


def _task_problems(i: int, raw: Any) -> list[str]:
    where = f"tasks[{i}]"
    if not isinstance(raw, dict):
        return [f"{where}: expected a mapping"]
    try:
        task = TaskConfig(**raw)
    except ValidationError:
        return []  # reported by the suite-level validation
    try:
        fam = families.get(task.family)
    except UserError as e:
        return [f"{where} ({task.name}): {e.render()}"]
    return [f"{where}: {p}" for p in fam.check(task)]


def check_suite_data(data: Any, source: str) -> list[str]:
    if not isinstance(data, dict):
        return [f"{source}: expected a mapping with name and tasks"]
    problems: list[str] = []
    try:
        SuiteConfig(**data)
    except ValidationError as e:
        problems += format_validation_error(e, source)
    tasks = data.get("tasks")
    if isinstance(tasks, list):
        names = [t.get("name") for t in tasks if isinstance(t, dict)]
        dup = sorted({n for n in names if n is not None and names.count(n) > 1})
        if dup:
            problems.append(f"{source}: duplicate task names {dup}")
        for i, t in enumerate(tasks):
            problems += [f"{source}: {p}" for p in _task_problems(i, t)]
    return problems


def validate_file(path: str | Path) -> list[str]:
    """Every problem of one suite file, one line each (empty when it is valid)."""
    try:
        data = read_yaml(path)
    except ConfigError as e:
        return [e.render()]
    return check_suite_data(data, str(path))


def load_suite(name_or_path: str | Path, overrides: list[str] | None = None) -> SuiteConfig:
    """A validated suite (a shipped name or a path), with ``-O key=value`` overrides applied."""
    path = suite_path(name_or_path)
    data = read_yaml(path)
    if isinstance(data, dict):
        data = apply_overrides(data, overrides)
    problems = check_suite_data(data, str(path))
    if problems:
        if overrides and not check_suite_data(read_yaml(path), str(path)):  # the file is fine: the -O values are not
            raise ConfigProblems(f"{path} with -O {' -O '.join(overrides)}", problems,
                                 hint="the suite file itself is valid: fix the -O overrides")
        raise ConfigProblems(str(path), problems)
    return SuiteConfig(**data)


def suite_data_root(suite: SuiteConfig, override: Path | None = None) -> Path | None:
    """Where the suite's local task paths are relative to: ``override`` (--data-root), else the suite's
    ``data_root`` (relative: to the working directory when it exists there, else to the project root)."""
    if override is not None:
        return Path(override)
    if suite.data_root is None:
        return None
    p = Path(suite.data_root).expanduser()
    if p.is_absolute() or p.exists():
        return p
    return project_root() / p

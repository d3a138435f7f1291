"""Validate suite and model configs, every problem of every file at once."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from rescore.config import ModelConfig, format_validation_error, read_yaml
from rescore.errors import ConfigError


def shipped_configs() -> list[Path]:
    from rescore.tasks.suites import configs_dir

    root = configs_dir()
    return sorted(p for p in root.rglob("*.y*ml") if p.suffix in (".yaml", ".yml"))


def config_kind(data: object) -> str:
    if isinstance(data, dict) and "tasks" in data:
        return "suite"
    if isinstance(data, dict) and ("stages" in data or "matrix" in data):
        return "matrix"
    return "models"


def validate_models(path: Path, data: object) -> list[str]:
    items = data.get("models") if isinstance(data, dict) and "models" in data else data
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list):
        return [f"{path}: expected a model mapping or a 'models:' list"]
    from rescore.gen.base import check_options

    problems: list[str] = []
    for i, it in enumerate(items):
        try:
            model = ModelConfig(**(it if isinstance(it, dict) else {}))
        except ValidationError as e:
            problems += format_validation_error(e, f"{path}: models[{i}]")
            continue
        try:  # the backend's (and its loader's) options, without loading anything
            check_options(model)
        except ConfigError as e:
            problems.append(f"{path}: models[{i}]: {e.message}")
    return problems


def validate_paths(paths: list[Path]) -> tuple[list[str], int]:
    from rescore.tasks.suites import validate_file

    files = paths or shipped_configs()
    problems: list[str] = []
    for p in files:
        try:
            data = read_yaml(p)
        except ConfigError as e:
            problems.append(e.render())
            continue
        kind = config_kind(data)
        if kind == "suite":
            problems += validate_file(p)
        elif kind == "matrix":
            try:
                from rescore.plan.matrix import validate_matrix_file
            except ImportError:
                problems.append(f"{p}: checkpoint matrices are not supported by this version")
                continue
            problems += validate_matrix_file(p)
        else:
            problems += validate_models(p, data)
    return problems, len(files)

"""Resolve ``--model`` arguments (a path, ``fake``, or a YAML file of models) into ModelConfig objects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from rescore.config import ConfigProblems, ModelConfig, format_validation_error, read_yaml
from rescore.names import sanitize


def resolve_models(model: str, *, backend: str | None, overrides: dict[str, Any]) -> list[ModelConfig]:
    """Model configs from ``--model``; every backend (its name, options and checkpoint) is checked before
    anything is planned or loaded."""
    from rescore.gen.base import check_model

    models = _resolve(model, backend=backend, overrides=overrides)
    for m in models:
        check_model(m)
    return models


def _resolve(model: str, *, backend: str | None, overrides: dict[str, Any]) -> list[ModelConfig]:
    p = Path(model)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        data = read_yaml(p)
        items = data.get("models") if isinstance(data, dict) and "models" in data else data
        if isinstance(items, dict):
            items = [items]
        if not isinstance(items, list):
            raise ConfigProblems(str(p), ["expected a model mapping or a 'models:' list"])
        out, problems = [], []
        for i, it in enumerate(items):
            try:
                merged = {**it, **{k: v for k, v in overrides.items() if v is not None}}
                if backend:
                    merged["backend"] = backend
                out.append(ModelConfig(**merged))
            except (ValidationError, TypeError) as e:
                problems += format_validation_error(e, f"{p}[{i}]") if isinstance(e, ValidationError) else [str(e)]
        if problems:
            raise ConfigProblems(str(p), problems)
        return out
    be = backend or ("fake" if model == "fake" else "hf")
    name = overrides.pop("name", None) or sanitize(p.name if p.name else model, fallback="model")
    fields = {k: v for k, v in overrides.items() if v is not None}
    try:
        return [ModelConfig(name=name, path=model, backend=be, **fields)]
    except ValidationError as e:
        raise ConfigProblems("model options", format_validation_error(e, "--model")) from None

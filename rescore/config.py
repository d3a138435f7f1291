"""Configuration models (pydantic, ``extra="forbid"``) for suites, tasks, models and generation.

Defaults live here, not in ``.get(key, default)`` calls. :func:`load_yaml_config` validates a whole file
and reports every problem at once. CLI overrides are ``-O key.path=value`` with the value parsed as YAML.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rescore.core import GenParams
from rescore.errors import ConfigError
from rescore.registry import NAME_RE

Precision = Literal["fp32", "bf16", "fp16", "int8", "int4"]
Tier = Literal["tier2", "tier3", "tier4"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _name(v: str) -> str:
    if not NAME_RE.match(v) or ".." in v:
        raise ValueError(f"{v!r} is not a valid name: use [a-z0-9_.-], starting with a letter or digit")
    return v


class GenConfig(Strict):
    """Sampling parameters for ``generate`` tasks (temperature 0 = greedy)."""

    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    max_new_tokens: int = Field(256, ge=1)
    stop: tuple[str, ...] = ()
    n: int = Field(1, ge=1, description="candidates per prompt")
    logprobs_topk: int = Field(5, ge=0, description="top-k alternatives stored per generated token")

    def to_params(self) -> GenParams:
        return GenParams(**self.model_dump())


class SourceConfig(Strict):
    """Where a task's rows come from: a Hugging Face dataset or local file(s)."""

    hf: str | None = Field(None, description="Hugging Face dataset id, e.g. 'Rowan/hellaswag'")
    config_name: str | None = Field(None, description="dataset config (subset) name")
    split: str = "test"
    revision: str | None = None
    path: str | None = Field(None, description="local file or directory (relative to --data-root)")
    format: Literal["auto", "jsonl", "json", "csv", "tsv", "parquet", "txt", "bz2-hellaswag"] = "auto"
    fewshot_split: str | None = None
    fewshot_path: str | None = None

    def model_post_init(self, __context: Any) -> None:
        if (self.hf is None) == (self.path is None):
            raise ValueError("a source needs exactly one of 'hf' (dataset id) or 'path' (local file)")


class TaskConfig(Strict):
    """One task of a suite. ``family`` names a registered task family; ``params`` are the family's own
    options (validated by the family)."""

    name: str
    family: str
    tier: Tier | None = None
    source: SourceConfig | None = None
    subset_size: int | None = Field(None, ge=1, description="rows drawn with subset_seed; None = all")
    subset_seed: int = 1234
    num_fewshot: int = Field(0, ge=0)
    fewshot_seed: int = 1234
    chat: bool = False
    gen: GenConfig | None = None
    topk: int = Field(0, ge=0, description="top-k alternatives stored for loglikelihood/rolling tokens")
    seeds: tuple[int, ...] | None = Field(None, description="overrides the suite's seeds for this task")
    params: dict[str, Any] = Field(default_factory=dict)

    _check_name = field_validator("name")(classmethod(lambda cls, v: _name(v)))


class SuiteConfig(Strict):
    name: str
    description: str = ""
    data_root: str | None = Field(
        None, description="directory that local task paths are relative to (relative: to the working directory, "
        "else the project root); --data-root overrides it")
    seeds: tuple[int, ...] = (0,)
    gen: GenConfig = GenConfig()
    tasks: tuple[TaskConfig, ...] = Field(min_length=1)

    _check_name = field_validator("name")(classmethod(lambda cls, v: _name(v)))

    def task(self, name: str) -> TaskConfig:
        for t in self.tasks:
            if t.name == name:
                return t
        raise ConfigError(f"suite {self.name!r} has no task {name!r}", hint=f"tasks: {[t.name for t in self.tasks]}")


class ModelConfig(Strict):
    """One model (checkpoint) to generate with."""

    name: str = Field(description="label used in the store and reports")
    path: str = Field(description="local directory (or hub id when online); 'fake' for the fake backend")
    backend: str = "hf"
    precision: Precision = "fp32"
    step: int | None = None
    stage: str | None = None
    device: str = "auto"
    trust_remote_code: bool = False
    batch_size: int = Field(8, ge=1)
    max_batch_tokens: int = Field(8192, ge=1)
    max_length: int | None = Field(None, ge=2, description="context window; default from the model config")
    options: dict[str, Any] = Field(default_factory=dict, description="backend-specific options")

    _check_name = field_validator("name")(classmethod(lambda cls, v: _name(v)))


def format_validation_error(err: ValidationError, source: str) -> list[str]:
    out = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        out.append(f"{source}: {loc}: {e['msg']}")
    return out


class ConfigProblems(ConfigError):
    """Several problems found in one config; ``problems`` holds one line each."""

    def __init__(self, source: str, problems: list[str], hint: str = "fix them and run `rescore validate` again") -> None:
        self.problems = problems
        n = len(problems)
        super().__init__(f"{source}: {n} problem{'s' if n != 1 else ''}: " + "; ".join(problems), hint=hint)


def read_yaml(path: str | Path) -> Any:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}", hint="check the path")
    try:
        return yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{p}:{where} is not valid YAML: {getattr(e, 'problem', e)}", hint="fix the syntax") from None


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (value parsed as YAML). In a list, a path segment is an index or
    the ``name`` of an element: ``tasks.gsm8k_chat.gen.n=8`` or ``tasks.4.gen.n=8``."""
    for ov in overrides or []:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r} is not key.path=value", hint="e.g. -O seeds=[0,1]")
        key, raw = ov.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        parts = key.strip().split(".")
        node: Any = data
        for i, p in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                idx = _list_index(node, p, key)
                if last:
                    node[idx] = value
                else:
                    node = node[idx]
            elif isinstance(node, dict):
                if last:
                    node[p] = value
                else:
                    node = node.setdefault(p, {})
            else:
                raise ConfigError(f"override {key!r}: {'.'.join(parts[:i])!r} is a value, not a mapping or list",
                                  hint="check the key path against the config file")
    return data


def _list_index(node: list[Any], part: str, key: str) -> int:
    if part.lstrip("-").isdigit():
        idx = int(part)
        if -len(node) <= idx < len(node):
            return idx % len(node)
        raise ConfigError(f"override {key!r}: index {idx} is out of range (the list has {len(node)} items)",
                          hint="indices start at 0")
    names = [x.get("name") for x in node if isinstance(x, dict)]
    if part in names:
        return names.index(part)
    raise ConfigError(f"override {key!r}: no list item named {part!r}",
                      hint=f"use an index or one of {[n for n in names if n]}")

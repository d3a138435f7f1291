"""Checkpoint matrices: named training stages, each a path pattern with ``{step}`` and a list of steps,
evaluated on one or more suites, with a *bridge*: the last checkpoint of the previous stage, scored on the
new stage's suites so every stage has a baseline on its own tasks.

A matrix declares one precision for every checkpoint; the manifest records it, and reports refuse to put
runs of different precision side by side unless told to.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator, model_validator

from rescore.config import (
    ConfigProblems,
    ModelConfig,
    Precision,
    Strict,
    SuiteConfig,
    _name,
    check_placeholders,
    format_validation_error,
    read_yaml,
    seeds_check,
)
from rescore.errors import ConfigError


class SlurmConfig(Strict):
    """Job settings for ``backfill --executor slurm`` (flags override them)."""

    partition: str | None = None
    gres: str | None = Field(None, description="e.g. gpu:1")
    cpus_per_task: int = Field(8, ge=1)
    mem_gb: int | None = Field(None, ge=1)
    time: str = Field("04:00:00", description="HH:MM:SS wall-clock limit per job")
    account: str | None = None
    qos: str | None = None
    max_parallel: int = Field(8, ge=1, description="array tasks running at once")
    units_per_job: int = Field(0, ge=0, description="0 = one job per checkpoint (the model loads once)")
    extra: tuple[str, ...] = Field((), description="extra sbatch options, e.g. ['--constraint=a100']")
    setup: tuple[str, ...] = Field((), description="shell lines run before rescore in each job (module load ...)")


def check_step_pattern(v: str) -> str:
    """A checkpoint path pattern: ``{step}`` (or ``{step:FORMAT}``, e.g. ``{step:07d}``) at least once, no other
    placeholder; a literal brace is written twice (``{{``)."""
    found = check_placeholders(v, ("step",), "/ckpts/stage1/step_{step}")
    if not found:
        raise ValueError("path must contain '{step}' (e.g. /ckpts/stage1/step_{step})")
    for _, spec in found:
        try:
            format(0, spec)
        except ValueError:
            raise ValueError(f"path has {{step:{spec}}}: {spec!r} is not a format for an integer (e.g. {{step:07d}})") from None
    return v


class StageConfig(Strict):
    name: str
    path: str = Field(description="checkpoint path pattern containing {step}")
    steps: tuple[Annotated[int, Field(ge=0)], ...] = Field(min_length=1, description="training steps (0 or more)")
    suites: tuple[str, ...] | None = Field(None, description="default: the matrix's suites")
    bridge: str | None = Field(None, description="stage whose last checkpoint is this stage's baseline")

    _n = field_validator("name")(classmethod(lambda cls, v: _name(v)))
    _has_step = field_validator("path")(classmethod(lambda cls, v: check_step_pattern(v)))


class MatrixConfig(Strict):
    name: str
    backend: str = "hf"
    precision: Precision = "bf16"
    suites: tuple[str, ...] = ()
    seeds: tuple[int, ...] | None = Field(None, description="overrides every suite's seeds")
    _seeds = field_validator("seeds")(classmethod(lambda cls, v: seeds_check(v)))
    overrides: tuple[str, ...] = Field((), description="suite overrides key.path=value applied to every suite")
    model: dict[str, Any] = Field(default_factory=dict, description="ModelConfig fields shared by every checkpoint")
    stages: tuple[StageConfig, ...] = Field(min_length=1)
    slurm: SlurmConfig = SlurmConfig()
    data_root: str | None = None
    policy: dict[str, Any] | None = Field(None, description="compare policy (see `rescore compare --matrix`)")

    _n = field_validator("name")(classmethod(lambda cls, v: _name(v)))

    @model_validator(mode="after")
    def _cross(self) -> MatrixConfig:
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique: {names}")
        for s in self.stages:
            if s.bridge == s.name:
                raise ValueError(f"stage {s.name!r} cannot be its own bridge")
            if not (s.suites or self.suites):
                raise ValueError(f"stage {s.name!r} has no suites (set 'suites' on the stage or the matrix)")
        bad = {"name", "path", "step", "stage", "precision", "backend"} & set(self.model)
        if bad:
            raise ValueError(f"'model' may not set {sorted(bad)}: the matrix sets them")
        return self


@dataclass(frozen=True)
class Checkpoint:
    model: ModelConfig
    stage: str
    step: int
    suites: tuple[str, ...]
    bridge_for: str | None = None  # set when this checkpoint is the bridge baseline of that stage

    @property
    def label(self) -> str:
        return self.model.name


def checkpoint_name(stage: str, step: int) -> str:
    return f"{stage}-step{step}"


def load_matrix(path: str | Path) -> MatrixConfig:
    data = read_yaml(path)
    problems = matrix_problems(data, str(path))
    if problems:
        raise ConfigProblems(str(path), problems)
    return MatrixConfig(**data)


def matrix_problems(data: Any, source: str) -> list[str]:
    """Every problem of a matrix file: field errors and cross-references (bridges, suites, backend)."""
    if not isinstance(data, dict):
        return [f"{source}: a matrix must be a mapping with 'name' and 'stages'"]
    problems: list[str] = []
    try:
        MatrixConfig(**data)
    except ValidationError as e:
        problems += format_validation_error(e, source)
    from rescore.gen.base import backends
    from rescore.tasks.suites import suite_path

    backend = data.get("backend", "hf")
    if isinstance(backend, str):
        try:
            backends.get(backend)  # a registered name, a plugin's, or package.module:Class
        except ConfigError as e:
            problems.append(f"{source}: backend: {e.render()}")
    stages = [s for s in data.get("stages") or [] if isinstance(s, dict)]
    names = [s.get("name") for s in stages]
    default_suites = data.get("suites") or []
    for i, s in enumerate(stages):
        if s.get("bridge") is not None and s.get("bridge") not in names:
            problems.append(f"{source}: stages.{i}.bridge: {s.get('bridge')!r} is not a stage ({names})")
        for suite in s.get("suites") or default_suites:
            try:
                suite_path(suite)
            except ConfigError as e:
                problems.append(f"{source}: stages.{i}.suites: {e.render()}")
    if data.get("policy") is not None:
        from rescore.plan.policy import policy_from

        try:
            policy_from(data["policy"], f"{source}: policy")
        except ConfigError as e:
            problems.append(e.render())
    if isinstance(data.get("model"), dict):
        try:
            ModelConfig(name="x", path="x", **data["model"])
        except (ValidationError, TypeError) as e:
            problems += format_validation_error(e, f"{source}: model") if isinstance(e, ValidationError) else [str(e)]
    return list(dict.fromkeys(problems))


def validate_matrix_file(path: str | Path) -> list[str]:
    try:
        data = read_yaml(path)
    except ConfigError as e:
        return [e.render()]
    return matrix_problems(data, str(path))


def expand(m: MatrixConfig) -> list[Checkpoint]:
    """Every checkpoint of every stage, plus bridge checkpoints (the previous stage's last step run on the
    bridged stage's suites)."""
    by_name = {s.name: s for s in m.stages}
    out: list[Checkpoint] = []
    for s in m.stages:
        suites = tuple(s.suites or m.suites)
        if s.bridge:
            b = by_name[s.bridge]
            last = max(b.steps)
            out.append(Checkpoint(_model(m, b, last), b.name, last, suites, bridge_for=s.name))
        for step in s.steps:
            out.append(Checkpoint(_model(m, s, step), s.name, step, suites))
    return out


def _model(m: MatrixConfig, s: StageConfig, step: int) -> ModelConfig:
    return ModelConfig(name=checkpoint_name(s.name, step), path=s.path.format(step=step), backend=m.backend,
                       precision=m.precision, step=step, stage=s.name, **m.model)


def missing_checkpoints(m: MatrixConfig, checkpoints: list[Checkpoint]) -> list[str]:
    """Checkpoint directories that do not exist or hold no model config, all of them at once."""
    if m.backend == "fake":
        return []
    out = []
    seen = set()
    for c in checkpoints:
        marker = CHECKPOINT_MARKERS.get(c.model.loader)  # another loader's own check runs when it loads
        p = Path(c.model.path)
        if p in seen:
            continue
        seen.add(p)
        if not p.is_dir():
            out.append(f"{c.stage} step {c.step}: {p} does not exist")
        elif marker is not None and not (p / marker).is_file():
            out.append(f"{c.stage} step {c.step}: {p} has no {marker}")
    return out


CHECKPOINT_MARKERS = {"hf": "config.json", "nanotron": "model_config.json"}  # the file a checkpoint dir holds


def check_checkpoints(m: MatrixConfig, checkpoints: list[Checkpoint], source: str) -> None:
    missing = missing_checkpoints(m, checkpoints)
    if missing:
        n = len(missing)
        raise ConfigError(f"{source}: {n} checkpoint{'s' if n != 1 else ''} not found: " + "; ".join(missing),
                          hint="fix the stages' path patterns or steps, or wait until the checkpoints are written")


def suite_for(m: MatrixConfig, name: str) -> SuiteConfig:
    from rescore.tasks.suites import load_suite

    suite = load_suite(name, overrides=list(m.overrides))
    if m.seeds is not None:
        suite = suite.model_copy(update={"seeds": tuple(m.seeds)})
    if m.data_root is not None and getattr(suite, "data_root", None) is None:
        suite = suite.model_copy(update={"data_root": m.data_root})
    return suite

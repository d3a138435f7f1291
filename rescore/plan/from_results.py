"""Reconstruct generation units from existing results files (lm-evaluation-harness ``results_*.json``).

Each file's ``config`` section names the model (``model_args``: ``pretrained=PATH,dtype=...``) and seed,
its ``configs``/``n-shot`` sections name the tasks, few-shot counts and generation kwargs. A small user
mapping turns those into our model configs and suite tasks, so `plan`/`backfill` can regenerate exactly
the runs that were made before.
"""

from __future__ import annotations

import glob
import json
import re
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator

from rescore.artifacts.store import Store
from rescore.config import (
    ConfigProblems,
    GenConfig,
    ModelConfig,
    Precision,
    Strict,
    check_placeholders,
    format_validation_error,
    read_yaml,
    value_problem,
)
from rescore.errors import ConfigError, UserError
from rescore.importers.lm_eval.model_args import parse_model_args
from rescore.names import sanitize

DEFAULT_PRECISION = {"bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "half": "fp16", "fp16": "fp16",
                     "float32": "fp32", "float": "fp32", "fp32": "fp32"}


class ModelMapping(Strict):
    path_arg: str = Field("pretrained", description="model_args key that holds the checkpoint path")
    name: str = Field("{basename}", description="label pattern: {basename}, {stage}, {step}")
    step_regex: str = Field(r"step[_-]?(\d+)", description="regex with one group: the step, searched in the path")
    stage_regex: str | None = Field(None, description="regex with one group: the stage, searched in the path")
    precision: dict[str, Precision] = Field(default_factory=dict, description="dtype -> precision (adds to defaults)")
    default_precision: Precision = "fp32"
    backend: str = "hf"
    path_map: dict[str, str] = Field(default_factory=dict, description="path prefix rewrites, old -> new")
    fields: dict[str, Any] = Field(default_factory=dict, description="further ModelConfig fields (batch_size, ...)")

    @field_validator("name")
    @classmethod
    def _name_pattern(cls, v: str) -> str:
        check_placeholders(v, ("basename", "stage", "step"), "{stage}-{step}")
        return v

    @field_validator("step_regex", "stage_regex")
    @classmethod
    def _one_group(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            groups = re.compile(v).groups
        except re.error as e:
            raise ValueError(f"{v!r} is not a regular expression ({e})") from None
        if groups != 1:
            raise ValueError(f"{v!r} has {groups} groups; it needs exactly one (the value), e.g. 'step[_-]?(\\d+)'")
        return v


class ResultsMapping(Strict):
    suite: str
    tasks: dict[str, str] = Field(min_length=1, description="results task name -> suite task name")
    model: ModelMapping = ModelMapping()
    seed_key: str | None = Field("random_seed", description="config key holding the run seed")
    use_fewshot: bool = Field(True, description="take num_fewshot from the results file")
    use_generation_kwargs: bool = Field(True, description="take sampling parameters from the results file")


def load_mapping(path: Path) -> ResultsMapping:
    data = read_yaml(path)
    try:
        return ResultsMapping(**(data or {}))
    except (ValidationError, TypeError) as e:
        if isinstance(e, ValidationError):
            raise ConfigProblems(str(path), format_validation_error(e, str(path))) from None
        raise ConfigError(f"{path}: expected a mapping", hint="see the README section on backfill") from None


def model_from_config(config: dict[str, Any], mm: ModelMapping, source: str) -> ModelConfig:
    args = parse_model_args(config.get("model_args"), as_text=True)
    path = args.get(mm.path_arg)
    if not path:
        raise UserError(f"{source}: config.model_args has no {mm.path_arg!r}",
                        hint="set model.path_arg in the mapping to the key that holds the checkpoint path")
    for old, new in mm.path_map.items():
        if path.startswith(old):
            path = new + path[len(old):]
            break
    m = re.search(mm.step_regex, path)
    step = m.group(1) if m else None
    if step is not None and not step.isdigit():
        raise ConfigError(f"{source}: model.step_regex {mm.step_regex!r} found {step!r} in {path}, not a step number",
                          hint="make its group match digits only, e.g. 'step[_-]?(\\d+)'")
    step = int(step) if step is not None else None
    stage = None
    if mm.stage_regex:
        s = re.search(mm.stage_regex, path)
        stage = sanitize(s.group(1), fallback="model") if s else None
    dtype = str(args.get("dtype", "")).replace("torch.", "")
    precisions = {**DEFAULT_PRECISION, **mm.precision}
    if args.get("load_in_8bit") in ("True", "true"):
        precision = "int8"
    elif args.get("load_in_4bit") in ("True", "true"):
        precision = "int4"
    else:
        precision = precisions.get(dtype, mm.default_precision)
    name = sanitize(mm.name.format(basename=Path(path.rstrip("/")).name, stage=stage or "", step=step or ""),
                    fallback="model")
    try:
        return ModelConfig(name=name, path=path, backend=mm.backend, precision=precision, step=step, stage=stage,
                           **mm.fields)
    except ValidationError as e:
        raise ConfigProblems(source, format_validation_error(e, "model")) from None


def gen_from_kwargs(kwargs: dict[str, Any] | None, base: GenConfig | None) -> GenConfig | None:
    if not kwargs:
        return base
    upd: dict[str, Any] = {}
    if "temperature" in kwargs:
        upd["temperature"] = float(kwargs["temperature"])
    if kwargs.get("do_sample") is False:
        upd["temperature"] = 0.0
    if "top_p" in kwargs:
        upd["top_p"] = float(kwargs["top_p"])
    if "top_k" in kwargs:
        upd["top_k"] = int(kwargs["top_k"])
    if "max_gen_toks" in kwargs:
        upd["max_new_tokens"] = int(kwargs["max_gen_toks"])
    if "until" in kwargs:
        until = kwargs["until"]
        upd["stop"] = tuple([until] if isinstance(until, str) else until)
    return GenConfig.model_validate({**(base or GenConfig()).model_dump(), **upd})  # checked like a suite's gen


def plan_from_results(store: Store, pattern: str, mapping_path: Path, *, data_root: Path | None = None,
                      allow_direct: bool = False) -> list[Any]:
    from rescore.gen.runner import plan_units, unit_state
    from rescore.plan.backfill import PlannedUnit
    from rescore.tasks.suites import load_suite

    mapping = load_mapping(mapping_path)
    files = sorted(glob.glob(pattern))
    if not files:
        raise UserError(f"no results files match {pattern!r}", hint="quote the glob and check the directory")
    suite = load_suite(mapping.suite)
    out: list[PlannedUnit] = []
    seen: set[str] = set()
    for f in files:
        try:
            data = json.loads(Path(f).read_text(encoding="utf-8"))
            config = data["config"]
        except (OSError, ValueError, RecursionError, KeyError, TypeError) as e:  # ValueError: bad JSON or UTF-8
            raise UserError(f"{f}: not a results file with a 'config' section ({type(e).__name__}: {e})",
                            hint="pass results_*.json files written by lm-evaluation-harness") from None
        model = model_from_config(config, mapping.model, f)
        names = list(data.get("configs") or data.get("results") or {})
        tasks = []
        for lm_name in names:
            ours = mapping.tasks.get(lm_name)
            if ours is None:
                continue
            t = suite.task(ours)
            upd: dict[str, Any] = {}
            try:
                tcfg = (data.get("configs") or {}).get(lm_name, {})
                shots = (data.get("n-shot") or {}).get(lm_name, tcfg.get("num_fewshot"))
                if mapping.use_fewshot and shots is not None:
                    upd["num_fewshot"] = int(shots)
                if mapping.use_generation_kwargs and tcfg.get("output_type") == "generate_until":
                    upd["gen"] = gen_from_kwargs(tcfg.get("generation_kwargs"), t.gen or suite.gen)
                tasks.append(type(t).model_validate({**t.model_dump(), **upd}))  # values of the file checked
            except ValidationError as e:
                raise ConfigProblems(f, format_validation_error(e, f"{f}: task {lm_name}")) from None
            except (ValueError, TypeError, AttributeError) as e:
                raise UserError(f"{f}: task {lm_name}: n-shot or generation_kwargs do not fit ({e})",
                                hint="pass results_*.json files written by lm-evaluation-harness") from None
        if not tasks:
            raise UserError(f"{f}: none of its tasks {names} is in the mapping",
                            hint=f"add them under 'tasks:' in {mapping_path}")
        seeds = None  # the suite's (and its tasks') own seeds, unless the results file names the seed it used
        if mapping.seed_key and config.get(mapping.seed_key) is not None:
            seed = config[mapping.seed_key]
            if isinstance(seed, bool) or not isinstance(seed, int) or value_problem(seed):
                raise UserError(f"{f}: config.{mapping.seed_key} is {seed!r}, not a 64-bit integer seed",
                                hint="fix the file, or set seed_key in the mapping to the key that holds the seed")
            seeds = (seed,)
        sub = suite.model_copy(update={"tasks": tuple(tasks)})
        for p in plan_units(store, sub, [model], data_root=data_root, allow_direct=allow_direct, seeds=seeds):
            if p.run_id not in seen:
                seen.add(p.run_id)
                state, done, total = unit_state(store, p.run_id)
                out.append(PlannedUnit(p, state, done, total))
    return out

"""Configuration models (pydantic, ``extra="forbid"``) for suites, tasks, models and generation.

Defaults live here, not in ``.get(key, default)`` calls. :func:`load_yaml_config` validates a whole file
and reports every problem at once. CLI overrides are ``-O key.path=value`` with the value parsed as YAML.
"""

from __future__ import annotations

import math
import string
from collections.abc import Collection
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer

from rescore.core import GenParams
from rescore.errors import ConfigError, close_names
from rescore.registry import NAME_RE

Precision = Literal["fp32", "bf16", "fp16", "int8", "int4"]
Tier = Literal["tier2", "tier3", "tier4"]


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_DEPTH = 32  # nesting a config value may have: the manifests and Arrow files that record it stay readable


def value_problem(value: Any) -> str | None:
    """Why a config value cannot be recorded (in a manifest's JSON, an Arrow column), or None: an integer
    beyond 64 bits, a float that is not finite (inf, nan), text that is not UTF-8, or nesting deeper than
    MAX_DEPTH.
    Iterative, so no input is too deep to check."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        v, where, depth = stack.pop()
        at = f" at {where.lstrip('.')}" if where else ""
        if isinstance(v, bool):
            continue
        if isinstance(v, int) and not INT64_MIN <= v <= INT64_MAX:
            return f"{v} does not fit in 64 bits{at} (integers must lie between -2^63 and 2^63-1)"
        if isinstance(v, float) and not math.isfinite(v):  # JSON has no inf or nan: a manifest would record null
            return f"{v} is not a finite number{at}"
        if isinstance(v, str) and not _utf8(v):  # bytes that are not UTF-8 (in a path, on the command line)
            return f"{v!r} is not UTF-8 text{at}"
        if isinstance(v, dict | list | tuple):
            if depth >= MAX_DEPTH:
                return f"nested deeper than {MAX_DEPTH} levels{at}"
            items = v.items() if isinstance(v, dict) else enumerate(v)
            stack.extend((x, f"{where}.{k}", depth + 1) for k, x in items)
    return None


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="after")
    @classmethod
    def _recordable(cls, v: Any) -> Any:
        # every config value ends up in a manifest (JSON) or an Arrow column: both hold 64-bit integers
        why = value_problem(v)
        if why:
            raise ValueError(why)
        return v


def _name(v: str) -> str:
    if not NAME_RE.match(v) or ".." in v:
        raise ValueError(f"{v!r} is not a valid name: use [a-z0-9_.-], starting with a letter or digit")
    return v


def check_placeholders(pattern: str, names: Collection[str], example: str) -> list[tuple[str, str]]:
    """The ``(name, format spec)`` of each ``{...}`` placeholder of a Python format pattern; ValueError unless
    every name is one of ``names`` ("" is a bare ``{}``), with no conversion, attribute or index. A literal
    brace is written twice. ``example`` shows a valid pattern in the message."""
    try:
        found = [(f, spec or "", conv) for _, f, spec, conv in string.Formatter().parse(pattern) if f is not None]
    except ValueError as e:
        raise ValueError(f"{pattern!r} is not a valid pattern ({e}); a literal brace is written '{{{{' or '}}}}'") from None
    allowed = " or ".join("{" + n + "}" for n in names)
    for f, spec, conv in found:
        if f not in names or conv is not None or "{" in spec:
            shown = "{" + f + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
            raise ValueError(f"{pattern!r} has the placeholder {shown}: the only one allowed is {allowed} "
                             f"(e.g. {example!r}), and a literal brace is written '{{{{' or '}}}}'")
    return [(f, spec) for f, spec, _ in found]


def seeds_check(v: tuple[int, ...] | None) -> tuple[int, ...] | None:
    """A seeds list runs one unit per seed: an empty list would run nothing, a repeated seed the same unit twice."""
    if v is None:
        return v
    if not v:
        raise ValueError("an empty seeds list runs nothing: give at least one seed, e.g. [0]")
    dup = sorted({s for s in v if v.count(s) > 1})
    if dup:
        raise ValueError(f"seeds repeat {dup}: each seed is one unit, give each once")
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


_TOPK64: dict[Literal["topk"], int] = {"topk": 64}


class DistConfig(Strict):
    """Distributions stored per scored position as safetensors side files (``gen/<run_id>/tensors/``).

    ``positions``: ``answer`` (every continuation token of loglikelihood rows), ``all`` (every scored token),
    or ``{every: N}`` (one token in N of rolling rows, at an offset drawn from the sample id). ``format``:
    ``full`` (the log-softmax over the whole vocabulary) or ``{topk: K}`` (the K largest logprobs, their
    token ids and the log of the mass left out). ``dtype`` of the stored logprobs. ``max_bytes_per_unit``:
    a unit whose expected side files exceed it is refused before it runs (raise it to run such a unit)."""

    positions: Literal["answer", "all"] | dict[Literal["every"], int] = "answer"
    format: Literal["full"] | dict[Literal["topk"], int] = Field(default_factory=lambda: _TOPK64.copy())
    dtype: Literal["float16", "bfloat16"] = "float16"
    max_bytes_per_unit: int = Field(8 << 30, ge=1)

    @field_validator("positions")
    @classmethod
    def _every(cls, v: Any) -> Any:
        if isinstance(v, dict) and (set(v) != {"every"} or not isinstance(v["every"], int) or v["every"] < 1):
            raise ValueError("positions is 'answer', 'all' or {every: N} with N >= 1")
        return v

    @field_validator("format")
    @classmethod
    def _topk(cls, v: Any) -> Any:
        if isinstance(v, dict) and (set(v) != {"topk"} or not isinstance(v["topk"], int) or v["topk"] < 1):
            raise ValueError("format is 'full' or {topk: K} with K >= 1")
        return v

    @property
    def every(self) -> int | None:
        return self.positions["every"] if isinstance(self.positions, dict) else None

    @property
    def topk(self) -> int | None:
        """K of ``{topk: K}``; None for ``full``."""
        return self.format["topk"] if isinstance(self.format, dict) else None


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
    data_dir: str | None = Field(None, description="a folder of the Hugging Face dataset's repository to read the "
                                 "split from, when the repository keeps several variants of one split")

    def model_post_init(self, __context: Any) -> None:
        if (self.hf is None) == (self.path is None):
            raise ValueError("a source needs exactly one of 'hf' (dataset id) or 'path' (local file)")
        if self.data_dir is not None and self.hf is None:
            raise ValueError("data_dir applies to a Hugging Face dataset ('hf'), not to a local 'path'")

    @model_serializer(mode="wrap")
    def _without_unset_data_dir(self, handler: Any) -> Any:
        """A source without data_dir serialises as it did before the field existed: run ids and data
        fingerprints of existing tasks stay the same."""
        out = handler(self)
        if self.data_dir is None and isinstance(out, dict):
            out.pop("data_dir", None)
        return out


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
    dist: DistConfig | None = Field(None, description="distributions stored per scored position (off: None)")
    seeds: tuple[int, ...] | None = Field(None, description="overrides the suite's seeds for this task")
    params: dict[str, Any] = Field(default_factory=dict)

    _check_name = field_validator("name")(classmethod(lambda cls, v: _name(v)))
    _check_seeds = field_validator("seeds")(classmethod(lambda cls, v: seeds_check(v)))


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
    _check_seeds = field_validator("seeds")(classmethod(lambda cls, v: seeds_check(v)))

    def task(self, name: str) -> TaskConfig:
        for t in self.tasks:
            if t.name == name:
                return t
        names = [t.name for t in self.tasks]
        close = close_names(name, names)
        raise ConfigError(f"suite {self.name!r} has no task {name!r}",
                          hint=(f"did you mean {', '.join(close)}? " if close else "") + f"tasks: {', '.join(names)}")


class ModelConfig(Strict):
    """One model (checkpoint) to generate with."""

    name: str = Field(description="label used in the store and reports")
    path: str = Field(description="local directory (or hub id when online); 'fake' for the fake backend")
    backend: str = Field("hf", description="a registered backend (fake, hf, vllm, an entry point of rescore.backends) "
                         "or 'package.module:Class'")
    loader: str = Field("hf", description="checkpoint loader of the hf backend (a registered name, an entry point of "
                        "rescore.loaders, or 'package.module:function')")
    precision: Precision = "fp32"
    step: int | None = Field(None, ge=0, description="training step of the checkpoint")
    stage: str | None = None
    device: str = "auto"
    trust_remote_code: bool = False
    batch_size: int = Field(8, ge=1)
    max_batch_tokens: int = Field(8192, ge=1)
    max_length: int | None = Field(None, ge=2, description="context window; default from the model config")
    options: dict[str, Any] = Field(default_factory=dict, description="the backend's and its loader's options")

    _check_name = field_validator("name")(classmethod(lambda cls, v: _name(v)))


def format_validation_error(err: ValidationError, source: str) -> list[str]:
    out = []
    errors = err.errors()
    failed = [e["loc"] for e in errors]
    for e in errors:
        if e["type"] == "too_short" and any(loc[: len(e["loc"])] == e["loc"] and loc != e["loc"] for loc in failed):
            continue  # a list "too short" only because one of its items failed: that item's error says why
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        out.append(f"{source}: {loc}: {e['msg']}")
    return out


class ConfigProblems(ConfigError):
    """Several problems found in one config; ``problems`` holds one line each."""

    def __init__(self, source: str, problems: list[str], hint: str = "fix them and run `rescore validate` again") -> None:
        self.problems = problems
        n = len(problems)
        super().__init__(f"{source}: {n} problem{'s' if n != 1 else ''}: " + "; ".join(problems), hint=hint)


def decode_utf8(data: bytes, source: str | Path) -> str:
    """``data`` as text; a byte that is not UTF-8 is a ConfigError naming the file, line and byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError(f"{source}: line {line} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})",
                          hint="save the file as UTF-8") from None


def parse_yaml(text: str, source: str | Path) -> Any:
    """YAML text -> data (safe loader); syntax errors and nesting too deep to parse are ConfigErrors."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}:{where} is not valid YAML: {getattr(e, 'problem', e)}", hint="fix the syntax") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to read", hint=f"a config nests at most {MAX_DEPTH} levels") from None


def read_yaml(path: str | Path) -> Any:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}", hint="check the path")
    return parse_yaml(decode_utf8(p.read_bytes(), p), p)


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
        except RecursionError:
            raise ConfigError(f"override {key!r}: the value is nested too deeply to read",
                              hint=f"a config nests at most {MAX_DEPTH} levels") from None
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

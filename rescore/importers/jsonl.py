"""Import a generic JSONL file of generations (one JSON object per sample) as one ``generate`` unit.

Typical input: a best-of-n GSM8K run that appended one line per problem, e.g.
``{"problem_id": 17, "question": "...", "answer": "... #### 42", "candidates": ["...", ...], "scores": [...]}``.
A mapping YAML (:class:`JsonlMapping`, ``extra="forbid"``) names the fields (dotted paths reach into nested
objects)::

    task: gsm8k_bon                 # task name in the store
    model: {name: sft-7b, path: /ckpt/sft-7b/step_2000, step: 2000, precision: bf16}
    seed: 0                         # the run seed (units that differ only in it aggregate over seeds)
    gen: {temperature: 0.8, n: 8, max_new_tokens: 512}   # how the candidates were sampled (recorded)
    fields:
      sample_id: problem_id
      candidates: candidates        # a list of strings (or one string)
      target: answer                # reference text (GSM8K: the full answer; meta.answer is taken after ####)
      answer: null                  # or the final answer itself
      prompt: question
      logprobs: null                # per candidate, per-token logprobs (for bon_max_*_logprob)
      scores: scores                # per candidate, a reranker score (for bon_reranker)
      meta: [answers]               # further fields kept in the row's meta

Reranker scores are written to ``<store>/imports/<run_id>/reranker_scores.jsonl`` and merged, for every
imported unit, into ``<store>/imports/reranker_scores.jsonl`` (rows carry the run id, so one file serves
all units): ``rescore score --reranker <store>/imports/reranker_scores.jsonl`` computes ``bon_reranker``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orjson
from pydantic import Field, ValidationError, field_validator, model_validator

from rescore.artifacts.io import atomic_write_bytes
from rescore.artifacts.store import Store
from rescore.config import GenConfig, Strict, Tier, _name, check_placeholders, read_yaml
from rescore.core import canonical_json
from rescore.errors import ConfigError
from rescore.importers.common import (
    ImportResult,
    ImportUnit,
    data_fingerprint,
    fail,
    get_path,
    gsm8k_answer,
    meta_json,
    outputs_fingerprint,
    read_jsonl,
    source_file,
    write_unit,
)
from rescore.names import child

IMPORTS = "imports"
RERANKER_FILE = "reranker_scores.jsonl"


def sample_id_format_check(v: str) -> str:
    """One ``{}`` (or ``{0}``, with a format spec: ``{:08d}``) that the raw id fills; nothing else."""
    if len(check_placeholders(v, ("", "0"), "{:08d}")) != 1:
        raise ValueError(f"{v!r} needs exactly one {{}} for the id (e.g. '{{:08d}}')")
    return v


class ModelSpec(Strict):
    """The model that produced the file (recorded in the manifest; step/stage/precision drive reports)."""

    name: str
    path: str | None = None
    step: int | None = Field(None, ge=0)
    stage: str | None = None
    precision: str | None = None

    @field_validator("name")
    @classmethod
    def _valid_name(cls, v: str) -> str:
        return _name(v)


class Fields(Strict):
    """Field names (dotted paths) in each JSON line."""

    sample_id: str
    candidates: str
    target: str | None = Field(None, description="reference answer text")
    answer: str | None = Field(None, description="final answer (stored as meta.answer)")
    prompt: str | None = None
    logprobs: str | None = Field(None, description="per candidate: list of per-token logprobs")
    scores: str | None = Field(None, description="per candidate: reranker score (higher is better)")
    category: str | None = None
    finish_reason: str | None = Field(None, description="per candidate: stop | length | eos")
    meta: tuple[str, ...] = Field((), description="further fields copied into the row's meta")


class JsonlMapping(Strict):
    task: str
    model: ModelSpec
    fields: Fields
    suite: str = "import"
    seed: int = 0
    tier: Tier = "tier3"
    family: str = "generate"
    chat: bool = False
    gen: GenConfig | None = None
    sample_id_format: str = Field("{}", description="Python format for the sample id, e.g. '{:08d}' for integers")

    @field_validator("task", "suite")
    @classmethod
    def _valid_names(cls, v: str) -> str:
        return _name(v)

    _id_format = field_validator("sample_id_format")(classmethod(lambda cls, v: sample_id_format_check(v)))

    @model_validator(mode="after")
    def _needs_reference(self) -> JsonlMapping:
        if self.fields.target is None and self.fields.answer is None:
            raise ValueError("fields needs 'target' or 'answer' (the reference the candidates are scored against)")
        return self


def load_mapping(path: Path) -> JsonlMapping:
    return _load(path, JsonlMapping)


def _load(path: Path, cls: type[Strict]) -> Any:
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"mapping {p} is a directory", hint="give the mapping YAML file")
    try:
        raw = read_yaml(p)
    except OSError as e:
        raise ConfigError(f"cannot read mapping {p}: {e.strerror}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: a mapping file is a YAML object (task, model, fields, ...)")
    try:
        return cls.model_validate(raw, context={"base": p.parent})
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(x) for x in err['loc']) or '(top)'}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"{p}: {problems}", hint=f"see the {cls.__name__} fields in `rescore import jsonl --help`") from None
    except ConfigError as e:
        raise ConfigError(f"{p}: {e.message}", hint=e.hint) from None


# -- per-line parsing ---------------------------------------------------------------------------------
def _get(path: Path, line: int, obj: dict[str, Any], key: str | None, required: bool = False) -> Any:
    if key is None:
        return None
    try:
        return get_path(obj, key)
    except KeyError:
        if required:
            raise fail(path, line, key, "is missing", hint="the mapping's fields name it; fix the mapping or the file") from None
        return None


def _per_candidate(path: Path, line: int, key: str, v: Any, n: int, kind: str) -> list[Any] | None:
    if v is None:
        return None
    if not isinstance(v, list) or len(v) != n:
        raise fail(path, line, key, f"must be a list with one {kind} per candidate ({n})")
    return v


def _num(path: Path, line: int, key: str, v: Any, allow_null: bool = False) -> float | None:
    if v is None and allow_null:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise fail(path, line, key, f"must hold numbers, got {v!r}")
    return float(v)


def parse_line(path: Path, line: int, obj: dict[str, Any], m: JsonlMapping) -> tuple[dict[str, Any], list[float | None] | None]:
    f = m.fields
    raw_id = _get(path, line, obj, f.sample_id, required=True)
    if isinstance(raw_id, bool) or not isinstance(raw_id, str | int):
        raise fail(path, line, f.sample_id, f"must be a string or an integer, got {raw_id!r}")
    try:
        sid = m.sample_id_format.format(raw_id)
    except (ValueError, IndexError, TypeError) as e:
        raise fail(path, line, f.sample_id, f"does not fit sample_id_format {m.sample_id_format!r} ({e})") from None
    cands = _get(path, line, obj, f.candidates, required=True)
    if isinstance(cands, str):
        cands = [cands]
    if not isinstance(cands, list) or not cands or not all(isinstance(c, str) for c in cands):
        raise fail(path, line, f.candidates, "must be a non-empty list of strings")
    n = len(cands)
    target = _get(path, line, obj, f.target, required=f.target is not None)
    answer = _get(path, line, obj, f.answer, required=f.answer is not None)
    if target is not None and not isinstance(target, str | int | float):
        raise fail(path, line, f.target, f"must be a string or a number, got {type(target).__name__}")
    if answer is not None and not isinstance(answer, str | int | float):
        raise fail(path, line, f.answer, f"must be a string or a number, got {type(answer).__name__}")
    prompt = _get(path, line, obj, f.prompt)
    if prompt is not None and not isinstance(prompt, str):
        raise fail(path, line, f.prompt, "must be a string")
    lps = _per_candidate(path, line, f.logprobs or "", _get(path, line, obj, f.logprobs, f.logprobs is not None), n, "list of logprobs")
    if lps is not None:
        for j, lp in enumerate(lps):
            if not isinstance(lp, list):
                raise fail(path, line, f"{f.logprobs}.{j}", "must be a list of per-token logprobs")
            lps[j] = [_num(path, line, f"{f.logprobs}.{j}", x) for x in lp]
    scores = _per_candidate(path, line, f.scores or "", _get(path, line, obj, f.scores, f.scores is not None), n, "score")
    if scores is not None:
        scores = [_num(path, line, f.scores or "", x, allow_null=True) for x in scores]
    finish = _per_candidate(path, line, f.finish_reason or "", _get(path, line, obj, f.finish_reason), n, "finish reason")
    cat = _get(path, line, obj, f.category)
    meta: dict[str, Any] = {}
    for key in f.meta:
        meta[key] = _get(path, line, obj, key, required=True)
    ans = str(answer).replace(",", "").strip() if answer is not None else gsm8k_answer(str(target) if target is not None else None)
    if ans is not None:
        meta["answer"] = ans
    row = {
        "sample_id": sid, "task": m.task, "request_type": "generate",
        "target": str(target) if target is not None else None, "gold": None,
        "category": str(cat) if cat is not None else None, "meta": meta_json(meta), "prompt": prompt,
        "prompt_token_ids": None, "chat": m.chat, "messages": None, "seed": m.seed,
        "sampling": canonical_json(m.gen.model_dump(mode="json")) if m.gen else None,
        "candidates": cands, "cand_logprobs": lps,
        "cand_finish_reason": [str(x) if x is not None else None for x in finish] if finish else None,
    }
    return row, scores


def import_jsonl(store: Store, path: Path, m: JsonlMapping, command: str | None = None,
                 ) -> tuple[ImportResult, list[str], dict[str, Any]]:
    path = Path(path)
    src = source_file(path)
    rows, scores = [], []
    seen: dict[str, int] = {}
    for line, obj in read_jsonl(path):
        row, sc = parse_line(path, line, obj, m)
        if row["sample_id"] in seen:
            raise fail(path, line, m.fields.sample_id,
                       f"sample id {row['sample_id']!r} already appeared on line {seen[row['sample_id']]}")
        seen[row["sample_id"]] = line
        rows.append(row)
        scores.append(sc)
    if not rows:
        raise fail(path, None, None, "holds no samples")
    # sorted by sample id: the same samples in another order are the same unit
    rows_sorted = sorted(zip(rows, scores, strict=True), key=lambda x: x[0]["sample_id"])
    inputs = [(r["sample_id"], r["prompt"], r["target"], r["meta"]) for r, _ in rows_sorted]
    gen = m.gen.to_params().to_dict() if m.gen else None
    unit = ImportUnit(
        kind="jsonl", request_type="generate",
        model={"name": m.model.name, "path": m.model.path, "backend": "import:jsonl", "precision": m.model.precision,
               "step": m.model.step, "stage": m.model.stage},
        task={"name": m.task, "family": m.family, "tier": m.tier,
              "config": {"mapping": m.model_dump(mode="json", exclude={"model", "suite", "seed"}), "chat": m.chat}},
        suite=m.suite, data_fp=data_fingerprint(inputs), seed=m.seed, gen=gen, rows=[r for r, _ in rows_sorted],
        outputs_fp=outputs_fingerprint([{**r, "scores": s} for r, s in rows_sorted]),
        sources=[src],
    )
    result = write_unit(store, unit, command)
    extra: dict[str, Any] = {}
    notes: list[str] = []
    if any(s is not None for _, s in rows_sorted):
        merged = write_reranker_scores(store, result.run_id, [(r["sample_id"], s) for r, s in rows_sorted])
        extra["reranker_file"] = str(merged)
        notes.append(f"reranker scores: rescore score --store {store.root} --reranker {merged}")
    return result, notes, extra


def write_reranker_scores(store: Store, run_id: str, scores: list[tuple[str, list[float | None] | None]]) -> Path:
    """The unit's scores file (written once) and the store-wide merge of every unit's file (rebuilt)."""
    d = store.root / IMPORTS
    own = child(d, run_id, RERANKER_FILE, kind="run id")
    if not own.is_file():
        lines = []
        for sid, sc in scores:
            for j, v in enumerate(sc or []):
                if v is not None and math.isfinite(v):
                    lines.append(orjson.dumps({"run_id": run_id, "sample_id": sid, "candidate": j, "score": v}))
        atomic_write_bytes(own, b"".join(x + b"\n" for x in lines), root=store.root)
    parts = sorted(p for p in d.glob(f"*/{RERANKER_FILE}") if p.is_file())
    atomic_write_bytes(d / RERANKER_FILE, b"".join(p.read_bytes() for p in parts), root=store.root)
    return d / RERANKER_FILE


__all__ = ["JsonlMapping", "Fields", "ModelSpec", "load_mapping", "import_jsonl", "write_reranker_scores"]

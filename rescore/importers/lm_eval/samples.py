"""Reading lm-eval's per-sample output (``samples_<task>_<date>.jsonl``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rescore.importers.common import (
    fail,
    read_jsonl,
)

# per-sample fields lm-eval writes that are not metric values
SAMPLE_KEYS = {"doc_id", "doc", "target", "arguments", "resps", "filtered_resps", "filter", "metrics",
               "doc_hash", "prompt_hash", "target_hash"}


# -- samples ------------------------------------------------------------------------------------------
@dataclass
class Sample:
    line: int
    doc_id: int
    doc: Any
    target: str
    args: list[list[Any]]  # per request: its arguments
    resps: list[Any]  # per request: its raw responses
    metrics: dict[str, Any] = field(default_factory=dict)  # "metric,filter" -> value


def read_samples(path: Path) -> list[Sample]:
    """Samples of one task, one per doc (lm-eval writes a doc once per filter; their responses must agree)."""
    by_id: dict[int, Sample] = {}
    for line, obj in read_jsonl(path):
        for key in ("doc_id", "arguments", "resps"):
            if key not in obj:
                raise fail(path, line, key, "is missing (not an lm-eval --log_samples line)",
                           hint=f"a samples line has {', '.join(sorted(SAMPLE_KEYS))} and metric values")
        doc_id = obj["doc_id"]
        if not isinstance(doc_id, int) or isinstance(doc_id, bool) or doc_id < 0:
            raise fail(path, line, "doc_id", f"must be a non-negative integer, got {doc_id!r}")
        args = _arguments(path, line, obj["arguments"])
        resps = obj["resps"]
        if not isinstance(resps, list) or len(resps) != len(args):
            raise fail(path, line, "resps", f"must be a list with one entry per request ({len(args)})")
        flt = obj.get("filter", "none")
        vals = {f"{k},{flt}": v for k, v in obj.items() if k not in SAMPLE_KEYS}
        old = by_id.get(doc_id)
        if old is None:
            target = obj.get("target")
            by_id[doc_id] = Sample(line, doc_id, obj.get("doc"), "" if target is None else str(target), args, resps, vals)
            continue
        if old.resps != resps or old.args != args:
            raise fail(path, line, "resps", f"doc {doc_id} appears again (filter {flt!r}) with different responses")
        old.metrics.update(vals)
    return [by_id[k] for k in sorted(by_id)]


def _arguments(path: Path, line: int, raw: Any) -> list[list[Any]]:
    """lm-eval writes ``{"gen_args_0": {"arg_0": ..., "arg_1": ...}, ...}`` (older versions: lists)."""
    if isinstance(raw, list):
        return [list(a) if isinstance(a, list | tuple) else [a] for a in raw]
    if not isinstance(raw, dict):
        raise fail(path, line, "arguments", "must be an object of gen_args_<i>")
    out = []
    for i in range(len(raw)):
        a = raw.get(f"gen_args_{i}")
        if not isinstance(a, dict):
            raise fail(path, line, f"arguments.gen_args_{i}", "is missing or not an object")
        out.append([a.get(f"arg_{j}") for j in range(len(a))])
    return out


def float_field(path: Path, line: int, fld: str, v: Any) -> float:
    try:
        if isinstance(v, bool):
            raise ValueError
        return float(v)
    except (TypeError, ValueError):
        raise fail(path, line, fld, f"is not a number: {v!r}") from None


def bool_field(path: Path, line: int, fld: str, v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if v in ("True", "true", 1, "1"):
        return True
    if v in ("False", "false", 0, "0"):
        return False
    raise fail(path, line, fld, f"is not a boolean: {v!r}")


def str_field(path: Path, line: int, fld: str, v: Any) -> str:
    if not isinstance(v, str):
        raise fail(path, line, fld, f"must be a string, got {type(v).__name__}")
    return v

"""Arrow schemas of generation rows, one per request type.

A row holds everything scoring needs; nothing has to be looked up again. Columns shared by every
request type come first (``COMMON``). ``SCHEMA_VERSION`` changes whenever a column is added, removed or
changes meaning; a finished run of each version is kept under ``tests/fixtures/`` and must stay readable.

Per-choice / per-candidate values are stored "struct of arrays": one list column per quantity, each list
as long as the number of choices (or candidates). Scoring reads only the columns it needs.
"""

from __future__ import annotations

import pyarrow as pa

from rescore.core import RequestType

SCHEMA_VERSION = 1

i32 = pa.int32()
f32 = pa.float32()
f64 = pa.float64()
tokens = pa.list_(i32)
logprobs = pa.list_(f32)
topk_ids = pa.list_(pa.list_(i32))  # per position: k alternative token ids
topk_lps = pa.list_(pa.list_(f32))  # per position: their logprobs

COMMON = [
    pa.field("sample_id", pa.string(), nullable=False),
    pa.field("task", pa.string(), nullable=False),
    pa.field("request_type", pa.string(), nullable=False),
    pa.field("target", pa.string()),  # gold text / answer (e.g. the GSM8K answer string)
    pa.field("gold", i32),  # gold choice index for multiple choice
    pa.field("category", pa.string()),  # dataset category / subject / slice
    pa.field("meta", pa.string()),  # canonical JSON of further dataset metadata (checks, ids, ...)
    pa.field("prompt", pa.string()),  # rendered prompt / shared context / scored text
    pa.field("prompt_token_ids", tokens),
]

LOGLIKELIHOOD = [
    pa.field("contexts", pa.list_(pa.string())),  # one per choice; null when every choice shares `prompt`
    pa.field("choices", pa.list_(pa.string())),  # continuation text per choice
    pa.field("choice_token_ids", pa.list_(tokens)),
    pa.field("choice_logprobs", pa.list_(logprobs)),  # null inside when imported without per-token values
    pa.field("choice_sum_logprob", pa.list_(f64)),
    pa.field("choice_is_greedy", pa.list_(pa.bool_())),
    pa.field("choice_n_tokens", pa.list_(i32)),
    pa.field("choice_n_chars", pa.list_(i32)),
    pa.field("choice_n_bytes", pa.list_(i32)),
    pa.field("choice_topk_ids", pa.list_(topk_ids)),
    pa.field("choice_topk_logprobs", pa.list_(topk_lps)),
    pa.field("per_token_available", pa.bool_()),
]

ROLLING = [
    pa.field("token_ids", tokens),  # the scored target tokens
    pa.field("logprobs", logprobs),  # float32 logprob of each scored token
    pa.field("sum_logprob", f64),
    pa.field("n_tokens", i32),
    pa.field("n_bytes", pa.int64()),
    pa.field("n_words", pa.int64()),
    pa.field("topk_ids", topk_ids),
    pa.field("topk_logprobs", topk_lps),
    pa.field("entropy", logprobs),
    pa.field("per_token_available", pa.bool_()),
]

GENERATE = [
    pa.field("chat", pa.bool_()),
    pa.field("messages", pa.string()),  # canonical JSON of the chat messages (null when chat is false)
    pa.field("seed", pa.int64()),  # the run seed
    pa.field("sampling", pa.string()),  # canonical JSON of the sampling parameters
    pa.field("candidates", pa.list_(pa.string())),  # generated text per candidate
    pa.field("cand_token_ids", pa.list_(tokens)),
    pa.field("cand_logprobs", pa.list_(logprobs)),
    pa.field("cand_topk_ids", pa.list_(topk_ids)),
    pa.field("cand_topk_logprobs", pa.list_(topk_lps)),
    pa.field("cand_finish_reason", pa.list_(pa.string())),  # "stop" | "length" | "eos"
    pa.field("cand_seed", pa.list_(pa.int64())),
]

_SCHEMAS: dict[str, pa.Schema] = {
    "loglikelihood": pa.schema(COMMON + LOGLIKELIHOOD),
    "rolling": pa.schema(COMMON + ROLLING),
    "generate": pa.schema(COMMON + GENERATE),
}


# A unit whose task stores distributions (its task config has ``dist``) has one more column: the positions of
# each row's stored distributions among its scored tokens, in the order of tensors/dist.safetensors. Other
# units' rows, and so their run ids, are unchanged.
DIST_FIELD = pa.field("dist_positions", tokens)


def schema_for(request_type: RequestType | str, *, dist: bool = False) -> pa.Schema:
    try:
        s = _SCHEMAS[request_type]
    except KeyError:
        raise ValueError(f"unknown request type {request_type!r}") from None
    if dist and request_type in ("loglikelihood", "rolling"):
        s = s.append(DIST_FIELD)
    return s.with_metadata({b"rescore_schema_version": str(SCHEMA_VERSION).encode()})


def stores_dist(manifest: dict) -> bool:  # type: ignore[type-arg]
    """Whether a unit's manifest says its task stores distributions (its rows have ``dist_positions``)."""
    task = manifest.get("task") or {}
    return isinstance(task, dict) and bool((task.get("config") or {}).get("dist"))


def column_names(request_type: RequestType | str) -> list[str]:
    return [f.name for f in _SCHEMAS[request_type]]

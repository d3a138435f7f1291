"""Determinism check: regenerate the first rows of a finished unit and compare them with the store.

The unit's manifest holds everything needed to redo it: the model identity (path, precision, options),
the task config, the data fingerprint, the seed and the sampling parameters. The task's data is read
back through the tasks API (the prepared copy in the store, or the local source file) and must have the
same fingerprint; the same requests are rebuilt with the model's tokenizer and run through the backend.

Compared per request type:

- loglikelihood: each choice's continuation token ids and per-token logprobs;
- rolling: the scored token ids and their logprobs;
- generate: each candidate's token ids (the whole sequence must match) and the logprobs of the tokens
  both runs share.

A *sequence* is one choice, document/window or candidate. ``token_mismatches`` counts sequences whose
token ids differ; ``max_abs_logprob_diff`` is the largest per-token difference over matching positions.
``bit_identical`` says whether the regenerated rows equal the stored ones in every column, bit for bit.

The rows are regenerated in the batches the unit was generated in: the backend gets all of the unit's
requests with the others marked done (see :mod:`rescore.gen.base`), and the batch size recorded in the
manifest. On the same machine with the same torch thread count an ``hf`` unit is bit-identical;
``--batch-size`` or another machine measure how far the values move.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rescore.config import ModelConfig, TaskConfig
from rescore.core import GenParams
from rescore.errors import ConfigError, StoreError

LOGPROB_COLUMNS = {
    "loglikelihood": ("choice_token_ids", "choice_logprobs"),
    "rolling": ("token_ids", "logprobs"),
    "generate": ("cand_token_ids", "cand_logprobs"),
}


@dataclass
class DeterminismReport:
    run_id: str
    request_type: str
    rows: int
    sequences: int
    token_mismatches: int
    max_abs_logprob_diff: float
    atol: float
    worst_sample: str | None = None
    fingerprint_match: bool | None = None
    mismatched_samples: list[str] = field(default_factory=list)
    bit_identical: bool = False

    @property
    def ok(self) -> bool:
        return self.token_mismatches == 0 and self.max_abs_logprob_diff <= self.atol

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "request_type": self.request_type, "rows": self.rows, "sequences": self.sequences,
            "token_mismatches": self.token_mismatches, "max_abs_logprob_diff": self.max_abs_logprob_diff,
            "atol": self.atol, "worst_sample": self.worst_sample, "fingerprint_match": self.fingerprint_match,
            "mismatched_samples": self.mismatched_samples, "bit_identical": self.bit_identical, "ok": self.ok,
        }

    def verdict(self) -> str:
        """One phrase: bit-identical, or how far the regenerated rows are from the stored ones."""
        if self.bit_identical:
            return "bit-identical"
        head = "reproduced" if self.ok else "NOT reproduced"
        return f"{head} (max |logprob diff| {self.max_abs_logprob_diff:.3g}, {self.token_mismatches} token mismatch(es))"


def _sequences(request_type: str, row: dict[str, Any]) -> list[tuple[list[int], list[float] | None]]:
    ids_col, lp_col = LOGPROB_COLUMNS[request_type]
    ids, lps = row.get(ids_col), row.get(lp_col)
    if request_type == "rolling":
        return [(list(ids or []), list(lps) if lps is not None else None)]
    ids = ids or []
    lps = lps if lps is not None else [None] * len(ids)
    return [(list(i or []), list(lp) if lp is not None else None) for i, lp in zip(ids, lps, strict=True)]


def compare_rows(request_type: str, stored: Sequence[dict[str, Any]], fresh: Sequence[dict[str, Any]]
                 ) -> tuple[int, int, float, str | None, list[str]]:
    """(sequences, token mismatches, max abs logprob diff, worst sample id, sample ids with mismatches)."""
    fresh_by_id = {r["sample_id"]: r for r in fresh}
    n_seq = mismatches = 0
    worst, worst_id = 0.0, None
    bad: list[str] = []
    for old in stored:
        sid = old["sample_id"]
        new = fresh_by_id.get(sid)
        a = _sequences(request_type, old)
        b = _sequences(request_type, new) if new is not None else []
        n_seq += len(a)
        row_bad = len(a) != len(b)
        mismatches += max(len(a) - len(b), 0)
        for (ids_a, lp_a), (ids_b, lp_b) in zip(a, b, strict=False):
            if ids_a != ids_b:
                mismatches += 1
                row_bad = True
            if lp_a is None or lp_b is None:
                continue
            # compare the logprobs of the common prefix of tokens (the rest has no counterpart)
            n = 0
            while n < min(len(ids_a), len(ids_b)) and ids_a[n] == ids_b[n]:
                n += 1
            for x, y in zip(lp_a[:n], lp_b[:n], strict=True):
                d = abs(float(x) - float(y))
                if d > worst:
                    worst, worst_id = d, sid
        if row_bad:
            bad.append(sid)
    return n_seq, mismatches, worst, worst_id, bad


def model_config_from_manifest(manifest: dict[str, Any], *, path: str | None = None, device: str | None = None,
                               batch_size: int | None = None) -> ModelConfig:
    m = manifest.get("model") or {}
    runtime = manifest.get("runtime") or {}
    fields = {k: m[k] for k in ("name", "path", "backend", "loader", "precision", "step", "stage", "trust_remote_code",
                                "max_length", "options") if k in m}
    fields.update({k: runtime[k] for k in ("batch_size", "max_batch_tokens", "device") if runtime.get(k) is not None})
    if path is not None:
        fields["path"] = path
    if device is not None:
        fields["device"] = device
    if batch_size is not None:
        fields["batch_size"] = batch_size
    return ModelConfig(**fields)


def verify_determinism(
    store_root: str | Path,
    run_id: str,
    *,
    rows: int = 20,
    atol: float = 1e-4,
    data_root: Path | None = None,
    allow_direct: bool = False,
    model_path: str | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    backend_factory: Callable[[ModelConfig], Any] | None = None,
) -> DeterminismReport:
    from rescore import tasks as task_api
    from rescore.artifacts.store import Store
    from rescore.gen.base import RunContext, make_backend
    from rescore.tasks.data import get_task_data

    if rows < 1:
        raise ConfigError(f"--rows must be at least 1, got {rows}")
    unit = Store(store_root).unit(run_id)
    man = unit.manifest
    rt = unit.request_type
    stored = unit.read_table().slice(0, rows).to_pylist()
    model = model_config_from_manifest(man, path=model_path, device=device, batch_size=batch_size)
    task = TaskConfig(**man["task"]["config"])
    data = get_task_data(Path(store_root), task, data_root=_data_root(man, data_root), allow_direct=allow_direct,
                         suite=man.get("suite"))
    if data.data_fp != man.get("data_fp"):
        raise StoreError(
            f"task data of {task.name!r} has fingerprint {data.data_fp}, but unit {run_id} was generated from "
            f"{man.get('data_fp')}", hint="the source data changed; prepare the original data or regenerate the unit")
    backend = (backend_factory or make_backend)(model)
    try:
        stored_fp = (man.get("model") or {}).get("fingerprint")
        fresh_fp = backend.describe().get("fingerprint")
        fp_match = None if stored_fp is None or fresh_fp is None else stored_fp == fresh_fp
        want = {r["sample_id"] for r in stored}
        requests = task_api.build_requests(task, data, backend.tokenizer)
        missing = want - {r.sample_id for r in requests}
        if missing:
            raise StoreError(f"the task no longer produces sample id(s) {sorted(missing)[:5]} of unit {run_id}",
                             hint="the task definition changed since the unit was generated")
        gen = man.get("gen")
        params = GenParams(**{**gen, "stop": tuple(gen.get("stop") or ())}) if gen else GenParams()
        ctx = RunContext(seed=int(man["seed"]), params=params, topk=task.topk, batch_size=model.batch_size,
                         max_batch_tokens=model.max_batch_tokens,
                         done=frozenset(r.sample_id for r in requests if r.sample_id not in want))
        fresh = [row for batch in backend.run(requests, ctx) for row in batch if row["sample_id"] in want]
    finally:
        backend.close()
    n_seq, mism, worst, worst_id, bad = compare_rows(rt, stored, fresh)
    return DeterminismReport(run_id, rt, len(stored), n_seq, mism, worst, atol, worst_id, fp_match, bad,
                             bit_identical=rows_identical(rt, stored, fresh))


def rows_identical(request_type: str, stored: Sequence[dict[str, Any]], fresh: Sequence[dict[str, Any]]) -> bool:
    """Whether ``fresh`` rows, stored the way the writer stores them, equal ``stored`` in every column."""
    import pyarrow as pa

    from rescore.artifacts.schema import schema_for
    from rescore.artifacts.store import nonfinite_to_null

    if len(stored) != len(fresh):
        return False
    schema = schema_for(request_type)
    by_id = {r["sample_id"]: r for r in fresh}
    if set(by_id) != {r["sample_id"] for r in stored}:
        return False
    a = pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in stored], schema=schema)
    b = pa.Table.from_batches([nonfinite_to_null(pa.RecordBatch.from_pylist(
        [by_id[r["sample_id"]] for r in stored], schema=schema))])
    return a.equals(b)


def _data_root(manifest: dict[str, Any], override: Path | None) -> Path | None:
    if override is not None:
        return override
    from rescore.tasks.suites import load_suite, suite_data_root

    if manifest.get("data_root"):  # recorded by the runner: where the unit's local task files were
        return Path(manifest["data_root"])
    try:
        return suite_data_root(load_suite(str(manifest.get("suite"))))
    except ConfigError:  # a suite file given by path that is not here: local paths resolve as they are
        return None

"""External reranker scores for best-of-n selection (``bon_reranker``).

A user file (CSV, or JSONL / JSON lines) with columns ``sample_id``, ``candidate`` (index), ``score``
(higher is better). Optional columns ``run_id``, ``model``, ``task`` and ``seed`` restrict a row to the
units that match them; without them a row applies to every unit holding that sample id. Candidates
without a score are never selected; a sample with no scored candidate does not count.

The file's content hash is part of the metric's identity, so editing the file rescores.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from rescore.errors import ConfigError
from rescore.score.columns import pylist
from rescore.score.spec import UnitInfo

REQUIRED = ("sample_id", "candidate", "score")
FILTERS = ("run_id", "model", "task", "seed")


def file_fingerprint(path: str | None) -> str | None:
    if not path:
        return None
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"reranker file not found: {p}", hint="pass an existing CSV or JSONL file with --reranker")
    return hashlib.sha256(p.read_bytes()).hexdigest()


@lru_cache(maxsize=8)
def _load(path: str, digest: str) -> dict[str, Any]:
    p = Path(path)
    try:
        if p.suffix.lower() in (".jsonl", ".json", ".ndjson"):
            import pyarrow.json as pajson

            t = pajson.read_json(p)
        else:
            import pyarrow.csv as pacsv

            t = pacsv.read_csv(p, convert_options=pacsv.ConvertOptions(
                column_types={"sample_id": pa.string(), "run_id": pa.string(), "model": pa.string(),
                              "task": pa.string(), "seed": pa.string()}))
    except (pa.ArrowInvalid, OSError) as e:
        raise ConfigError(f"cannot read reranker file {p}: {e}", hint="use CSV with a header or JSON lines") from None
    missing = [c for c in REQUIRED if c not in t.column_names]
    if missing:
        raise ConfigError(f"reranker file {p} lacks column(s) {missing}",
                          hint=f"needed: {', '.join(REQUIRED)}; optional: {', '.join(FILTERS)}")
    cols = {c: t.column(c).to_pylist() for c in t.column_names if c in REQUIRED + FILTERS}
    index: dict[str, list[tuple[int, float, dict[str, str]]]] = {}
    first: dict[tuple[Any, ...], int] = {}
    for i, sid in enumerate(cols["sample_id"]):
        where = f"reranker file {p} row {i + 1}"  # data rows counted from 1 (a CSV header is not a row)
        cand = _candidate(cols["candidate"][i])
        if cand is None:
            raise ConfigError(f"{where}: candidate {cols['candidate'][i]!r} is not a candidate index (0, 1, 2, ...)",
                              hint="fix the row: a candidate is the position of the candidate in the unit, from 0")
        try:
            score = float(cols["score"][i])
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: score {cols['score'][i]!r} is not a number", hint="fix the row") from None
        if sid is None or str(sid) == "":
            raise ConfigError(f"{where}: no sample_id", hint="fix the row")
        filt = {k: str(cols[k][i]) for k in FILTERS if k in cols and cols[k][i] is not None}
        key = (str(sid), cand, tuple(sorted(filt.items())))
        if key in first:  # two scores for one candidate: which one counts would depend on the row order
            raise ConfigError(f"{where} repeats row {first[key]} (sample_id {sid!r}, candidate {cand}"
                              + "".join(f", {k} {v!r}" for k, v in sorted(filt.items())) + ")",
                              hint="keep one score per candidate (or tell the rows apart with run_id/model/task/seed)")
        first[key] = i + 1
        index.setdefault(str(sid), []).append((cand, score, filt))
    return index


def _candidate(v: Any) -> int | None:
    """A candidate index: a non-negative integer (``2``, ``2.0``, ``"2"``), else None (``1.5``, ``-1``, ``True``)."""
    if isinstance(v, bool):
        return None
    if isinstance(v, float):
        return int(v) if v.is_integer() and v >= 0 else None
    if isinstance(v, str):
        v = v.strip()
        return int(v) if v.isascii() and v.isdigit() else None
    return v if isinstance(v, int) and v >= 0 else None


def check_file(path: str | Path) -> None:
    """Read and check a reranker file now (missing columns, a candidate that is not an index, repeated rows),
    so a bad file fails before anything is scored."""
    _load(str(Path(path).resolve()), file_fingerprint(str(path)) or "")


def _matches(filt: dict[str, str], unit: UnitInfo | None) -> bool:
    if not filt:
        return True
    if unit is None:
        return False
    m = unit.manifest
    have = {"run_id": unit.run_id, "model": str((m.get("model") or {}).get("name")),
            "task": str((m.get("task") or {}).get("name")), "seed": str(m.get("seed"))}
    return all(have[k] == v for k, v in filt.items())


def reranker_scores(path: str, table: pa.Table, offsets: np.ndarray, unit: UnitInfo | None) -> np.ndarray:
    """A score per flat candidate of ``table`` (NaN where the file has none)."""
    index = _load(str(Path(path).resolve()), file_fingerprint(path) or "")
    out = np.full(int(offsets[-1]), np.nan)
    for r, sid in enumerate(pylist(table, "sample_id")):
        for cand, score, filt in index.get(sid, ()):
            a, b = int(offsets[r]), int(offsets[r + 1])
            if 0 <= cand < b - a and _matches(filt, unit):
                out[a + cand] = score
    return out

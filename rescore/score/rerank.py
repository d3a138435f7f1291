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
    for i, sid in enumerate(cols["sample_id"]):
        try:
            cand = int(cols["candidate"][i])
            score = float(cols["score"][i])
        except (TypeError, ValueError):
            raise ConfigError(f"reranker file {p} row {i + 1}: candidate must be an integer and score a number",
                              hint="fix the row") from None
        filt = {k: str(cols[k][i]) for k in FILTERS if k in cols and cols[k][i] is not None}
        index.setdefault(str(sid), []).append((cand, score, filt))
    return index


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

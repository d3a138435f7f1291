"""Column helpers shared by the metric modules: flattening list columns, parsing ``meta``, and a per-table
memo so metrics scoring the same unit share work (extracted answers, parsed meta, check results)."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

T = TypeVar("T")

_memo: dict[int, dict[str, Any]] = {}


def memo(table: pa.Table, key: str, compute: Callable[[], T]) -> T:
    """``compute()`` once per (table object, key); forgotten when the table is garbage-collected."""
    tid = id(table)
    slot = _memo.get(tid)
    if slot is None:
        slot = _memo[tid] = {}
        weakref.finalize(table, _memo.pop, tid, None)
    if key not in slot:
        slot[key] = compute()
    return slot[key]  # type: ignore[no-any-return]


def flat_list(col: pa.ChunkedArray | pa.Array, dtype: Any = np.float64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A list column as (flat values, row offsets of length n+1, row-is-null mask). Null lists are empty.
    ``dtype=None`` keeps the values' own type (no copy)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if isinstance(arr.type, pa.LargeListType):
        arr = arr.cast(pa.list_(arr.type.value_type))
    null = np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    if arr.null_count:
        arr = pc.fill_null(arr, pa.scalar([], type=arr.type))
    offsets = np.asarray(arr.offsets.to_numpy(), dtype=np.int64)
    values = arr.values.slice(offsets[0], offsets[-1] - offsets[0]) if len(arr) else arr.values.slice(0, 0)
    offsets = offsets - offsets[0]
    flat = values.to_numpy(zero_copy_only=False)
    if flat.dtype == object:  # nulls inside
        flat = np.array([np.nan if x is None else x for x in flat], dtype=dtype or np.float64)
    return (flat if dtype is None else np.asarray(flat, dtype=dtype)), offsets, null


def row_ids(offsets: np.ndarray) -> np.ndarray:
    """For each flat element, the index of its row."""
    n = len(offsets) - 1
    return np.repeat(np.arange(n, dtype=np.int64), np.diff(offsets))


def segment_argmax(vals: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``np.argmax`` of every row segment, with numpy's semantics (first maximum; the first NaN if any).
    Empty rows give -1."""
    n = len(offsets) - 1
    out = np.full(n, -1, dtype=np.int64)
    lens = np.diff(offsets)
    k = uniform_width(offsets)
    if k:  # every row has k entries (the usual multiple-choice table): numpy's own argmax
        return vals.reshape(n, k).argmax(axis=1).astype(np.int64)
    nonempty = lens > 0
    if not nonempty.any() or vals.size == 0:
        return out
    rid = row_ids(offsets)
    pos = np.arange(vals.size, dtype=np.int64) - np.repeat(offsets[:-1], lens)
    big = np.iinfo(np.int64).max
    starts = offsets[:-1][nonempty]
    isnan = np.isnan(vals)
    safe = np.where(isnan, -np.inf, vals)
    rmax = np.maximum.reduceat(safe, starts)
    full_max = np.full(n, -np.inf)
    full_max[nonempty] = rmax
    at_max = safe == full_max[rid]
    first_max = np.minimum.reduceat(np.where(at_max, pos, big), starts)
    first_nan = np.minimum.reduceat(np.where(isnan, pos, big), starts)
    res = np.where(first_nan < big, first_nan, first_max)
    out[nonempty] = res
    return out


def uniform_width(offsets: np.ndarray) -> int:
    """k when every row has exactly k > 0 entries, else 0."""
    n = len(offsets) - 1
    if n <= 0 or offsets[-1] % n:
        return 0
    k = int(offsets[-1] // n)
    if k == 0 or not np.array_equal(offsets, np.arange(n + 1, dtype=offsets.dtype) * k):
        return 0
    return k


def segment_sums(vals: np.ndarray, offsets: np.ndarray, block: int = 1 << 18) -> np.ndarray:
    """Sum of every row segment in float64, each summed left to right like ``np.add.reduceat`` (same
    bits); empty rows give 0. The values are cast block by block into one small reused buffer: casting
    millions of float32 token logprobs at once allocates a float64 copy of them all, whose first touch
    costs many times the sum itself."""
    n = len(offsets) - 1
    out = np.zeros(max(n, 0))
    if n <= 0 or offsets[-1] == offsets[0]:
        return out
    lens = np.diff(offsets)
    buf = np.empty(block, dtype=np.float64)
    r = 0
    while r < n:
        a = int(offsets[r])
        e = int(np.searchsorted(offsets, a + block, side="right")) - 1  # rows r..e-1 end within the block
        if e <= r:  # row r alone is longer than a block
            e = r + 1
            seg = np.asarray(vals[a : offsets[e]], dtype=np.float64)
        else:
            seg = buf[: offsets[e] - a]
            np.copyto(seg, vals[a : offsets[e]], casting="unsafe")
        ne = lens[r:e] > 0
        if ne.any():
            out[r:e][ne] = np.add.reduceat(seg, offsets[r:e][ne] - a)
        r = e
    return out


def row_reduce(m: np.ndarray, ufunc: np.ufunc) -> np.ndarray:
    """``ufunc.reduce(m, axis=1)`` of an (n, k) matrix. For k < 8 it combines whole columns, left to right:
    the same order (and bits) as numpy's row reduction, which for a few choices per row spends most of its
    time on per-row overhead."""
    k = m.shape[1]
    if k == 0 or k >= 8:  # from 8 on numpy sums pairwise: its own reduction keeps its bits
        return ufunc.reduce(m, axis=1)  # type: ignore[no-any-return]
    out = m[:, 0].copy()
    for j in range(1, k):
        ufunc(out, m[:, j], out=out)
    return out


def segment_softmax(vals: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Softmax within each row segment (lm-eval's ``utils.softmax``: exp(x - max) / sum)."""
    if vals.size == 0:
        return vals.astype(np.float64)
    k = uniform_width(offsets)
    if k:
        m = vals.reshape(-1, k)
        with np.errstate(invalid="ignore", over="ignore"):
            e = np.exp(m - row_reduce(m, np.maximum)[:, None])
            e /= row_reduce(e, np.add)[:, None]
            return e.reshape(-1)
    lens = np.diff(offsets)
    nonempty = lens > 0
    starts = offsets[:-1][nonempty]
    rid = row_ids(offsets)
    rmax = np.full(len(lens), 0.0)
    rmax[nonempty] = np.maximum.reduceat(vals, starts)
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.exp(vals - rmax[rid])
        tot = np.zeros(len(lens))
        tot[nonempty] = np.add.reduceat(e, starts)
        return e / tot[rid]


def pylist(table: pa.Table, name: str) -> list[Any]:
    return memo(table, f"pylist:{name}", lambda: table.column(name).to_pylist())


_META_CACHE: dict[str, dict[str, Any]] = {}
_META_CACHE_MAX = 200_000
_CLEARERS: list[Callable[[], None]] = [_META_CACHE.clear]


def register_cache(clear: Callable[[], None]) -> None:
    """Register a process-wide cache of per-text work (parsed meta, normalised answers, ...)."""
    _CLEARERS.append(clear)


def clear_caches() -> None:
    """Empty every registered cache: the state of a fresh process (benchmarks time runs from it)."""
    for clear in _CLEARERS:
        clear()


def _parse_meta(s: str | None) -> dict[str, Any]:
    if not s:
        return {}
    v = _META_CACHE.get(s)
    if v is None:
        try:
            v = orjson.loads(s)
        except orjson.JSONDecodeError:
            v = {}
        if not isinstance(v, dict):
            v = {}
        if len(_META_CACHE) >= _META_CACHE_MAX:
            _META_CACHE.clear()
        _META_CACHE[s] = v
    return v


def metas(table: pa.Table) -> list[dict[str, Any]]:
    """The ``meta`` column parsed from canonical JSON, one dict per row (empty when null). Treat the dicts
    as read-only: equal meta strings share one parsed dict (the same prompts recur across checkpoints
    and seeds, so parsing is cached across units too)."""

    def parse() -> list[dict[str, Any]]:
        if "meta" not in table.column_names:
            return [{} for _ in range(table.num_rows)]
        enc = table.column("meta").combine_chunks().dictionary_encode()
        parsed = [_parse_meta(s) for s in enc.dictionary.to_pylist()]
        idx = enc.indices.to_pylist()
        return [{} if i is None else parsed[i] for i in idx]

    return memo(table, "meta", parse)


def to_float(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A numeric column as float64 with NaN for nulls."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return np.asarray(arr.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False), dtype=np.float64)


def float_array(values: np.ndarray) -> pa.Array:
    """float64 Arrow array with NaN as null (what ``from_pandas=True`` does, without importing pandas)."""
    v = np.asarray(values, dtype=np.float64)
    nan = np.isnan(v)
    return pa.array(v, pa.float64(), mask=nan if nan.any() else None)

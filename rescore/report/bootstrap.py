"""Paired bootstrap of the difference of one metric between two models on the same samples.

Both sides hold per-row values aligned on the same sample ids (one array per seed). A resample draws
``n`` sample ids with replacement; every seed of a drawn sample comes along (samples are the clusters,
seeds are nested in them). For each resample the metric is aggregated on each side exactly as the scorer
aggregates it (mean of values, or sum(num)/sum(den) for ratio metrics such as perplexity), averaged over
the seeds, and the delta ``model - baseline`` is taken. Because both sides use the *same* draw, the
sample-to-sample difficulty cancels: that is what makes the test paired.

- CI: percentile interval of the resampled deltas at ``level`` (default 0.95).
- p-value (two-sided, H0: delta = 0): ``min(1, 2 * min(#{d* <= 0} + 1, #{d* >= 0} + 1) / (B + 1))``, the
  percentile-bootstrap test that agrees with the CI: p < 1 - level roughly when the CI excludes 0.
  Identical rows give p = 1; a difference that every resample shows gives p = 2 / (B + 1).
- stderr: the standard deviation (ddof=1) of the resampled deltas.

Resamples default to :data:`DEFAULT_RESAMPLES`; the draw is seeded (``seed``), so a result is reproducible
bit for bit. Nothing here imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_RESAMPLES = 2000
DEFAULT_LEVEL = 0.95
_CHUNK_ELEMS = 4_000_000  # index-matrix elements per chunk (bounds memory on big tasks)

Cols = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class PairedResult:
    """The point estimates on the shared samples and the bootstrap summary of their difference."""

    base: float
    value: float
    delta: float
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    stderr: float | None
    n: int
    resamples: int


# -- resampling ------------------------------------------------------------------------------------------
def resample_counts(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """The bootstrap draws as count matrices, in chunks: ``w[b, i]`` = how often sample ``i`` is drawn in
    resample ``b`` (each row sums to ``n``). Sums over a resample are then one matrix-vector product."""
    rng = np.random.default_rng(seed)
    chunk = max(1, min(resamples, _CHUNK_ELEMS // max(n, 1)))
    for start in range(0, resamples, chunk):
        m = min(chunk, resamples - start)
        idx = rng.integers(0, n, size=(m, n)) + (np.arange(m, dtype=np.int64) * n)[:, None]
        yield np.bincount(idx.ravel(), minlength=m * n).reshape(m, n).astype(np.float64)


class CountsCache:
    """Keeps the count matrices of the last draw while they fit in ``max_elems``: the metrics of one task
    pair share their samples and seed, so they reuse one draw instead of drawing again."""

    def __init__(self, max_elems: int = 8_000_000) -> None:
        self.max_elems = max_elems
        self._key: tuple[int, int, int] | None = None
        self._chunks: list[np.ndarray] = []

    def get(self, n: int, resamples: int, seed: int) -> Iterable[np.ndarray]:
        key = (n, resamples, seed)
        if key == self._key:
            return self._chunks
        if n * resamples > self.max_elems:
            return resample_counts(n, resamples, seed)
        self._key, self._chunks = key, list(resample_counts(n, resamples, seed))
        return self._chunks


# -- aggregates over resamples ---------------------------------------------------------------------------
# Vectorised versions of the scorer's aggregators: ``f(cols, w) -> one value per row of the count matrix w``;
# w=None means the full sample (one value).
Aggregate = Callable[[Cols, "np.ndarray | None"], np.ndarray]


def _wsum(x: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    return np.asarray([x.sum()]) if w is None else w @ x


def _mean(cols: Cols, w: np.ndarray | None) -> np.ndarray:
    v = cols["value"]
    return _wsum(v, w) / v.size


def _ratio(transform: Callable[[np.ndarray], np.ndarray]) -> Aggregate:
    def f(cols: Cols, w: np.ndarray | None) -> np.ndarray:
        a, b = _wsum(cols["num"], w), _wsum(cols["den"], w)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return transform(a / b)

    return f


VECTOR_AGGREGATORS: dict[str, tuple[tuple[str, ...], Aggregate]] = {
    "mean": (("value",), _mean),
    "bootstrap": (("value",), _mean),  # the scorer's bootstrap aggregator's value is the plain mean
    "ratio": (("num", "den"), _ratio(lambda r: r)),
    "perplexity": (("num", "den"), _ratio(lambda r: np.exp(-r))),
    "bits_per_byte": (("num", "den"), _ratio(lambda r: -r / math.log(2))),
}


def aggregate_fn(aggregator: str, agg_params: Mapping[str, Any] | None = None) -> tuple[tuple[str, ...], Aggregate]:
    """(columns needed, vectorised aggregate) for a scorer aggregator name.

    Known aggregators are vectorised; any other registered one (ECE, a plugin's) is called once per
    resample through the scorer's registry, which is slower but gives the same numbers."""
    if aggregator in VECTOR_AGGREGATORS:
        return VECTOR_AGGREGATORS[aggregator]
    from rescore.score.registry import load_builtin
    from rescore.score.spec import aggregators

    load_builtin()
    if aggregator == "lm_eval" and aggregator not in aggregators:  # lm-eval.* metrics' (registered by `score`)
        from rescore.tasks.lm_eval.scoring import register_aggregator

        register_aggregator()
    agg = aggregators.get(aggregator)
    params = dict(agg_params or {})

    def f(cols: Cols, w: np.ndarray | None) -> np.ndarray:
        if w is None:
            val = agg(cols, params).value
            return np.asarray([np.nan if val is None else val])
        out = np.empty(w.shape[0])
        rows = np.arange(w.shape[1])
        for b in range(w.shape[0]):
            take = np.repeat(rows, w[b].astype(np.int64))
            val = agg({k: v[take] for k, v in cols.items()}, params).value
            out[b] = np.nan if val is None else val
        return out

    return tuple(agg.needs), f


# -- the paired bootstrap ----------------------------------------------------------------------------------
def paired_bootstrap(base: Sequence[Cols], model: Sequence[Cols], aggregate: Aggregate, *,
                     resamples: int = DEFAULT_RESAMPLES, seed: int = 0, level: float = DEFAULT_LEVEL,
                     cache: CountsCache | None = None) -> PairedResult:
    """Bootstrap ``mean_seeds(aggregate(model)) - mean_seeds(aggregate(base))`` over shared samples.

    ``base`` and ``model`` are lists (one entry per seed; the two lists may differ in length) of column
    dicts whose arrays all have the same length ``n`` and are aligned on the same sample ids. ``cache``
    lets calls with the same (n, resamples, seed) share one draw.
    """
    if not base or not model:
        raise ValueError("each side needs at least one seed")
    n = _common_len([*base, *model])
    if n == 0:
        return PairedResult(math.nan, math.nan, math.nan, None, None, None, None, 0, 0)
    b_full = float(np.mean([aggregate(c, None)[0] for c in base]))
    m_full = float(np.mean([aggregate(c, None)[0] for c in model]))
    delta = m_full - b_full
    if resamples < 1 or n < 2:
        return PairedResult(b_full, m_full, delta, None, None, None, None, n, 0)
    parts = []
    for w in (cache.get(n, resamples, seed) if cache is not None else resample_counts(n, resamples, seed)):
        mb = np.mean([aggregate(c, w) for c in base], axis=0)
        mm = np.mean([aggregate(c, w) for c in model], axis=0)
        parts.append(mm - mb)
    deltas = np.concatenate(parts)
    ok = deltas[np.isfinite(deltas)]
    if ok.size == 0:
        return PairedResult(b_full, m_full, delta, None, None, None, None, n, resamples)
    alpha = 1.0 - level
    lo, hi = np.quantile(ok, [alpha / 2, 1 - alpha / 2])
    se = float(ok.std(ddof=1)) if ok.size > 1 else None
    return PairedResult(b_full, m_full, delta, float(lo), float(hi), two_sided_p(ok), se, n, int(ok.size))


def two_sided_p(deltas: np.ndarray) -> float:
    """Percentile-bootstrap two-sided p-value for H0: delta = 0 (with the +1 correction)."""
    b = deltas.size
    le = int((deltas <= 0).sum())
    ge = int((deltas >= 0).sum())
    return float(min(1.0, 2.0 * (min(le, ge) + 1) / (b + 1)))


def _common_len(sides: Sequence[Cols]) -> int:
    lens = {int(np.asarray(v).shape[0]) for c in sides for v in c.values()}
    if len(lens) > 1:
        raise ValueError(f"paired columns differ in length: {sorted(lens)}")
    return lens.pop() if lens else 0


__all__ = ["PairedResult", "paired_bootstrap", "aggregate_fn", "two_sided_p", "resample_counts", "CountsCache",
           "DEFAULT_RESAMPLES", "DEFAULT_LEVEL"]

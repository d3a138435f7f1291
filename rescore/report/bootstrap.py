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
from collections.abc import Callable, Mapping, Sequence
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


# -- aggregates over a resample --------------------------------------------------------------------------
# Vectorised versions of the scorer's aggregators: ``f(cols, idx) -> one value per resample row of idx``.
# ``idx`` is (m, n) row indices; idx=None means the full sample (one value).
def _take_sum(x: np.ndarray, idx: np.ndarray | None) -> np.ndarray:
    return np.asarray([x.sum()]) if idx is None else x[idx].sum(axis=1)


def _mean(cols: Cols, idx: np.ndarray | None) -> np.ndarray:
    v = cols["value"]
    return _take_sum(v, idx) / v.size


def _ratio(transform: Callable[[np.ndarray], np.ndarray]) -> Callable[[Cols, np.ndarray | None], np.ndarray]:
    def f(cols: Cols, idx: np.ndarray | None) -> np.ndarray:
        a, b = _take_sum(cols["num"], idx), _take_sum(cols["den"], idx)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return transform(a / b)

    return f


VECTOR_AGGREGATORS: dict[str, tuple[tuple[str, ...], Callable[[Cols, np.ndarray | None], np.ndarray]]] = {
    "mean": (("value",), _mean),
    "bootstrap": (("value",), _mean),  # the scorer's bootstrap aggregator's value is the plain mean
    "ratio": (("num", "den"), _ratio(lambda r: r)),
    "perplexity": (("num", "den"), _ratio(lambda r: np.exp(-r))),
    "bits_per_byte": (("num", "den"), _ratio(lambda r: -r / math.log(2))),
}


def aggregate_fn(aggregator: str, agg_params: Mapping[str, Any] | None = None
                 ) -> tuple[tuple[str, ...], Callable[[Cols, np.ndarray | None], np.ndarray]]:
    """(columns needed, vectorised aggregate) for a scorer aggregator name.

    Known aggregators are vectorised; any other registered one (ECE, a plugin's) is called once per
    resample through the scorer's registry, which is slower but gives the same numbers."""
    if aggregator in VECTOR_AGGREGATORS:
        return VECTOR_AGGREGATORS[aggregator]
    from rescore.score.registry import load_builtin
    from rescore.score.spec import aggregators

    load_builtin()
    agg = aggregators.get(aggregator)
    params = dict(agg_params or {})

    def f(cols: Cols, idx: np.ndarray | None) -> np.ndarray:
        rows = [None] if idx is None else list(idx)
        out = np.empty(len(rows))
        for i, r in enumerate(rows):
            sub = cols if r is None else {k: v[r] for k, v in cols.items()}
            val = agg(sub, params).value
            out[i] = np.nan if val is None else val
        return out

    return tuple(agg.needs), f


# -- the paired bootstrap ----------------------------------------------------------------------------------
def paired_bootstrap(base: Sequence[Cols], model: Sequence[Cols], aggregate: Callable[[Cols, np.ndarray | None], np.ndarray],
                     *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0, level: float = DEFAULT_LEVEL) -> PairedResult:
    """Bootstrap ``mean_seeds(aggregate(model)) - mean_seeds(aggregate(base))`` over shared samples.

    ``base`` and ``model`` are lists (one entry per seed; the two lists may differ in length) of column
    dicts whose arrays all have the same length ``n`` and are aligned on the same sample ids.
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
    rng = np.random.default_rng(seed)
    deltas = np.empty(resamples)
    chunk = max(1, min(resamples, _CHUNK_ELEMS // n))
    for start in range(0, resamples, chunk):
        m = min(chunk, resamples - start)
        idx = rng.integers(0, n, size=(m, n))
        mb = np.mean([aggregate(c, idx) for c in base], axis=0)
        mm = np.mean([aggregate(c, idx) for c in model], axis=0)
        deltas[start:start + m] = mm - mb
    ok = deltas[np.isfinite(deltas)]
    if ok.size == 0:
        return PairedResult(b_full, m_full, delta, None, None, None, None, n, resamples)
    alpha = 1.0 - level
    lo, hi = np.quantile(ok, [alpha / 2, 1 - alpha / 2])
    p = two_sided_p(ok)
    se = float(ok.std(ddof=1)) if ok.size > 1 else None
    return PairedResult(b_full, m_full, delta, float(lo), float(hi), p, se, n, int(ok.size))


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


__all__ = ["PairedResult", "paired_bootstrap", "aggregate_fn", "two_sided_p", "DEFAULT_RESAMPLES", "DEFAULT_LEVEL"]

"""Aggregators (mean with analytic stderr, corpus-level ratios, ECE, bootstrap) and seed aggregates.

Every mergeable aggregator keeps sufficient statistics, so the aggregate of shards equals the aggregate
of the whole and a results table can be rebuilt without rereading per-row values.

Standard errors: ``mean`` uses lm-evaluation-harness's ``mean_stderr`` (sample std, ddof=1, over sqrt n);
ratio metrics (perplexities, bits per byte, instruction-level rates) use the delta method for a ratio
estimator sum(num)/sum(den); ECE uses the delta method with the bin signs held fixed; ``bootstrap``
resamples rows (seeded; rows are sorted first so the result does not depend on row order).
Confidence intervals are value +/- 1.96 stderr (cut at 0 for means of values that are never negative,
such as Brier scores, and for ECE), except for means of 0/1 values (accuracies, pass rates), which get
the Wilson score interval (it stays within [0, 1] and keeps its coverage near 0 and 1), and aggregators
that bootstrap percentiles.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rescore.score.spec import Agg, Aggregator, Cols, Stats, aggregators

Z95 = 1.959963984540054


def _ci(value: float | None, se: float | None) -> tuple[float | None, float | None]:
    if value is None or se is None or not math.isfinite(value) or not math.isfinite(se):
        return None, None
    return value - Z95 * se, value + Z95 * se


def _f(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if not math.isnan(x) else None


# -- mean ---------------------------------------------------------------------------------------------
def _mean_stats(cols: Cols, p: Mapping[str, Any]) -> Stats:
    v = np.asarray(cols["value"], dtype=np.float64)
    n = int(v.size)
    if n == 0:
        return {"n": 0, "mean": 0.0, "m2": 0.0}
    m = float(v.mean())
    return {"n": n, "mean": m, "m2": float(((v - m) ** 2).sum()), "binary": bool(((v == 0) | (v == 1)).all()),
            "nonneg": bool((v >= 0).all())}


def _mean_merge(a: Stats, b: Stats) -> Stats:
    # Chan et al.'s parallel update: exact merge of mean and sum of squared deviations.
    na, nb = a["n"], b["n"]
    if na == 0:
        return dict(b)
    if nb == 0:
        return dict(a)
    n = na + nb
    d = b["mean"] - a["mean"]
    return {"n": n, "mean": a["mean"] + d * nb / n, "m2": a["m2"] + b["m2"] + d * d * na * nb / n,
            "binary": bool(a.get("binary")) and bool(b.get("binary")),
            "nonneg": bool(a.get("nonneg")) and bool(b.get("nonneg"))}


def wilson(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``p`` observed over ``n`` trials."""
    z2n = z * z / n
    center = (p + z2n / 2) / (1 + z2n)
    half = z * math.sqrt(max(p * (1 - p), 0.0) / n + z2n / (4 * n)) / (1 + z2n)
    return min(max(center - half, 0.0), p), max(min(center + half, 1.0), p)  # exact at p = 0 and p = 1


def _mean_finish(s: Stats, p: Mapping[str, Any]) -> Agg:
    n = s["n"]
    if n == 0:
        return Agg(None, None, 0)
    value = s["mean"]
    se = math.sqrt(max(s["m2"], 0.0) / (n - 1)) / math.sqrt(n) if n > 1 else None
    lo, hi = wilson(value, n) if s.get("binary") and n > 1 else _ci(value, se)
    if s.get("nonneg") and lo is not None and lo < 0:  # a mean of values that are never negative (Brier)
        lo = 0.0
    return Agg(value, se, n, lo, hi)


aggregators.register("mean", Aggregator(
    "mean", "mean of per-row values; stderr = sample std (ddof=1) / sqrt(n), as lm-eval's mean_stderr; "
    "95% CI: Wilson score interval for 0/1 values, else value +/- 1.96 stderr",
    stats=_mean_stats, merge=_mean_merge, finish=_mean_finish))


# -- sum (counts) -------------------------------------------------------------------------------------
def _sum_stats(cols: Cols, p: Mapping[str, Any]) -> Stats:
    v = np.asarray(cols["value"], dtype=np.float64)
    return {"n": int(v.size), "s": float(v.sum())}


def _sum_merge(a: Stats, b: Stats) -> Stats:
    return {"n": a["n"] + b["n"], "s": a["s"] + b["s"]}


aggregators.register("sum", Aggregator(
    "sum", "sum of per-row values (counts such as tokens); no stderr",
    stats=_sum_stats, merge=_sum_merge, finish=lambda s, p: Agg(s["s"] if s["n"] else None, None, s["n"])))


# -- ratios: sum(num) / sum(den) ----------------------------------------------------------------------
def _ratio_stats(cols: Cols, p: Mapping[str, Any]) -> Stats:
    a = np.asarray(cols["num"], dtype=np.float64)
    b = np.asarray(cols["den"], dtype=np.float64)
    return {"n": int(a.size), "a": float(a.sum()), "b": float(b.sum()), "aa": float((a * a).sum()),
            "bb": float((b * b).sum()), "ab": float((a * b).sum())}


def _ratio_merge(x: Stats, y: Stats) -> Stats:
    return {k: x[k] + y[k] for k in x}


def _ratio_se(s: Stats) -> tuple[float | None, float | None]:
    """(R, SE(R)) for R = sum(a)/sum(b) by the delta method: SE = sqrt(sum (a_i - R b_i)^2 / (n (n-1))) / mean(b)."""
    n, b = s["n"], s["b"]
    if n == 0 or b == 0:
        return None, None
    r = s["a"] / b
    if n < 2:
        return r, None
    ss = s["aa"] - 2 * r * s["ab"] + r * r * s["bb"]
    se = math.sqrt(max(ss, 0.0) / (n * (n - 1))) / (b / n)
    return r, se


def _ratio_finish(transform: str):  # type: ignore[no-untyped-def]
    def finish(s: Stats, p: Mapping[str, Any]) -> Agg:
        r, se = _ratio_se(s)
        if r is None:
            return Agg(None, None, s["n"])
        if transform == "identity":
            v, e = r, se
        elif transform == "exp_neg":  # perplexity = exp(-sum logprob / sum units)
            v = math.exp(-r) if -r < 709 else math.inf
            e = v * se if se is not None and math.isfinite(v) else None
        elif transform == "bits":  # bits per unit = -sum logprob / sum units / ln 2
            v = -r / math.log(2)
            e = se / math.log(2) if se is not None else None
        else:  # pragma: no cover - registration bug
            raise ValueError(transform)
        lo, hi = _ci(v, e)
        return Agg(v, e, s["n"], lo, hi)

    return finish


for _name, _tr, _desc in (
    ("ratio", "identity", "sum(num) / sum(den) over rows (micro average); delta-method stderr"),
    ("perplexity", "exp_neg", "exp(-sum(num) / sum(den)): lm-eval's weighted_perplexity; delta-method stderr"),
    ("bits_per_byte", "bits", "-sum(num) / sum(den) / ln 2: lm-eval's bits_per_byte; delta-method stderr"),
):
    aggregators.register(_name, Aggregator(_name, _desc, stats=_ratio_stats, merge=_ratio_merge,
                                           finish=_ratio_finish(_tr), needs=("num", "den")))


# -- expected calibration error -----------------------------------------------------------------------
def _ece_stats(cols: Cols, p: Mapping[str, Any]) -> Stats:
    bins = int(p.get("n_bins", 10))
    conf = np.asarray(cols["conf"], dtype=np.float64)
    d = np.asarray(cols["correct"], dtype=np.float64) - conf
    idx = np.clip((conf * bins).astype(np.int64), 0, bins - 1)
    return {"n": int(conf.size), "cnt": np.bincount(idx, minlength=bins).astype(np.float64),
            "d": np.bincount(idx, weights=d, minlength=bins), "dd": np.bincount(idx, weights=d * d, minlength=bins)}


def _ece_merge(a: Stats, b: Stats) -> Stats:
    return {"n": a["n"] + b["n"], "cnt": a["cnt"] + b["cnt"], "d": a["d"] + b["d"], "dd": a["dd"] + b["dd"]}


def _ece_finish(s: Stats, p: Mapping[str, Any]) -> Agg:
    n = s["n"]
    if n == 0:
        return Agg(None, None, 0)
    d = np.asarray(s["d"])
    value = float(np.abs(d).sum() / n)
    se = None
    if n > 1:
        # ECE = mean_i w_i with w_i = sign(D_bin(i)) * d_i: its sample variance from the bin sums
        sw, sww = float(np.abs(d).sum()), float(np.asarray(s["dd"]).sum())
        se = math.sqrt(max(sww - sw * sw / n, 0.0) / (n - 1)) / math.sqrt(n)
    lo, hi = _ci(value, se)
    lo = max(lo, 0.0) if lo is not None else None  # an ECE lies in [0, 1]: so does its interval
    hi = min(hi, 1.0) if hi is not None else None
    return Agg(value, se, n, lo, hi)


aggregators.register("ece", Aggregator(
    "ece", "expected calibration error over equal-width confidence bins (param n_bins, default 10); "
           "delta-method stderr", stats=_ece_stats, merge=_ece_merge, finish=_ece_finish, needs=("conf", "correct")))


def _ece_bins_stats(cols: Cols, p: Mapping[str, Any]) -> Stats:
    bins = int(p.get("n_bins", 10))
    return {"n": float(np.asarray(cols["n"], dtype=np.float64).sum()),
            "d": np.asarray([np.asarray(cols[f"d{b}"], dtype=np.float64).sum() for b in range(bins)])}


def _ece_bins_finish(s: Stats, p: Mapping[str, Any]) -> Agg:
    n = s["n"]
    return Agg(float(np.abs(np.asarray(s["d"])).sum() / n) if n else None, None, int(n))


aggregators.register("ece_bins", Aggregator(
    "ece_bins", "expected calibration error over the tokens of all rows, from each row's count ``n`` and per-bin "
                "sums ``d0``..``d9`` of (hit - confidence): sum_b |sum d_b| / sum n", stats=_ece_bins_stats,
    merge=lambda a, b: {"n": a["n"] + b["n"], "d": a["d"] + b["d"]}, finish=_ece_bins_finish,
    needs=("n", *(f"d{b}" for b in range(10)))))


# -- bootstrap ----------------------------------------------------------------------------------------
def bootstrap_mean(cols: Cols, p: Mapping[str, Any]) -> Agg:
    """Mean with a percentile bootstrap CI and the bootstrap stderr (std of resampled means, ddof=1).

    Params: ``iters`` (default 1000), ``seed`` (default 1234), ``level`` (default 0.95). Values are
    sorted before resampling so the result does not depend on row order.
    """
    v = np.sort(np.asarray(cols["value"], dtype=np.float64))
    n = int(v.size)
    if n == 0:
        return Agg(None, None, 0)
    iters = int(p.get("iters", 1000))
    rng = np.random.default_rng(int(p.get("seed", 1234)))
    means = np.empty(iters)
    chunk = max(1, min(iters, 20_000_000 // max(n, 1)))
    for start in range(0, iters, chunk):
        m = min(chunk, iters - start)
        idx = rng.integers(0, n, size=(m, n))
        means[start : start + m] = v[idx].mean(axis=1)
    level = float(p.get("level", 0.95))
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    se = float(means.std(ddof=1)) if iters > 1 else None
    return Agg(float(v.mean()), se, n, float(lo), float(hi))


aggregators.register("bootstrap", Aggregator(
    "bootstrap", "mean with bootstrap stderr and percentile CI (params iters, seed, level); not mergeable",
    direct=bootstrap_mean))


# -- seeds ---------------------------------------------------------------------------------------------
def seed_aggregate(values: Sequence[float | None]) -> dict[str, Any]:
    """Aggregate one metric across seeds: mean, std (ddof=1), stderr = std/sqrt(n_seeds), min, max, n_seeds.

    Seeds whose value is missing are left out (and not counted in ``n_seeds``).
    """
    v = np.array([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
    k = int(v.size)
    if k == 0:
        return {"mean": None, "std": None, "stderr": None, "min": None, "max": None, "n_seeds": 0}
    std = float(v.std(ddof=1)) if k > 1 else None
    return {"mean": float(v.mean()), "std": std, "stderr": std / math.sqrt(k) if std is not None else None,
            "min": float(v.min()), "max": float(v.max()), "n_seeds": k}


def get(name: str) -> Aggregator:
    return aggregators.get(name)


__all__ = ["Agg", "Aggregator", "aggregators", "bootstrap_mean", "seed_aggregate", "get", "_f"]

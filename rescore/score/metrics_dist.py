"""Metrics of the stored next-token distributions (:mod:`rescore.artifacts.tensors`), numpy only.

Per unit, over its stored positions:

- ``dist_entropy``: the entropy (nats) of the next-token distribution. ``full``: exact over the whole
  vocabulary; ``topk``: of the K head tokens plus the tail as one outcome (a lower bound).
- ``tail_mass``: the probability outside the top K (``topk``: stored; ``full``: outside its K largest, K=64).
- ``dist_ece``: expected calibration error over all stored positions: the top-1 token's probability as the
  confidence, "the top-1 token is the scored one" as the outcome, equal-width bins.

Between two units of the same task data and tokenizer (:func:`kl_pair`): ``kl`` = KL(baseline ‖ checkpoint)
and ``kl_reverse`` = KL(checkpoint ‖ baseline) per position, in nats, with per-row sums and counts for a
token-level mean and its paired bootstrap. ``full``: exact (up to the stored precision). ``topk``: the KL of
the two distributions coarse-grained to the tokens in both top-K sets plus one outcome for everything else;
by the data-processing inequality it is a lower bound, exact when the tails are proportional, and it misses
at most the tail's own term ``P(rest) * KL(P|rest ‖ Q|rest)``. A unit's KL to itself is exactly 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from rescore.artifacts.tensors import DistTensors, read_dist
from rescore.errors import ConfigError
from rescore.score.columns import memo
from rescore.score.spec import Metric, UnitInfo, register_metric

TAIL_K = 64
FULL_CHUNK_ENTRIES = 1 << 22  # logprobs per block of a full distribution (its float64 temporaries: ~100 MB)


def _logsumexp(a: np.ndarray, axis: int = -1) -> np.ndarray:
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return (np.log(np.sum(np.exp(a - m), axis=axis, keepdims=True)) + m).squeeze(axis)


def _normalised(lp: np.ndarray) -> np.ndarray:
    """float64 log-softmax rows, renormalised (the stored float16 values sum to 1 only up to rounding)."""
    lp = np.asarray(lp, np.float64)
    return lp - _logsumexp(lp)[:, None]


def _per_full_chunk(d: DistTensors, fn: Any) -> Any:
    """``fn`` of the renormalised float64 logprobs of each block of positions (:meth:`DistTensors.full_chunks`,
    a bounded amount of memory whatever the file's size), concatenated; ``fn`` returns an array or a tuple."""
    parts = [fn(_normalised(lp)) for _, _, lp in d.full_chunks(FULL_CHUNK_ENTRIES)]
    if not parts:
        return fn(np.zeros((0, max(d.vocab, 1))))
    if isinstance(parts[0], tuple):
        return tuple(np.concatenate(x) for x in zip(*parts, strict=True))
    return np.concatenate(parts)


def _head_tail(d: DistTensors) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """topk: (ids, head logprobs, tail logmass), float64, renormalised over head + tail."""
    head = np.asarray(d.topk_logprobs, np.float64)
    tail = np.asarray(d.tail_logmass, np.float64)[:, None]
    z = _logsumexp(np.concatenate([head, tail], axis=1))[:, None]
    return np.asarray(d.topk_ids), head - z, (tail - z)[:, 0]


def entropy(d: DistTensors) -> np.ndarray:
    """Per position, in nats."""
    if d.format == "full":
        return _per_full_chunk(d, lambda lp: -(np.exp(lp) * np.where(np.isfinite(lp), lp, 0.0)).sum(1))
    _, head, tail = _head_tail(d)
    both = np.concatenate([head, tail[:, None]], axis=1)
    return -(np.exp(both) * np.where(np.isfinite(both), both, 0.0)).sum(1)


def tail_mass(d: DistTensors, k: int = TAIL_K) -> np.ndarray:
    """Per position: the probability outside the top K."""
    if d.format == "topk":
        return np.exp(_head_tail(d)[2])

    def tail(lp: np.ndarray) -> np.ndarray:
        p = np.exp(lp)
        kk = min(k, p.shape[1])
        top = np.partition(p, p.shape[1] - kk, axis=1)[:, p.shape[1] - kk :]
        return np.clip(1.0 - top.sum(1), 0.0, 1.0)

    return _per_full_chunk(d, tail)


def top1(d: DistTensors) -> tuple[np.ndarray, np.ndarray]:
    """Per position: the top-1 token and its probability."""
    if d.format == "full":
        def best(lp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            i = lp.argmax(1) if lp.shape[0] else np.zeros(0, np.int64)
            return i, np.exp(lp[np.arange(len(i)), i])

        return _per_full_chunk(d, best)  # type: ignore[no-any-return]
    ids, head, _ = _head_tail(d)
    return ids[:, 0], np.exp(head[:, 0])


def ece(d: DistTensors, bins: int = 10) -> float:
    """Expected calibration error of the top-1 token over all stored positions."""
    tok, conf = top1(d)
    hit = (tok == d.targets).astype(np.float64)
    if not len(conf):
        return float("nan")
    b = np.minimum((conf * bins).astype(np.int64), bins - 1)
    err = 0.0
    for i in range(bins):
        m = b == i
        if m.any():
            err += m.sum() * abs(hit[m].mean() - conf[m].mean())
    return float(err / len(conf))


def per_row(d: DistTensors, per_position: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row (in ``d.sample_ids`` order): the sum of a per-position value and the number of positions."""
    return _row_sums(per_position, d.offsets), np.diff(d.offsets).astype(np.float64)


def _row_sums(v: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per row, the sum of ``v[offsets[r]:offsets[r+1]]`` (0 for a row without positions, wherever it is: a last
    row without positions starts at len(v), which reduceat refuses)."""
    out = np.zeros(len(offsets) - 1)
    ne = np.diff(offsets) > 0
    if ne.any():
        out[ne] = np.add.reduceat(v, offsets[:-1][ne])
    return out


def unit_metrics(d: DistTensors, bins: int = 10) -> dict[str, float]:
    """Token-level means over the unit's stored positions."""
    n = max(len(d.positions), 1)
    return {"dist_entropy": float(entropy(d).sum() / n), "dist_tail_mass": float(tail_mass(d).sum() / n),
            "dist_ece": ece(d, bins), "positions": float(len(d.positions))}


ECE_BINS = 10


def row_stats(d: DistTensors) -> dict[str, dict[str, np.ndarray]]:
    """Per row (``d.sample_ids`` order), the sufficient statistics of each per-unit metric: ``num``/``den`` for
    the token-level means of ``dist_entropy`` and ``dist_tail_mass``; for ``dist_ece`` the positions ``n`` and,
    per confidence bin b, ``d{b}`` = sum(hit - confidence), so that ECE = sum_b |sum d_b| / sum n."""
    counts = np.diff(d.offsets).astype(np.float64)
    tok, conf = top1(d)
    diff = (tok == d.targets).astype(np.float64) - conf
    b = np.minimum((conf * ECE_BINS).astype(np.int64), ECE_BINS - 1)
    ece_cols = {"n": counts, **{f"d{i}": _row_sums(np.where(b == i, diff, 0.0), d.offsets) for i in range(ECE_BINS)}}
    return {"dist_entropy": {"num": _row_sums(entropy(d), d.offsets), "den": counts},
            "dist_tail_mass": {"num": _row_sums(tail_mass(d), d.offsets), "den": counts}, "dist_ece": ece_cols}


def ece_from_rows(cols: dict[str, np.ndarray], w: np.ndarray | None = None) -> np.ndarray:
    """ECE from :func:`row_stats` columns, for each row weighting in ``w`` [B, rows] (None: all rows once)."""
    def ws(x: np.ndarray) -> np.ndarray:
        return np.asarray([x.sum()]) if w is None else w @ x

    n = ws(cols["n"])
    tot = sum(np.abs(ws(cols[f"d{i}"])) for i in range(ECE_BINS))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(tot / n, dtype=np.float64)


# -- per-unit metrics in the results table (rows of units that store distributions; others lack dist_positions)
def _unit_stats(table: pa.Table, unit: UnitInfo) -> dict[str, dict[str, np.ndarray]] | None:
    """:func:`row_stats` in the order of ``table``'s rows; None for a unit without stored distributions."""
    if unit.unit is None or not isinstance(unit.manifest.get("dist"), dict):
        return None

    def compute() -> dict[str, dict[str, np.ndarray]]:
        d = read_dist(unit.unit)
        at = {s: i for i, s in enumerate(d.sample_ids)}
        order = np.asarray([at[s] for s in table.column("sample_id").to_pylist()], dtype=np.int64)
        return {m: {k: v[order] for k, v in cols.items()} for m, cols in row_stats(d).items()}

    return memo(table, "dist_row_stats", compute)


def _mean_of(table: pa.Table, unit: UnitInfo, name: str) -> dict[str, Any]:
    stats = _unit_stats(table, unit)
    if stats is None:
        nan = np.full(table.num_rows, np.nan)
        return {"value": nan, "num": nan, "den": nan}
    num, den = stats[name]["num"], stats[name]["den"]
    with np.errstate(divide="ignore", invalid="ignore"):
        value = np.where(den > 0, num / den, np.nan)
    return {"value": value, "num": np.where(den > 0, num, np.nan), "den": np.where(den > 0, den, np.nan)}


def dist_entropy(table: pa.Table, unit: UnitInfo) -> dict[str, Any]:
    return _mean_of(table, unit, "dist_entropy")


def dist_tail_mass(table: pa.Table, unit: UnitInfo) -> dict[str, Any]:
    return _mean_of(table, unit, "dist_tail_mass")


def dist_ece(table: pa.Table, unit: UnitInfo) -> dict[str, Any]:
    stats = _unit_stats(table, unit)
    if stats is None:
        nan = np.full(table.num_rows, np.nan)
        return {"value": nan, "n": nan, **{f"d{b}": nan for b in range(ECE_BINS)}}
    cols = stats["dist_ece"]
    n = cols["n"]
    d = [cols[f"d{b}"] for b in range(ECE_BINS)]
    with np.errstate(divide="ignore", invalid="ignore"):
        value = np.where(n > 0, sum(np.abs(x) for x in d) / n, np.nan)
    return {"value": value, "n": n, **{f"d{b}": x for b, x in enumerate(d)}}


for _fn, _agg, _hib, _desc in (
    (dist_entropy, "ratio", False, "entropy (nats) of the stored next-token distributions, token-level mean "
                                   "(full: exact; topk: the head plus the tail as one outcome, a lower bound)"),
    (dist_tail_mass, "ratio", False, "probability outside the top K (topk: stored; full: K=64), token-level mean"),
    (dist_ece, "ece_bins", False, "expected calibration error of the top-1 token over all stored positions "
                                  f"({ECE_BINS} equal-width bins)"),
):
    register_metric(Metric(name=_fn.__name__, fn=_fn, columns=("dist_positions",), request_type="rolling",
                           also_request_types=("loglikelihood",), higher_is_better=_hib, aggregator=_agg, version=1,
                           description=_desc, needs_unit=True))


@dataclass
class KLPair:
    """Per position KL(baseline ‖ checkpoint) (``forward``) and KL(checkpoint ‖ baseline) (``reverse``)."""

    sample_ids: list[str]
    offsets: np.ndarray
    forward: np.ndarray
    reverse: np.ndarray

    def rows(self, which: str = "forward") -> dict[str, np.ndarray]:
        """Per row: ``num`` (summed KL) and ``den`` (positions), for a token-level mean and its bootstrap."""
        v = self.forward if which == "forward" else self.reverse
        return {"num": _row_sums(v, self.offsets), "den": np.diff(self.offsets).astype(np.float64)}

    def mean(self, which: str = "forward") -> float:
        v = self.forward if which == "forward" else self.reverse
        return float(v.mean()) if len(v) else float("nan")


def check_pair(base: DistTensors, ckpt: DistTensors) -> None:
    """Two units' distributions are comparable: same rows, positions, tokens, vocabulary and format."""
    if base.vocab != ckpt.vocab:
        raise ConfigError(f"vocabulary mismatch: unit {base.run_id[:12]} stores {base.vocab} tokens, unit "
                          f"{ckpt.run_id[:12]} {ckpt.vocab}", hint="KL compares checkpoints of one tokenizer")
    if base.format != ckpt.format:
        raise ConfigError(f"units {base.run_id[:12]} and {ckpt.run_id[:12]} store distributions as {base.format} "
                          f"and {ckpt.format}", hint="generate both with the same dist format")
    if (base.sample_ids != ckpt.sample_ids or not np.array_equal(base.offsets, ckpt.offsets)
            or not np.array_equal(base.positions, ckpt.positions) or not np.array_equal(base.targets, ckpt.targets)):
        raise ConfigError(f"units {base.run_id[:12]} and {ckpt.run_id[:12]} store distributions at different "
                          "positions or tokens", hint="compare units of the same task data, tokenizer and dist "
                                                      "positions")
    if base.format == "topk" and base.topk_ids.shape[1] != ckpt.topk_ids.shape[1]:  # type: ignore[union-attr]
        raise ConfigError("the two units store different top-k sizes", hint="generate both with the same topk")


def kl_pair(base: DistTensors, ckpt: DistTensors) -> KLPair:
    check_pair(base, ckpt)
    if base.format == "full":  # a block of positions of both units at a time
        fwd_parts, rev_parts = [np.zeros(0)], [np.zeros(0)]
        for (_, _, p), (_, _, q) in zip(base.full_chunks(FULL_CHUNK_ENTRIES // 2),
                                        ckpt.full_chunks(FULL_CHUNK_ENTRIES // 2), strict=True):
            lp, lq = _normalised(p), _normalised(q)
            fwd_parts.append(_kl_rows(lp, lq))
            rev_parts.append(_kl_rows(lq, lp))
        fwd, rev = np.concatenate(fwd_parts), np.concatenate(rev_parts)
    else:
        fwd, rev = _kl_topk(base, ckpt)
    return KLPair(base.sample_ids, base.offsets, fwd, rev)


def _kl_rows(lp: np.ndarray, lq: np.ndarray) -> np.ndarray:
    p = np.exp(lp)
    with np.errstate(invalid="ignore"):
        terms = np.where(p > 0, p * (lp - lq), 0.0)
    return np.maximum(terms.sum(1), 0.0)


def _kl_topk(base: DistTensors, ckpt: DistTensors) -> tuple[np.ndarray, np.ndarray]:
    """Per position, both directions of the KL over the tokens in both top-K sets plus one outcome for the rest
    (its log mass: log(1 - the shared tokens' probability); no shared token: the KL is 0). All positions at
    once: a token of position i is the key i * V + id, so one intersection finds every position's shared
    tokens."""
    ib, hb, _ = _head_tail(base)
    ic, hc, _ = _head_tail(ckpt)
    n = len(ib)
    v = np.int64(max(base.vocab, int(ib.max(initial=0)) + 1, int(ic.max(initial=0)) + 1))
    rows = np.arange(n, dtype=np.int64)[:, None] * v
    _, xb, xc = np.intersect1d((rows + ib).ravel(), (rows + ic).ravel(), assume_unique=True, return_indices=True)
    row = xb // ib.shape[1] if ib.shape[1] else xb
    lp, lq = hb.ravel()[xb], hc.ravel()[xc]
    shared = np.bincount(row, minlength=n) > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        rest_p = np.where(shared, np.log(np.maximum(1.0 - np.bincount(row, np.exp(lp), minlength=n), 0.0)), 0.0)
        rest_q = np.where(shared, np.log(np.maximum(1.0 - np.bincount(row, np.exp(lq), minlength=n), 0.0)), 0.0)

        def kl(la: np.ndarray, lb: np.ndarray, ra: np.ndarray, rb: np.ndarray) -> np.ndarray:
            pa, pr = np.exp(la), np.exp(ra)
            head = np.bincount(row, np.where(pa > 0, pa * (la - lb), 0.0), minlength=n)
            return np.maximum(head + np.where(pr > 0, pr * (ra - rb), 0.0), 0.0)

        return kl(lp, lq, rest_p, rest_q), kl(lq, lp, rest_q, rest_p)


def summary(pair: KLPair) -> dict[str, Any]:
    return {"kl": pair.mean("forward"), "kl_reverse": pair.mean("reverse"), "positions": len(pair.forward)}


__all__ = ["ECE_BINS", "KLPair", "check_pair", "ece", "ece_from_rows", "entropy", "kl_pair", "per_row", "row_stats",
           "summary", "tail_mass", "top1", "unit_metrics"]

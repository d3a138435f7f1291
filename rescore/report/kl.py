"""KL of a checkpoint's stored next-token distributions to its baseline's, as rows of ``rescore compare``.

``rescore compare --baseline BRIDGE -M kl`` (or ``-M 'kl*'``) adds, per task whose units store distributions
(a task's ``dist``), the token-level mean KL(baseline ‖ checkpoint) (``kl``) and KL(checkpoint ‖ baseline)
(``kl_reverse``) over the stored positions (:mod:`rescore.score.metrics_dist`), with the paired bootstrap of
``compare`` over samples: the baseline's side is its KL to itself (0), so the delta is the KL and its interval
the KL's. A checkpoint that keeps its perplexity but drifts from its bridge shows it here.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any

import numpy as np

from rescore.artifacts.store import Unit
from rescore.artifacts.tensors import DistTensors, read_dist
from rescore.core import content_hash
from rescore.report.bootstrap import CountsCache, aggregate_fn, paired_bootstrap
from rescore.score.metrics_dist import kl_pair

KL_METRICS = {"kl": "forward", "kl_reverse": "reverse"}


def wanted(metrics: Sequence[str] | None) -> list[str]:
    """The KL metrics that the ``-M`` patterns name (none without patterns: KL is asked for, not default)."""
    if not metrics:
        return []
    return [m for m in KL_METRICS if any(fnmatch.fnmatchcase(m, p) for p in metrics)]


_cache: dict[str, DistTensors] = {}


def _dist(u: Unit) -> DistTensors:
    if u.run_id not in _cache:
        _cache[u.run_id] = read_dist(u)
    return _cache[u.run_id]


def kl_rows(make_row: Any, task: str, b_units: dict[str, Unit], c_units: dict[str, Unit], names: list[str], *,
            model: str, baseline: str, resamples: int, level: float, seed: int,
            cache: CountsCache | None = None) -> list[Any]:
    """Rows (``make_row(metric)`` builds an empty one) for the KL metrics ``names`` of one task."""
    out = []
    shared = sorted(set(b_units) & set(c_units))
    has = [s for s in shared if "dist" in b_units[s].manifest and "dist" in c_units[s].manifest]
    pairs = [kl_pair(_dist(b_units[s]), _dist(c_units[s])) for s in has]
    _, agg = aggregate_fn("ratio")
    for name in names:
        row = make_row(name)
        if not c_units:
            row.status, row.reason = "missing", f"{model} has no {task} units"
        elif not pairs:
            row.status, row.reason = "missing", (f"no stored distributions on {task} for both {baseline} and {model} "
                                                 "(set the task's dist and generate them)")
        else:
            cols = [p.rows(KL_METRICS[name]) for p in pairs]
            base = [{"num": np.zeros_like(c["num"]), "den": c["den"]} for c in cols]
            rng_seed = int(content_hash({"seed": seed, "task": task, "model": model, "baseline": baseline,
                                         "kl": name}, 15), 16)
            res = paired_bootstrap(base, cols, agg, resamples=resamples, seed=rng_seed, level=level, cache=cache)
            row.base, row.value, row.delta = 0.0, float(res.value), float(res.delta)
            row.ci_low, row.ci_high, row.p_value, row.stderr, row.n = (res.ci_low, res.ci_high, res.p_value,
                                                                         res.stderr, res.n)
            row.seeds = ",".join(has)
            row.aggregator = "ratio"
        out.append(row)
    return out


__all__ = ["KL_METRICS", "kl_rows", "wanted"]

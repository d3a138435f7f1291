"""KL of a checkpoint's stored next-token distributions to its baseline's, as rows of ``rescore compare``.

``-M 'dist_*'`` compares the per-unit metrics of the stored distributions (``dist_entropy``,
``dist_tail_mass``, ``dist_ece``) of both sides in the same way.

``rescore compare --baseline BRIDGE -M kl`` (or ``-M 'kl*'``) adds, per task whose units store distributions
(a task's ``dist``), the token-level mean KL(baseline ‖ checkpoint) (``kl``) and KL(checkpoint ‖ baseline)
(``kl_reverse``) over the stored positions (:mod:`rescore.score.metrics_dist`), with the paired bootstrap of
``compare`` over samples: the baseline's side is its KL to itself (0), so the delta is the KL and its interval
the KL's. A checkpoint that keeps its perplexity but drifts from its bridge shows it here.
"""

from __future__ import annotations

import fnmatch
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from rescore.artifacts.store import Unit
from rescore.artifacts.tensors import DistTensors, read_dist
from rescore.core import content_hash
from rescore.report.bootstrap import CountsCache, aggregate_fn, paired_bootstrap
from rescore.score.metrics_dist import ece_from_rows, kl_pair, row_stats

KL_METRICS = {"kl": "forward", "kl_reverse": "reverse"}
# per-unit metrics of the stored distributions, compared side by side (rescore.score.metrics_dist.row_stats)
UNIT_METRICS = ("dist_entropy", "dist_tail_mass", "dist_ece")


def wanted(metrics: Sequence[str] | None) -> list[str]:
    """The metrics of stored distributions that the ``-M`` patterns name (none without patterns: they are
    asked for, not shown by default)."""
    if not metrics:
        return []
    return [m for m in (*KL_METRICS, *UNIT_METRICS) if any(fnmatch.fnmatchcase(m, p) for p in metrics)]


def _ece_agg(cols: Any, w: np.ndarray | None) -> np.ndarray:
    return ece_from_rows(cols, w)


_cache: OrderedDict[tuple[str, str], DistTensors] = OrderedDict()
CACHED_UNITS = 16  # the baseline's units stay while the checkpoints compared with them go through


def _dist(u: Unit) -> DistTensors:
    """A unit's distributions, kept for the next comparisons that read them (a few units: each may keep its file
    mapped); keyed by the file's hash too, so a unit regenerated under the same id is read again."""
    key = (str(u.path), str((u.manifest.get("dist") or {}).get("sha256")))
    if key in _cache:
        _cache.move_to_end(key)
    else:
        _cache[key] = read_dist(u)
        while len(_cache) > CACHED_UNITS:
            _cache.popitem(last=False)
    return _cache[key]


def kl_rows(make_row: Any, task: str, b_units: dict[str, Unit], c_units: dict[str, Unit], names: list[str], *,
            model: str, baseline: str, resamples: int, level: float, seed: int,
            cache: CountsCache | None = None) -> list[Any]:
    """Rows (``make_row(metric)`` builds an empty one) for the KL metrics ``names`` of one task."""
    out = []
    shared = sorted(set(b_units) & set(c_units))
    has = [s for s in shared if "dist" in b_units[s].manifest and "dist" in c_units[s].manifest]
    # same rows, positions, tokens and vocabulary on both sides (a one-line error otherwise)
    pairs = [kl_pair(_dist(b_units[s]), _dist(c_units[s])) for s in has]
    if not any("dist" in u.manifest for u in (*b_units.values(), *c_units.values())):
        return []  # a task that stores no distributions has no such rows (a glob like -M '*' asks for none)
    _, agg = aggregate_fn("ratio")
    for name in names:
        row = make_row(name)
        if not c_units:
            row.status, row.reason = "missing", f"{model} has no {task} units"
        elif not has:
            row.status, row.reason = "missing", (f"no stored distributions on {task} for both {baseline} and {model} "
                                                 "(set the task's dist and generate them)")
        elif name in UNIT_METRICS:
            base = [row_stats(_dist(b_units[s]))[name] for s in has]
            cols = [row_stats(_dist(c_units[s]))[name] for s in has]
            rng_seed = int(content_hash({"seed": seed, "task": task, "model": model, "baseline": baseline,
                                         "dist": name}, 15), 16)
            res = paired_bootstrap(base, cols, _ece_agg if name == "dist_ece" else agg, resamples=resamples,
                                   seed=rng_seed, level=level, cache=cache)
            row.base, row.value, row.delta = float(res.base), float(res.value), float(res.delta)
            row.ci_low, row.ci_high, row.p_value, row.stderr, row.n = (res.ci_low, res.ci_high, res.p_value,
                                                                         res.stderr, res.n)
            if row.base:
                row.rel_delta = row.delta / abs(row.base)
            row.seeds = ",".join(has)
            row.aggregator = "ece" if name == "dist_ece" else "ratio"
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


def section_kl(d: Any, bridges: dict[str | None, Any]) -> str:
    """The report's "KL to the bridge vs step" section (``d``: :class:`rescore.report.html.ReportData`): per
    task whose units store distributions, one figure with a subplot per direction (KL(bridge ‖ checkpoint) and
    KL(checkpoint ‖ bridge)), each stepped checkpoint's mean over the stored positions against its step, in the
    style of the metric-vs-step figures. Empty when no unit stores distributions."""
    from html import escape

    from rescore.report.steps import NEED_STEPS, figure_html, task_subplots

    def units(c: Any, task: str) -> dict[str, Unit]:
        return {s: u for s, u in d.cat.units.get(c, {}).get(task, {}).items() if "dist" in u.manifest}

    def kl_of(task: str) -> Any:
        def value(c: Any, name: str) -> tuple[float, float | None, int] | None:
            br = bridges.get(c.stage)
            if br is None or not (b_units := units(br, task)) or not (c_units := units(c, task)):
                return None
            seeds = sorted(set(b_units) & set(c_units))
            vals = [kl_pair(_dist(b_units[s]), _dist(c_units[s])).mean(KL_METRICS[name]) for s in seeds]
            if not vals:
                return None
            return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else None, len(vals)

        return value

    titles = [("kl", "KL(bridge ‖ checkpoint) ↓"), ("kl_reverse", "KL(checkpoint ‖ bridge) ↓")]
    tasks = sorted({t for c in d.ckpts for t in d.cat.units.get(c, {}) if units(c, t)})
    out, single = [], []
    for task in tasks:
        subplots, steps = task_subplots(d, titles, kl_of(task), None)
        if len(steps) < 2:
            if subplots:
                single.append(escape(task))
            continue
        names = [m for m, t in titles if any(sp.title == t for sp in subplots)]
        out.append(figure_html("kl", task, names, subplots, f"{task}: KL to the bridge (nats/token)"))
    if not out and not single:
        return ""
    note = f'<p class="muted note-steps">Not plotted ({NEED_STEPS}): {", ".join(single)}.</p>' if single else ""
    return ('<h2 id="kl">KL to the bridge vs step</h2><p class="muted">Mean over the stored distributions\' positions '
            '(a task\'s <span class="mono">dist</span>) of the KL divergence between each checkpoint and its stage\'s '
            'bridge, in nats per token; a checkpoint whose perplexity stays flat while it drifts from its bridge '
            'shows here.</p>' + note + "\n".join(out))


__all__ = ["KL_METRICS", "UNIT_METRICS", "kl_rows", "section_kl", "wanted"]

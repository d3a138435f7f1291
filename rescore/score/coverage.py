"""Checks that the metrics a user brings (``--plugin`` files, ``rescore.metrics`` entry points) measure
something: a plugin metric that reads a column no unit has, or that yields no value on any row, is a bug in
the plugin, and ``score`` says so instead of finishing with nothing to show (and caches no empty result).

Built-in metrics are not checked here: one that applies to no row of a store (pass@8 on 2 candidates) is a
note, not an error.
"""

from __future__ import annotations

from collections.abc import Sequence

from rescore.artifacts.store import Store, Unit
from rescore.errors import ConfigError, CorruptArtifactError, close_names
from rescore.score.engine import ScoreError, is_current, scan_scores, scores_dir, unit_columns
from rescore.score.registry import plugin_of
from rescore.score.spec import Metric


def plugin_metrics(specs: Sequence[Metric]) -> list[Metric]:
    return [s for s in specs if plugin_of(s) is not None]


def _complete(store: Store, request_type: str) -> list[Unit]:
    return [u for u in store.units() if u.complete and u.request_type == request_type]


def check_plugin_columns(store: Store, specs: Sequence[Metric]) -> None:
    """ConfigError naming each plugin metric and the column(s) it reads that no complete unit of its
    request type has (a misspelt column), before anything is scored. Footers are read only until every
    column is found."""
    problems = []
    for rt in sorted({s.request_type for s in plugin_metrics(specs)}):
        mine = [s for s in plugin_metrics(specs) if s.request_type == rt]
        wanted = {c for s in mine for c in s.columns}
        seen: set[str] = set()
        units = _complete(store, rt)
        for u in units:
            if wanted <= seen:
                break
            try:
                seen.update(unit_columns(u))
            except CorruptArtifactError:
                continue  # scoring reports the damaged unit and scores the others
        if not units:
            continue
        for s in mine:
            lacking = [c for c in s.columns if c not in seen]
            for c in lacking:
                close = close_names(c, sorted(seen), n=1, cutoff=0.6)
                near = f", did you mean {close[0]!r}?" if close else ""
                problems.append(f"metric {s.name!r} (plugin {plugin_of(s)}) reads column {c!r}, which no "
                                f"{rt} unit has{near}")
    if problems:
        raise ConfigError("; ".join(problems), hint="fix the columns= of the metric (`rescore show RUN_ID --rows 1` "
                                                    "prints a unit's columns)")


def check_plugin_units(store: Store, specs: Sequence[Metric]) -> list[str]:
    """Before scoring: notes for plugin metrics whose request type no complete unit has (nothing to score,
    not the plugin's fault); ScoreError when that holds for every plugin metric (the command would do
    nothing)."""
    plugins = plugin_metrics(specs)
    idle = [s for s in plugins if not _complete(store, s.request_type)]
    if plugins and len(idle) == len(plugins):
        kinds = sorted({s.request_type for s in plugins})
        raise ScoreError(f"the plugin metrics ({', '.join(repr(s.name) for s in plugins)}) found nothing to score: "
                         f"{store.root} holds no complete {' or '.join(kinds)} unit",
                         hint="generate or import units of that request type first, or check --store")
    return [f"metric {s.name!r} scored nothing: {store.root} holds no complete {s.request_type} unit" for s in idle]


def discard_empty_plugin_scores(store: Store, specs: Sequence[Metric]) -> None:
    """After scoring: a plugin metric with no value on any row of the units of its request type (it returned
    only None or NaN) is a bug in the plugin. Its score files are removed, so no empty result stays cached as
    up to date (the fixed plugin is computed again, even without a new version), and ScoreError names it.
    The plugin runs once per unit, as scoring runs it: a metric may be costly or have side effects."""
    empty = []
    for s in plugin_metrics(specs):
        current = []
        for u in _complete(store, s.request_type):
            meta = scan_scores(store, u.run_id).get(s.file_name)
            if is_current(meta, s, u.manifest.get("rows_parquet_sha256")):
                current.append((u, meta))
        if not current or any(m is not None and m.get("applies") for _, m in current):
            continue
        for u, _ in current:
            (scores_dir(store, u.run_id) / s.file_name).unlink(missing_ok=True)
            scan_scores(store, u.run_id)  # drops the file from the unit's index
        empty.append(f"metric {s.name!r} (plugin {plugin_of(s)}) has no value on any row of the "
                     f"{len(current)} {s.request_type} unit(s) it scored")
    if empty:
        raise ScoreError("; ".join(empty), hint="it returned only None/NaN: check the columns it reads and what it "
                                                "computes from them (`rescore show RUN_ID --rows 1` prints a unit's rows)")

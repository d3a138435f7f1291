"""Filtering and formatting the results table (``rescore results``): table, CSV, JSON and markdown.

Markdown: one ``Task | Metric | Result | Error Range`` table per model (Result is ``value ± stderr``,
Error Range the 95% confidence interval), then a cross-model comparison table (rows task/metric, one
column per model, the best value of each row in bold according to the metric's ``higher_is_better``).

The output of ``rescore compare`` (markdown, CSV, JSON and its policy summary line) is rendered here too.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

if TYPE_CHECKING:
    from rescore.report.compare import CompareRow, Comparison

DISPLAY_COLUMNS = ("model", "step", "task", "subset", "metric", "seed", "value", "stderr", "n", "n_seeds", "precision")


def _match(value: Any, patterns: Sequence[str] | None) -> bool:
    if not patterns:
        return True
    s = "" if value is None else str(value)
    return any(fnmatch.fnmatchcase(s, p) for p in patterns)


def filter_results(table: pa.Table, *, model: Sequence[str] | None = None, task: Sequence[str] | None = None,
                   metric: Sequence[str] | None = None, seed: Sequence[str] | None = ("agg",),
                   subset: Sequence[str] | None = ("all",)) -> list[dict[str, Any]]:
    """Rows (dicts) whose columns match the glob patterns; ``None`` or ``["*"]`` keeps everything."""
    out = []
    for r in table.to_pylist():
        if (_match(r["model"], model) and _match(r["task"], task) and _match(r["metric"], metric)
                and _match(r["seed"], seed) and _match(r["subset"], subset)):
            out.append(r)
    return out


def check_filters(table: pa.Table, **patterns: Sequence[str] | None) -> None:
    """Every --model/--task/--metric pattern must match something in the results; a typo is an error
    with the closest names, not an empty table."""

    for column, pats in patterns.items():
        if not pats or column not in table.column_names:
            continue
        values = {str(v) for v in table.column(column).to_pylist() if v is not None}
        check_patterns(column, pats, values, what="results", listing=f"{column}s in the results")


def check_patterns(option: str, patterns: Sequence[str], values: Iterable[str], *, what: str, listing: str,
                   names: Callable[[], Iterable[str]] | None = None) -> None:
    """Every ``--OPTION`` glob must match one of ``values``; else a ConfigError with the closest of
    ``names()`` (default: the values), listed as ``listing``. ``names`` is only called on a miss."""
    from rescore.errors import ConfigError, close_names

    values = set(values)
    for p in patterns:
        if not any(fnmatch.fnmatchcase(v, p) for v in values):
            known = sorted(set(names()) | values if names is not None else values)
            close = close_names(p, known)
            hint = (f"{p!r} is known but has nothing here; " if p in known else "") + \
                (f"did you mean {', '.join(repr(c) for c in close)}? " if close else "") + \
                f"{listing}: {', '.join(known[:20]) or 'none'}{' ...' if len(known) > 20 else ''}"
            raise ConfigError(f"--{option} {p!r} matches no {what}", hint=hint)


def fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if math.isnan(v):
            return "—"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.2f}" if abs(v) >= 1000 else f"{v:.4f}"
    return str(v)


def fmt_value(r: dict[str, Any]) -> str:
    """A result's value: a count (the ``sum`` aggregator, e.g. tokens) as an integer, else :func:`fmt`."""
    v = r.get("value")
    if r.get("aggregator") == "sum" and isinstance(v, float) and v.is_integer():
        return str(int(v))
    return fmt(v)


def to_csv(rows: list[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    cols = list(columns or (rows[0].keys() if rows else DISPLAY_COLUMNS))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
    return buf.getvalue()


def to_json(rows: list[dict[str, Any]]) -> str:
    def clean(v: Any) -> Any:
        return None if isinstance(v, float) and (math.isnan(v) or math.isinf(v)) else v

    return json.dumps([{k: clean(v) for k, v in r.items()} for r in rows], indent=2, ensure_ascii=False)


def suites_differ(rows: list[dict[str, Any]]) -> bool:
    """Whether one checkpoint's task appears in several suites among ``rows`` (e.g. a bridge scored on its own
    stage's suite and on the next one's): then the rows say which suite they are of."""
    seen: dict[tuple[Any, ...], Any] = {}
    for r in rows:
        key = (*_model_key(r), r.get("task"))
        if seen.setdefault(key, r.get("suite")) != r.get("suite"):
            return True
    return False


def rich_table(rows: list[dict[str, Any]], title: str | None = None):  # type: ignore[no-untyped-def]
    from rich.table import Table

    columns: tuple[str, ...] = DISPLAY_COLUMNS
    if suites_differ(rows):
        i = columns.index("task")
        columns = (*columns[:i], "suite", *columns[i:])
    t = Table(title=title)
    for c in columns:
        t.add_column(c, justify="right" if c in ("value", "stderr", "n", "n_seeds", "step") else "left")
    for r in rows:
        t.add_row(*(fmt_value(r) if c == "value" else fmt(r.get(c)) for c in columns))
    return t


def model_label(r: dict[str, Any]) -> str:
    step = f" @ step {r['step']}" if r.get("step") is not None else ""
    return f"{r['model']}{step}"


def _model_key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["model"], r.get("checkpoint"), r.get("step"), r.get("precision"))


def _task_label(r: dict[str, Any], suite: bool = False) -> str:
    label = r["task"] if r.get("subset") in (None, "all") else f"{r['task']} / {r['subset']}"
    return f"{label} (suite {r.get('suite')})" if suite else label


def _result(r: dict[str, Any]) -> str:
    v = fmt_value(r)
    return f"{v} ± {fmt(r['stderr'])}" if r.get("stderr") is not None else v


def _ci(r: dict[str, Any]) -> str:
    if r.get("ci_low") is None or r.get("ci_high") is None:
        return "—"
    return f"[{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]"


def run_provenance(store: Any) -> dict[str, dict[str, Any]]:
    """run_id -> {"date", "command"} from the unit manifests of a :class:`~rescore.artifacts.store.Store`."""
    out = {}
    for u in store.units():
        m = u.manifest
        cmd = m.get("command")
        if isinstance(cmd, str) and cmd:
            exe, _, rest = cmd.partition(" ")
            cmd = f"{exe.rsplit('/', 1)[-1]} {rest}".strip()  # the executable's name, not its venv path
        out[u.run_id] = {"date": m.get("completed_at") or m.get("created_at"), "command": cmd}
    return out


def _provenance_lines(rs: list[dict[str, Any]], provenance: dict[str, dict[str, Any]]) -> list[str]:
    runs = [provenance[i] for r in rs for i in str(r.get("run_id") or "").split(",") if i in provenance]
    dates = sorted({str(p["date"])[:16].replace("T", " ") for p in runs if p.get("date")})
    cmds = sorted({p["command"] for p in runs if p.get("command")})
    lines = []
    if dates:
        lines.append("run date " + (dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}") + " UTC")
    lines += [f"command `{c}`" for c in cmds]
    return lines


def to_markdown(rows: list[dict[str, Any]], provenance: dict[str, dict[str, Any]] | None = None) -> str:
    """Per-model tables, then a cross-model comparison with the best value per row in bold.

    ``provenance`` (:func:`run_provenance`) adds each model's run date and generation command(s)."""
    models: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        models.setdefault(_model_key(r), []).append(r)
    labels = _unique_labels(models)
    by_suite = suites_differ(rows)
    parts: list[str] = []
    for key, rs in models.items():
        first = rs[0]
        parts.append(f"## {labels[key]}\n")
        info = [f"model path `{first.get('checkpoint')}`", f"precision {first.get('precision')}"]
        if first.get("stage"):
            info.append(f"stage {first['stage']}")
        parts.append(", ".join(info) + "\n")
        lines = _provenance_lines(rs, provenance or {})
        if lines:
            parts.append("; ".join(lines) + "\n")
        parts.append("| Task | Metric | Result | Error Range |")
        parts.append("|---|---|---:|---|")
        for r in rs:
            parts.append(f"| {_task_label(r, by_suite)} | {_metric_label(r)} | {_result(r)} | {_ci(r)} |")
        parts.append("")
    if len(models) > 1:
        parts.append(comparison_markdown(rows, models, labels))
    return "\n".join(parts).rstrip() + "\n"


def _metric_label(r: dict[str, Any]) -> str:
    arrow = "" if r.get("aggregator") == "sum" else (" ↑" if r.get("higher_is_better") else " ↓")
    seeds = f" ({r['n_seeds']} seeds)" if (r.get("n_seeds") or 0) > 1 else ""
    return f"{r['metric']}{arrow}{seeds}"


def _unique_labels(models: dict[tuple[Any, ...], list[dict[str, Any]]]) -> dict[tuple[Any, ...], str]:
    """Each model key's heading label (:func:`rescore.labels.checkpoint_labels`, spaced)."""
    from rescore.labels import CheckpointIdent, checkpoint_labels

    keys = list(models)
    idents = [CheckpointIdent(str(k[0]), k[2], k[3], k[1]) for k in keys]
    return dict(zip(keys, checkpoint_labels(idents, spaced=True), strict=True))


def comparison_markdown(rows: list[dict[str, Any]], models: dict[tuple[Any, ...], list[dict[str, Any]]],
                        labels: dict[tuple[Any, ...], str]) -> str:
    keys = list(models)
    by_suite = suites_differ(rows)
    cells: dict[tuple[str, str], dict[tuple[Any, ...], dict[str, Any]]] = {}
    order: list[tuple[str, str]] = []
    for k in keys:
        for r in models[k]:
            rk = (_task_label(r, by_suite), r["metric"])
            if rk not in cells:
                cells[rk] = {}
                order.append(rk)
            cells[rk][k] = r
    out = ["## Comparison\n", "| Task | Metric | " + " | ".join(labels[k] for k in keys) + " |",
           "|---|---|" + "---:|" * len(keys)]
    for rk in order:
        row = cells[rk]
        best = _best(row)
        vals = []
        for k in keys:
            cell = row.get(k)
            if cell is None:
                vals.append("—")
                continue
            s = _result(cell)
            vals.append(f"**{s}**" if k in best else s)
        any_r = next(iter(row.values()))
        out.append(f"| {rk[0]} | {_metric_label({**any_r, 'n_seeds': None})} | " + " | ".join(vals) + " |")
    return "\n".join(out) + "\n"


def _best(row: dict[tuple[Any, ...], dict[str, Any]]) -> set[tuple[Any, ...]]:
    vals = {k: r["value"] for k, r in row.items() if r.get("value") is not None and not math.isnan(r["value"])}
    if len(vals) < 2:
        return set()
    any_r = next(iter(row.values()))
    if any_r.get("aggregator") == "sum":
        return set()
    target = max(vals.values()) if any_r.get("higher_is_better", True) else min(vals.values())
    return {k for k, v in vals.items() if v == target}



# -- `rescore compare` output ------------------------------------------------------------------------------------------------
COMPARE_COLUMNS = ("model", "step", "stage", "precision", "baseline", "task", "tier", "metric", "higher_is_better", "base",
           "value", "delta", "rel_delta", "ci_low", "ci_high", "p_value", "stderr", "n", "seeds", "metric_version",
           "status", "reason", "rule")


def _num_text(v: float | None, digits: int = 4) -> str:
    if v is None:
        return "—"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.2f}" if abs(v) >= 1000 else f"{v:.{digits}f}"


def _signed_text(v: float | None) -> str:
    return "—" if v is None else ("+" if v > 0 else "") + _num_text(v)


def _status_text(r: CompareRow) -> str:
    return {"pass": "pass", "fail": "**FAIL**", "missing-fail": "**FAIL** (missing)", "missing": "missing",
            "skip": "skip", "": "—"}.get(r.status, r.status)


def compare_markdown(c: Comparison) -> str:
    pct = f"{c.level:.0%}"
    out = [f"# Compared with {c.baseline}\n",
           f"Delta = model - baseline on the samples both scored; {pct} CI and two-sided p-value from a paired "
           f"bootstrap ({c.resamples} resamples, seed {c.seed}). ↑ higher is better, ↓ lower is better.\n"]
    by_model: dict[tuple[str, str], list[CompareRow]] = {}
    for r in c.rows:
        by_model.setdefault((r.model, r.baseline), []).append(r)
    for (model, baseline), rows in by_model.items():
        out.append(f"## {model} vs {baseline}\n")
        out.append(f"| Task | Metric | {baseline} | {model} | Δ | Δ% | {pct} CI | p | n | Policy |")
        out.append("|---|---|---:|---:|---:|---:|---|---:|---:|---|")
        for r in rows:
            arrow = "↑" if r.higher_is_better else "↓"
            rel = "—" if r.rel_delta is None else f"{r.rel_delta:+.2%}"
            ci = "—" if r.ci_low is None else f"[{_signed_text(r.ci_low)}, {_signed_text(r.ci_high)}]"
            p = "—" if r.p_value is None else f"{r.p_value:.3g}"
            status = _status_text(r) + (f": {r.reason}" if r.status in ("fail", "missing", "missing-fail") and r.reason else "")
            out.append(f"| {r.task} | {r.metric} {arrow} | {_num_text(r.base)} | {_num_text(r.value)} | {_signed_text(r.delta)} | {rel} "
                       f"| {ci} | {p} | {r.n} | {status} |")
        out.append("")
    out.append(compare_summary(c))
    for n in c.notes:
        out.append(f"\nnote: {n}")
    return "\n".join(out).rstrip() + "\n"


def compare_summary(c: Comparison) -> str:
    if c.policy is None:
        return f"{len(c.rows)} rows compared; no policy given (--policy FILE gates them)."
    failed = c.failed
    verdict = "FAILED" if failed else "passed"
    return (f"policy {verdict}: {len(failed)} of {len(c.gated)} gated rows failed"
            + (" (" + ", ".join(f"{r.model} {r.task}/{r.metric}" for r in failed[:8])
               + (", ..." if len(failed) > 8 else "") + ")" if failed else "") + ".")


def compare_csv(c: Comparison) -> str:
    return to_csv([r.as_dict() for r in c.rows], COMPARE_COLUMNS)


def compare_json(c: Comparison) -> str:
    def clean(v: Any) -> Any:
        return None if isinstance(v, float) and not math.isfinite(v) else v

    doc = {"baseline": c.baseline, "resamples": c.resamples, "level": c.level, "seed": c.seed,
           "policy": None if c.policy is None else c.policy.model_dump(exclude_defaults=True),
           "passed": None if c.policy is None else not c.failed,
           "rows": [{k: clean(v) for k, v in r.as_dict().items()} for r in c.rows], "notes": c.notes}
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def render_compare(c: Comparison, fmt: str) -> str:
    from rescore.errors import ConfigError

    formats = {"markdown": compare_markdown, "csv": compare_csv, "json": compare_json}
    if fmt not in formats:
        raise ConfigError(f"unknown --format {fmt!r}", hint="choose markdown, csv or json")
    return formats[fmt](c)

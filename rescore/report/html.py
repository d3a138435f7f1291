"""``rescore report OUT.html``: one self-contained static page (inline CSS and SVG; no script, no network).

Sections:

1. **Summary per suite**: per task one narrow table, one row per checkpoint and one column per metric (a task
   of more than 8 metrics is split over several tables, so none needs a horizontal scrollbar), ``value ±
   stderr`` of the seed aggregate (stderr over seeds when there are several, else the per-row stderr); the best
   value of each column (by the metric's ``higher_is_better``) is bold and starred. Counts (``sum`` metrics)
   are not ranked.
2. **Deltas vs the baseline** (only with ``--baseline``): ``rescore compare``'s table without a policy.
3. **Metric vs step** (:mod:`rescore.report.steps`): per task whose checkpoints span at least two steps, one
   full-width figure of small multiples, one subplot per metric on a shared step axis, each stage's runs in
   their own color and named once in the figure's legend, error bars = the standard deviation over seeds, and
   the bridge as a dashed line: ``--baseline`` when given; else with ``--matrix`` each stage's declared bridge
   (stages in the matrix's order); else the last checkpoint (highest step) of the previous stage, stages
   ordered by when they were first generated. A line joins the checkpoints of one run: the model name without
   a trailing step (a matrix's ``stage1-step300`` belongs to ``stage1``). A task with one step has no figure;
   the page says so in one line.
4. **Best-of-n selection**: first / random / oracle / max-logprob (mean and sum) / majority / reranker, and
   the oracle - random gap (how much a perfect selector would gain over picking at random).
5. **Tier4 SFT-native by category**: ``all_checks_pass_rate`` and ``instruction_match_rate`` per category,
   one row per checkpoint and one column per category (with its number of samples).
6. **Provenance**: per checkpoint the model fingerprint, precision, dtype, tokenizer and chat template
   hashes, seeds, git revisions, dates, and the generation commands; the table wraps its cells to the page's
   width instead of running off its right edge.

The same precision guard as ``rescore compare`` applies (``--allow-mixed`` shows a warning banner instead).
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rescore.artifacts.store import Store
from rescore.report.catalog import Catalog, Checkpoint, build_catalog, resolve_baseline, select_models
from rescore.report.compare import load_matrix_file
from rescore.report.guard import guard_mixed
from rescore.report.kl import section_kl
from rescore.report.results import fmt, fmt_value
from rescore.report.steps import bridges, section_plots

BON = (("bon_first", "first"), ("bon_random", "random"), ("bon_oracle", "oracle"),
       ("bon_max_mean_logprob", "max-logprob (mean)"), ("bon_max_sum_logprob", "max-logprob (sum)"),
       ("bon_majority", "majority"), ("bon_reranker", "reranker"))
TIER4_METRICS = ("all_checks_pass_rate", "instruction_match_rate")
ALL = "all"
SUMMARY_METRICS = 8  # metric columns of one summary table: with checkpoint and stage, 10 fit 1300 px

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5rem auto;max-width:1320px;
  padding:0 1rem;color:#222;line-height:1.4}
h1{font-size:1.5rem;overflow-wrap:anywhere}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
h3{font-size:1rem}
table{border-collapse:collapse;font-size:.8rem;margin:.5rem 0 1rem}
caption{text-align:left;font-weight:bold;padding:.1rem 0;overflow-wrap:anywhere}
th,td{border:1px solid #ddd;padding:.2rem .45rem;text-align:right;white-space:nowrap}
th{background:#f4f4f4;white-space:normal;vertical-align:bottom}td.l,th.l{text-align:left}
td.name{white-space:normal;overflow-wrap:anywhere;min-width:6rem}
td.best{font-weight:bold;background:#eaf6ea}td.fail{color:#b00020;font-weight:bold}
.tables{display:flex;flex-wrap:wrap;align-items:flex-start;gap:0 1.5rem}.tables table{margin-top:.2rem}
.wrap{overflow-x:auto}.muted{color:#777;font-size:.8rem}.mono{font-family:ui-monospace,monospace}
.warn{background:#fff4e5;border:1px solid #f0b35a;padding:.5rem .8rem;margin:.8rem 0}
figure{margin:.3rem 0 .8rem}figure svg{width:100%;height:auto}
table.provenance{table-layout:fixed;width:100%}
table.provenance td,table.provenance th{white-space:normal;overflow-wrap:anywhere;vertical-align:top}table.provenance th{overflow-wrap:normal}
code{overflow-wrap:anywhere}
nav ul{columns:3;font-size:.85rem}
"""


def esc(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def pm(r: dict[str, Any] | None) -> str:
    if r is None:
        return "—"
    se = r.get("stderr")
    return fmt_value(r) + (f" ± {fmt(se)}" if se is not None else "")


# -- data ------------------------------------------------------------------------------------------------
class ReportData:
    """The selected checkpoints, their results rows and units."""

    def __init__(self, store: Store, *, models: Sequence[str] | None, suites: Sequence[str] | None,
                 tasks: Sequence[str] | None, metrics: Sequence[str] | None, baseline: str | None,
                 allow_mixed: bool, matrix: str | Path | None = None) -> None:
        import fnmatch

        from rescore.score.engine import read_results

        self.store = store
        self.matrix = load_matrix_file(matrix).config if matrix is not None else None
        self.cat: Catalog = build_catalog(store, suites=suites, tasks=tasks)
        self._rank = self._stage_rank()
        self.ckpts = select_models(self.cat, models)
        self.baseline: Checkpoint | None = resolve_baseline(self.cat, baseline) if baseline else None
        if self.baseline is not None and self.baseline not in self.ckpts:
            self.ckpts = [*self.ckpts, self.baseline]
        self.ckpts = sorted(self.ckpts, key=self._order)
        self.warnings = guard_mixed(self.cat, self.ckpts, allow_mixed=allow_mixed)
        self.labels = self.cat.labels
        run_ids = {u.run_id for u in self.cat.all_units(self.ckpts)}
        wanted = set(self.ckpts)
        self.rows: list[dict[str, Any]] = []
        for r in read_results(store).to_pylist():
            if r.get("aggregator") == "sum":
                continue
            if metrics and not any(fnmatch.fnmatchcase(r["metric"], p) for p in metrics):
                continue
            if not set(str(r["run_id"]).split(",")) & run_ids:
                continue
            ck = Checkpoint(name=str(r["model"]), path=str(r["checkpoint"]), step=r["step"], stage=r["stage"],
                            precision=str(r["precision"]))
            if ck in wanted:
                r["_ck"] = ck
                self.rows.append(r)
        self.agg = {(r["_ck"], r["task"], r["metric"], r["subset"]): r for r in self.rows if r["seed"] == "agg"}
        self.suites = self._suites(suites)

    def _stage_rank(self) -> dict[str | None, tuple[Any, ...]]:
        """Training order of the stages: the matrix's order; without a matrix, the order in which stages were
        first generated (steps may restart at every stage), then their first step, then their name."""
        stages = {c.stage for c in self.cat.checkpoints}
        if self.matrix is not None:
            order = [s.name for s in self.matrix.stages]
            return {st: (0, order.index(st)) if st in order else (1, str(st)) for st in stages}
        first: dict[str | None, tuple[str, int]] = {}
        for c in self.cat.checkpoints:
            dates = [str(u.manifest.get("created_at") or "") for t in self.cat.units[c].values() for u in t.values()]
            key = (min(dates) if dates else "", c.step if c.step is not None else 10**18)
            first[c.stage] = min(first.get(c.stage, key), key)
        return {st: (0 if st is not None else 1, *first[st], str(st)) for st in stages}

    def _order(self, c: Checkpoint) -> tuple[Any, ...]:
        return (self._rank.get(c.stage, (2,)), c.step if c.step is not None else -1, c.name, c.precision, c.path)

    def stages(self) -> list[str | None]:
        return sorted({c.stage for c in self.ckpts}, key=lambda s: self._rank.get(s, (2,)))

    def _suites(self, suites: Sequence[str] | None) -> dict[str, list[str]]:
        """suite -> its task names (in first-seen order), from --suite or the units' manifests."""
        from rescore.report.catalog import suite_tasks

        tasks_here = sorted({r["task"] for r in self.rows})
        out: dict[str, list[str]] = {}
        if suites:
            for s in suites:
                names = suite_tasks(self.store, s) or set()
                out[s] = [t for t in tasks_here if t in names]
            return out
        seen: set[str] = set()
        for u in self.cat.all_units(self.ckpts):
            t = str((u.manifest.get("task") or {}).get("name"))
            if t in tasks_here and t not in seen:
                seen.add(t)
                out.setdefault(str(u.manifest.get("suite")), []).append(t)
        return {s: sorted(ts) for s, ts in sorted(out.items())}

    def metrics_of(self, task: str) -> list[str]:
        return sorted({r["metric"] for r in self.rows if r["task"] == task and r["seed"] == "agg" and r["subset"] == ALL
                       and r.get("value") is not None})

    def cell(self, ck: Checkpoint, task: str, metric: str, subset: str = ALL) -> dict[str, Any] | None:
        return self.agg.get((ck, task, metric, subset))

    def hib(self, task: str, metric: str) -> bool:
        for r in self.rows:
            if r["task"] == task and r["metric"] == metric:
                return bool(r.get("higher_is_better", True))
        return True


def best_of(cells: dict[Any, dict[str, Any] | None], higher_is_better: bool) -> set[Any]:
    vals = {k: c["value"] for k, c in cells.items() if c is not None and c.get("value") is not None
            and not math.isnan(c["value"])}
    if len(vals) < 2 or len(set(vals.values())) == 1:
        return set()  # nothing to rank, or all equal
    target = max(vals.values()) if higher_is_better else min(vals.values())
    return {k for k, v in vals.items() if v == target}


# -- sections ------------------------------------------------------------------------------------------
def chunks(items: Sequence[Any], size: int) -> list[list[Any]]:
    """``items`` in the fewest runs of at most ``size``, as even as can be (11 -> 6 + 5, not 8 + 3)."""
    if not items:
        return []
    n = math.ceil(len(items) / size)
    k = math.ceil(len(items) / n)
    return [list(items[i:i + k]) for i in range(0, len(items), k)]


def metric_head(task: str, metric: str, d: ReportData) -> str:
    return f"<th>{esc(metric).replace('_', '_<wbr>')} {'↑' if d.hib(task, metric) else '↓'}</th>"


def section_summary(d: ReportData) -> str:
    out = ['<h2 id="summary">Summary</h2>',
           '<p class="muted">Per task, one row per checkpoint: the seed aggregate of each metric, value ± stderr; '
           '↑ higher is better, ↓ lower is better; ★ bold = best in its column.</p>']
    for suite, tasks in d.suites.items():
        if not any(d.metrics_of(t) for t in tasks):
            continue
        out.append(f'<h3 id="suite-{esc(suite)}">Suite {esc(suite)}</h3><div class="tables">')
        for task in tasks:
            parts = chunks(d.metrics_of(task), SUMMARY_METRICS)
            for i, cols in enumerate(parts):
                part = f" ({i + 1}/{len(parts)})" if len(parts) > 1 else ""
                out.append(f'<table class="summary" data-task="{esc(task)}"><caption>{esc(task)}{part}</caption>'
                           '<thead><tr><th class="l">checkpoint</th><th class="l">stage</th>'
                           + "".join(metric_head(task, m, d) for m in cols) + "</tr></thead><tbody>")
                best = {m: best_of({c: d.cell(c, task, m) for c in d.ckpts}, d.hib(task, m)) for m in cols}
                for c in d.ckpts:
                    cells = {m: d.cell(c, task, m) for m in cols}
                    if not any(cells.values()):
                        continue
                    tds = "".join(f'<td class="best">★ {esc(pm(cells[m]))}</td>' if c in best[m] else
                                  f"<td>{esc(pm(cells[m]))}</td>" for m in cols)
                    out.append(f'<tr><td class="l name">{esc(d.labels[c])}</td><td class="l name">'
                               f'{esc(c.stage or "—")}</td>{tds}</tr>')
                out.append("</tbody></table>")
        out.append("</div>")
    return "\n".join(out)


def section_deltas(d: ReportData, **filters: Any) -> str:
    if d.baseline is None:
        return ""
    from rescore.report.compare import compare

    res = compare(d.store, d.labels[d.baseline], allow_mixed=True, resamples=1000, **filters)
    out = ['<h2 id="deltas">Deltas vs the baseline</h2>',
           f'<p class="muted">Δ = checkpoint - {esc(res.baseline)} on shared samples; {res.level:.0%} CI and p-value '
           f'from a paired bootstrap ({res.resamples} resamples, seed {res.seed}). Red: a regression whose CI '
           'excludes 0.</p><div class="wrap"><table><thead><tr><th class="l">checkpoint</th><th class="l">task</th>'
           '<th class="l">metric</th><th>baseline</th><th>value</th><th>Δ</th><th>Δ%</th><th>CI</th><th>p</th>'
           '<th>n</th></tr></thead><tbody>']
    for r in res.rows:
        if r.delta is None:
            continue
        bad = r.ci_low is not None and ((r.ci_high < 0) if r.higher_is_better else (r.ci_low > 0))  # type: ignore[operator]
        rel = "—" if r.rel_delta is None else f"{r.rel_delta:+.2%}"
        ci = "—" if r.ci_low is None else f"[{fmt(r.ci_low)}, {fmt(r.ci_high)}]"
        out.append(f'<tr><td class="l">{esc(r.model)}</td><td class="l">{esc(r.task)}</td><td class="l">'
                   f'{esc(r.metric)} {"↑" if r.higher_is_better else "↓"}</td><td>{fmt(r.base)}</td><td>{fmt(r.value)}</td>'
                   f'<td{" class=fail" if bad else ""}>{fmt(r.delta)}</td><td>{rel}</td><td>{ci}</td>'
                   f'<td>{"—" if r.p_value is None else f"{r.p_value:.3g}"}</td><td>{r.n}</td></tr>')
    out.append("</tbody></table></div>")
    return "\n".join(out)


def section_bon(d: ReportData) -> str:
    tasks = sorted({r["task"] for r in d.rows if r["metric"].startswith("bon_")})
    out = ['<h2 id="bon">Best-of-n selection</h2>']
    if not tasks:
        out.append('<p class="muted">No best-of-n metrics (generation tasks with n &gt; 1 candidates).</p>')
        return "\n".join(out)
    present = [(m, lab) for m, lab in BON if any(r["metric"] == m for r in d.rows)]
    out.append('<p class="muted">Accuracy of the candidate each strategy selects (seed aggregate). Oracle = any '
               'candidate correct (an upper bound); gap = oracle - random; bold = best non-oracle strategy.</p>')
    out.append('<div class="wrap"><table class="bon"><thead><tr><th class="l">checkpoint</th><th class="l">task</th>'
               + "".join(f"<th>{esc(lab)}</th>" for _, lab in present) + "<th>oracle - random</th></tr></thead><tbody>")
    for task in tasks:
        for c in d.ckpts:
            cells = {m: d.cell(c, task, m) for m, _ in present}
            if not any(cells.values()):
                continue
            best = best_of({m: v for m, v in cells.items() if m != "bon_oracle"}, True)
            tds = "".join(f'<td{" class=best" if m in best else ""}>{esc(pm(cells[m]))}</td>' for m, _ in present)
            o, r = cells.get("bon_oracle"), cells.get("bon_random")
            gap = (o["value"] - r["value"]) if o and r and o.get("value") is not None and r.get("value") is not None else None
            out.append(f'<tr><td class="l">{esc(d.labels[c])}</td><td class="l">{esc(task)}</td>{tds}<td>{fmt(gap)}</td></tr>')
    out.append("</tbody></table></div>")
    return "\n".join(out)


def section_tier4(d: ReportData) -> str:
    out = ['<h2 id="tier4">Tier4 SFT-native by category</h2>']
    tasks = sorted({r["task"] for r in d.rows if r.get("tier") == "tier4" and r["subset"] != ALL
                    and r["metric"] in TIER4_METRICS})
    if not tasks:
        out.append('<p class="muted">No Tier4 task with categories here.</p>')
        return "\n".join(out)
    for task in tasks:
        for metric in TIER4_METRICS:
            subsets = sorted({r["subset"] for r in d.rows if r["task"] == task and r["metric"] == metric} - {ALL})
            if not subsets:
                continue
            out.append(f"<h3>{esc(task)}: {esc(metric)} ↑</h3>")
            # one row per checkpoint, like the summary: a long matrix makes the table longer, not wider
            for cols in chunks([*subsets, ALL], SUMMARY_METRICS):
                cells = {(c, sub): d.cell(c, task, metric, sub) for c in d.ckpts for sub in cols}
                best = {sub: best_of({c: cells[(c, sub)] for c in d.ckpts}, True) for sub in cols}
                head = ""
                for sub in cols:
                    ns = sorted({int(v["n"]) for (_, s_), v in cells.items() if s_ == sub and v and v.get("n") is not None})
                    name = "<b>all</b>" if sub == ALL else esc(sub).replace("_", "_<wbr>")
                    head += f'<th>{name}<br><span class="muted">n={esc("/".join(map(str, ns)) or "—")}</span></th>'
                out.append('<table class="tier4"><thead><tr><th class="l">checkpoint</th>' + head + "</tr></thead><tbody>")
                for c in d.ckpts:
                    if not any(cells[(c, sub)] for sub in cols):
                        continue
                    tds = "".join(f'<td{" class=best" if c in best[sub] else ""}>{esc(pm(cells[(c, sub)]))}</td>'
                                  for sub in cols)
                    out.append(f'<tr><td class="l name">{esc(d.labels[c])}</td>{tds}</tr>')
                out.append("</tbody></table>")
    return "\n".join(out)


def _short(s: Any, n: int = 12) -> str:
    s = "" if s is None else str(s)
    return f'<span class="mono" title="{esc(s)}">{esc(s[:n])}</span>' if s else "—"


def _join(vals: Iterable[Any]) -> set[str]:
    return {str(v) for v in vals if v is not None}


def section_provenance(d: ReportData) -> str:
    widths = (11, 14, 8, 6, 7, 6, 10, 7, 7, 5, 7, 5, 7)  # percent of the page's width; cells wrap, headers at spaces
    cols = "".join(f'<col style="width:{w}%">' for w in widths)
    out = [f'<h2 id="provenance">Run provenance</h2><table class="provenance"><colgroup>{cols}</colgroup><thead><tr>'
           '<th class="l">checkpoint</th><th class="l">path</th><th class="l">stage</th><th class="l">backend</th>'
           '<th class="l">precision</th><th class="l">dtype</th><th class="l">fingerprint</th><th class="l">tokenizer</th>'
           '<th class="l">chat template</th><th class="l">seeds</th><th class="l">git rev</th><th>units</th>'
           '<th class="l">generated</th></tr></thead><tbody>']
    commands: list[str] = []
    for c in d.ckpts:
        units = [u for t in d.cat.units[c].values() for u in t.values()]
        models = [u.manifest.get("model") or {} for u in units]

        def one(key: str, n: int = 12, models: list[dict[str, Any]] = models) -> str:
            vals = sorted(_join(m.get(key) for m in models))
            return " ".join(_short(v, n) for v in vals) or "—"

        seeds = sorted(_join(u.manifest.get("seed") for u in units), key=lambda s: (not s.isdigit(), s.zfill(12)))
        revs = sorted(_join(u.manifest.get("git_rev") for u in units))
        dates = sorted(_join(u.manifest.get("completed_at") or u.manifest.get("created_at") for u in units))
        when = (dates[0][:16] + (" … " + dates[-1][:16] if dates[-1][:16] != dates[0][:16] else "")) if dates else "—"
        out.append(f'<tr><td class="l">{esc(d.labels[c])}</td><td class="l mono">{esc(c.path)}</td>'
                   f'<td class="l">{esc(c.stage or "—")}</td><td class="l">{one("backend", 20)}</td>'
                   f'<td class="l">{esc(c.precision)}</td><td class="l">{one("dtype", 20)}</td>'
                   f'<td class="l">{one("fingerprint", 16)}</td><td class="l">{one("tokenizer_hash")}</td>'
                   f'<td class="l">{one("chat_template_hash")}</td><td class="l">{esc(", ".join(seeds))}</td>'
                   f'<td class="l">{" ".join(_short(r, 10) for r in revs) or "—"}</td><td>{len(units)}</td>'
                   f'<td class="l">{esc(when)}</td></tr>')
        for cmd in sorted(_join(u.manifest.get("command") for u in units)):
            commands.append(f"<li><b>{esc(d.labels[c])}</b>: <code>{esc(cmd)}</code></li>")
    out.append("</tbody></table>")
    if commands:
        out.append("<details><summary>Generation commands</summary><ul>" + "".join(commands) + "</ul></details>")
    return "\n".join(out)


# -- the page ------------------------------------------------------------------------------------------
def build_report(store: Store, *, models: Sequence[str] | None = None, suites: Sequence[str] | None = None,
                 tasks: Sequence[str] | None = None, metrics: Sequence[str] | None = None, baseline: str | None = None,
                 matrix: str | Path | None = None, title: str | None = None, allow_mixed: bool = False) -> str:
    """The report page as an HTML string."""
    d = ReportData(store, models=models, suites=suites, tasks=tasks, metrics=metrics, baseline=baseline,
                   allow_mixed=allow_mixed, matrix=matrix)
    title = title or f"rescore report: {store.root}"
    plots, n_plots = section_plots(d)
    kl = section_kl(d, bridges(d))  # empty unless units store distributions
    sections = [
        section_summary(d),
        section_deltas(d, models=models, suites=suites, tasks=tasks, metrics=metrics),
        plots, kl, section_bon(d), section_tier4(d), section_provenance(d),
    ]
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    warn = "".join(f'<div class="warn">--allow-mixed: {esc(w)}</div>' for w in d.warnings)
    notes = "".join(f'<p class="muted">note: {esc(n)}</p>' for n in d.cat.notes)
    nav = ['<li><a href="#summary">Summary</a></li>']
    if d.baseline is not None:
        nav.append('<li><a href="#deltas">Deltas vs the baseline</a></li>')
    nav += ['<li><a href="#plots">Metrics vs step</a></li>'] + (['<li><a href="#kl">KL to the bridge</a></li>'] if kl else [])
    nav += ['<li><a href="#bon">Best-of-n selection</a></li>',
            '<li><a href="#tier4">Tier4 by category</a></li>', '<li><a href="#provenance">Run provenance</a></li>']
    head = (f"<h1>{esc(title)}</h1><p class=\"muted\">Generated {esc(now)} from store <span class=\"mono\">"
            f"{esc(store.root)}</span>: {len(d.ckpts)} checkpoints, {len({r['task'] for r in d.rows})} tasks, "
            f"{n_plots} metric-vs-step figures.</p>{warn}{notes}<nav><ul>{''.join(nav)}</ul></nav>")
    body = head + "\n" + "\n".join(s for s in sections if s)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>\n{body}\n</body></html>\n")


def write_report(store: Store, out: Path, **kw: Any) -> Path:
    return write_page(out, lambda: build_report(store, **kw), example="report.html")


def write_page(out: Path, build: Callable[[], str], *, example: str) -> Path:
    """Write the page ``build()`` returns to ``out`` atomically, readable like any file one shares."""
    from rescore.artifacts.io import atomic_write_text

    out = Path(out)
    if out.is_dir():
        from rescore.errors import UserError

        raise UserError(f"{out} is a directory", hint=f"give the HTML file to write, e.g. {example}")
    page = build()
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, page)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(out, 0o666 & ~umask)  # a page to share: the usual file mode, not the temp file's 0600
    return out


__all__ = ["build_report", "write_page", "write_report", "ReportData"]

"""``rescore report OUT.html``: one self-contained static page (inline CSS and SVG; no script, no network).

Sections:

1. **Summary per suite**: one row per checkpoint, one column per task and metric, ``value ± stderr`` of the
   seed aggregate (stderr over seeds when there are several, else the per-row stderr); the best value of each
   column (by the metric's ``higher_is_better``) is bold and starred. Counts (``sum`` metrics) are not ranked.
2. **Deltas vs the baseline** (only with ``--baseline``): ``rescore compare``'s table without a policy.
3. **Metric vs step**: per task and metric, one panel per stage, error bars = the standard deviation over
   seeds, and the bridge as a dashed line: ``--baseline`` when given; else with ``--matrix`` each stage's
   declared bridge (stages in the matrix's order); else the last checkpoint (highest step) of the previous
   stage, stages ordered by when they were first generated. A line joins the checkpoints of one run: the
   model name without a trailing step (a matrix's ``stage1-step300`` belongs to ``stage1``).
4. **Best-of-n selection**: first / random / oracle / max-logprob (mean and sum) / majority / reranker, and
   the oracle - random gap (how much a perfect selector would gain over picking at random).
5. **Tier4 SFT-native by category**: ``all_checks_pass_rate`` and ``instruction_match_rate`` per category.
6. **Provenance**: per checkpoint the model fingerprint, precision, dtype, tokenizer and chat template
   hashes, seeds, git revisions, dates, and the generation commands.

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
from rescore.report.catalog import Catalog, Checkpoint, build_catalog, resolve_baseline, select_models, series_name
from rescore.report.compare import load_matrix_file
from rescore.report.guard import guard_mixed
from rescore.report.kl import section_kl
from rescore.report.plots import Panel, Point, metric_figure
from rescore.report.results import fmt, fmt_value

BON = (("bon_first", "first"), ("bon_random", "random"), ("bon_oracle", "oracle"),
       ("bon_max_mean_logprob", "max-logprob (mean)"), ("bon_max_sum_logprob", "max-logprob (sum)"),
       ("bon_majority", "majority"), ("bon_reranker", "reranker"))
TIER4_METRICS = ("all_checks_pass_rate", "instruction_match_rate")
ALL = "all"

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5rem auto;max-width:1200px;
  padding:0 1rem;color:#222;line-height:1.4}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}h3{font-size:1rem}
table{border-collapse:collapse;font-size:.8rem;margin:.5rem 0 1rem}
th,td{border:1px solid #ddd;padding:.2rem .45rem;text-align:right;white-space:nowrap}
th{background:#f4f4f4}td.l,th.l{text-align:left}
td.best{font-weight:bold;background:#eaf6ea}td.fail{color:#b00020;font-weight:bold}
.wrap{overflow-x:auto}.muted{color:#777;font-size:.8rem}.mono{font-family:ui-monospace,monospace}
.warn{background:#fff4e5;border:1px solid #f0b35a;padding:.5rem .8rem;margin:.8rem 0}
figure{margin:.3rem 0 .8rem}figure svg{max-width:100%;height:auto}
.plots{display:flex;flex-wrap:wrap;gap:.2rem 1rem}.plots figure{flex:1 1 520px;max-width:100%}
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
def section_summary(d: ReportData) -> str:
    out = ['<h2 id="summary">Summary</h2>',
           '<p class="muted">Seed aggregate per task and metric: value ± stderr; ↑ higher is better, ↓ lower is '
           'better; ★ bold = best in its column.</p>']
    for suite, tasks in d.suites.items():
        cols = [(t, m) for t in tasks for m in d.metrics_of(t)]
        if not cols:
            continue
        out.append(f'<h3 id="suite-{esc(suite)}">Suite {esc(suite)}</h3><div class="wrap"><table class="summary">')
        head1 = '<tr><th class="l" rowspan="2">checkpoint</th><th class="l" rowspan="2">stage</th>'
        head1 += "".join(f'<th colspan="{len(d.metrics_of(t))}">{esc(t)}</th>' for t in tasks if d.metrics_of(t))
        head2 = "<tr>" + "".join(f"<th>{esc(m)} {'↑' if d.hib(t, m) else '↓'}</th>" for t, m in cols) + "</tr>"
        out.append(f"<thead>{head1}</tr>{head2}</thead><tbody>")
        best = {(t, m): best_of({c: d.cell(c, t, m) for c in d.ckpts}, d.hib(t, m)) for t, m in cols}
        for c in d.ckpts:
            tds = []
            for t, m in cols:
                cell = d.cell(c, t, m)
                if c in best[(t, m)]:
                    tds.append(f'<td class="best">★ {esc(pm(cell))}</td>')
                else:
                    tds.append(f"<td>{esc(pm(cell))}</td>")
            out.append(f'<tr><td class="l">{esc(d.labels[c])}</td><td class="l">{esc(c.stage or "—")}</td>'
                       + "".join(tds) + "</tr>")
        out.append("</tbody></table></div>")
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


def _bridges(d: ReportData) -> dict[str | None, Checkpoint | None]:
    """stage -> the checkpoint drawn as its bridge line."""
    stages = d.stages()
    if d.baseline is not None:
        return {s: d.baseline for s in stages}
    out: dict[str | None, Checkpoint | None] = {}
    if d.matrix is not None:
        from rescore.plan.matrix import checkpoint_name

        by_name = {s.name: s for s in d.matrix.stages}
        for s in stages:
            st = by_name.get(s)  # type: ignore[arg-type]
            b = by_name.get(st.bridge) if st is not None and st.bridge else None
            if b is None:
                out[s] = None
                continue
            last = max(b.steps)
            found = [c for c in d.ckpts if c.stage == b.name and c.step == last and c.name == checkpoint_name(b.name, last)]
            out[s] = found[0] if found else None
        return out
    prev: str | None = None
    for i, s in enumerate(stages):
        cands = [c for c in d.ckpts if c.stage == prev and c.step is not None] if i > 0 else []
        out[s] = max(cands, key=lambda c: (c.step, c.name)) if cands else None
        prev = s
    return out


def section_plots(d: ReportData) -> tuple[str, int]:
    stepped = [c for c in d.ckpts if c.step is not None]
    out = ['<h2 id="plots">Metrics vs step</h2>']
    if not stepped:
        out.append('<p class="muted">No checkpoint has a step, so there is nothing to plot against steps.</p>')
        return "\n".join(out), 0
    unstepped = len(d.ckpts) - len(stepped)
    out.append('<p class="muted">One panel per stage; error bars: standard deviation over seeds (none with one '
               'seed); dashed line: the bridge (' + (
                   "--baseline " + esc(d.labels[d.baseline]) if d.baseline else
                   f"each stage's bridge in matrix {esc(d.matrix.name)}" if d.matrix is not None else
                   "the last checkpoint of the previous stage") + ").")
    if unstepped:
        out.append(f" {unstepped} checkpoint(s) without a step appear only in the tables.")
    out.append("</p>")
    bridges = _bridges(d)
    n = 0
    tasks = [t for ts in d.suites.values() for t in ts]
    for task in dict.fromkeys(tasks):
        metrics = d.metrics_of(task)
        if not metrics:
            continue
        out.append(f'<h3 id="plots-{esc(task)}">{esc(task)}</h3><div class="plots">')
        for metric in metrics:
            panels = []
            for stage in d.stages():
                p = Panel(stage=stage or "—")
                for c in stepped:
                    if c.stage != stage:
                        continue
                    cell = d.cell(c, task, metric)
                    if cell is None or cell.get("value") is None:
                        continue
                    p.series.setdefault(series_name(c), []).append(
                        Point(step=int(c.step), value=float(cell["value"]), spread=cell.get("std"),  # type: ignore[arg-type]
                              n_seeds=int(cell.get("n_seeds") or 1)))
                br = bridges.get(stage)
                if br is not None and (bc := d.cell(br, task, metric)) is not None and bc.get("value") is not None:
                    p.line = (d.labels[br], float(bc["value"]))
                if p.series:
                    panels.append(p)
            if not panels:
                continue
            arrow = "↑" if d.hib(task, metric) else "↓"
            svg = metric_figure(panels, title=f"{task}: {metric} {arrow}", ylabel=metric, salt=f"{task}|{metric}|{n}")
            out.append(f'<figure class="plot" data-task="{esc(task)}" data-metric="{esc(metric)}">{svg}</figure>')
            n += 1
        out.append("</div>")
    return "\n".join(out), n


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
            out.append(f'<h3>{esc(task)}: {esc(metric)} ↑</h3><div class="wrap"><table class="tier4"><thead><tr>'
                       '<th class="l">category</th>' + "".join(f"<th>{esc(d.labels[c])}</th>" for c in d.ckpts)
                       + "<th>n</th></tr></thead><tbody>")
            for sub in [*subsets, ALL]:
                cells = {c: d.cell(c, task, metric, sub) for c in d.ckpts}
                best = best_of(cells, True)
                ns = {int(v["n"]) for v in cells.values() if v is not None and v.get("n") is not None}
                tds = "".join(f'<td{" class=best" if c in best else ""}>{esc(pm(cells[c]))}</td>' for c in d.ckpts)
                name = "<b>all</b>" if sub == ALL else esc(sub)
                out.append(f'<tr><td class="l">{name}</td>{tds}<td>{esc("/".join(map(str, sorted(ns))) or "—")}</td></tr>')
            out.append("</tbody></table></div>")
    return "\n".join(out)


def _short(s: Any, n: int = 12) -> str:
    s = "" if s is None else str(s)
    return f'<span class="mono" title="{esc(s)}">{esc(s[:n])}</span>' if s else "—"


def _join(vals: Iterable[Any]) -> set[str]:
    return {str(v) for v in vals if v is not None}


def section_provenance(d: ReportData) -> str:
    out = ['<h2 id="provenance">Run provenance</h2><div class="wrap"><table class="provenance"><thead><tr>'
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
    out.append("</tbody></table></div>")
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
    kl = section_kl(d, _bridges(d))  # empty unless units store distributions
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
            f"{n_plots} plots.</p>{warn}{notes}<nav><ul>{''.join(nav)}</ul></nav>")
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

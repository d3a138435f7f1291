"""The report's metric-vs-step figures: per task one figure of small multiples (one subplot per metric, one
shared step axis), drawn only for a task whose checkpoints span at least two steps.

Every stage's runs are drawn on the same axes, each in its own color and named once in the figure's legend
(``stage sft``, or ``stage sft: NAME`` when a stage holds several runs; a stage named ``stage1`` is ``stage1``); the bridge of a stage is a dashed
line in that stage's color (gray when it bridges several stages, e.g. ``--baseline``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from html import escape
from typing import Any

from rescore.report.catalog import Checkpoint, series_name
from rescore.report.plots import Point, Subplot, figure_columns, step_figure

NEED_STEPS = "metric-vs-step plots need at least two steps"
# value of (checkpoint, metric) as (value, seed spread, seeds), or None where there is none
ValueFn = Callable[[Checkpoint, str], "tuple[float, float | None, int] | None"]


def bridges(d: Any) -> dict[str | None, Checkpoint | None]:
    """stage -> the checkpoint drawn as its bridge line (``d``: :class:`rescore.report.html.ReportData`)."""
    stages = d.stages()
    if d.baseline is not None:
        return {s: d.baseline for s in stages}
    out: dict[str | None, Checkpoint | None] = {}
    if d.matrix is not None:
        from rescore.plan.matrix import checkpoint_name

        by_name = {s.name: s for s in d.matrix.stages}
        for s in stages:
            st = by_name.get(s)
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


def legend_names(d: Any) -> dict[Checkpoint, str]:
    """Each stepped checkpoint's legend entry: its stage, and its run's name where a stage holds several runs."""
    stepped = [c for c in d.ckpts if c.step is not None]
    runs: dict[str | None, set[str]] = {}
    for c in stepped:
        runs.setdefault(c.stage, set()).add(series_name(c))
    out = {}
    for c in stepped:
        if c.stage is None:
            out[c] = series_name(c)
            continue
        stage = c.stage if c.stage.lower().startswith("stage") else f"stage {c.stage}"  # "stage1", not "stage stage1"
        out[c] = stage if len(runs[c.stage]) == 1 else f"{stage}: {series_name(c)}"
    return out


def task_subplots(d: Any, metrics: Sequence[tuple[str, str]], value: ValueFn,
                  lines: dict[str | None, Checkpoint | None] | None) -> tuple[list[Subplot], set[int]]:
    """One subplot per (metric, title) with a value somewhere, and the distinct steps drawn. ``lines``: each
    stage's bridge, drawn dashed (None: no lines)."""
    names = legend_names(d)
    stages = d.stages()
    out, steps = [], set()
    for metric, title in metrics:
        sp = Subplot(title=title)
        for stage in stages:
            for c in d.ckpts:
                if c.stage != stage or c not in names or (v := value(c, metric)) is None:
                    continue
                sp.series.setdefault(names[c], []).append(Point(step=int(c.step), value=v[0], spread=v[1], n_seeds=v[2]))  # type: ignore[arg-type]
                steps.add(int(c.step))  # type: ignore[arg-type]
        if lines:
            for stage in stages:
                br = lines.get(stage)
                drawn = [s for s in stages if lines.get(s) == br and any(c.stage == s for c in names)]
                if br is None or stage not in drawn or (v := value(br, metric)) is None:
                    continue
                own = [names[c] for c in d.ckpts if c.stage == stage and names.get(c) in sp.series]
                like = own[0] if len(drawn) == 1 and own else None
                sp.lines.setdefault(f"bridge ({d.labels[br]})", (v[0], like))
        if sp.series:
            out.append(sp)
    return out, steps


def figure_html(kind: str, task: str, metrics: Sequence[str], subplots: Sequence[Subplot], title: str) -> str:
    svg = step_figure(subplots, title=title, salt=f"{kind}|{task}")
    cols = figure_columns(len(subplots))
    return (f'<figure id="{kind}-{escape(task)}" class="plot {kind}" data-task="{escape(task)}" data-metrics="{escape(" ".join(metrics))}" '
            f'style="max-width:{cols * 300 + 90}px">{svg}</figure>')


def _cell_value(d: Any, task: str) -> ValueFn:
    def value(c: Checkpoint, metric: str) -> tuple[float, float | None, int] | None:
        cell = d.cell(c, task, metric)
        if cell is None or cell.get("value") is None:
            return None
        return float(cell["value"]), cell.get("std"), int(cell.get("n_seeds") or 1)

    return value


def section_plots(d: Any) -> tuple[str, int]:
    """The "Metrics vs step" section and its number of figures."""
    out = ['<h2 id="plots">Metrics vs step</h2>']
    stepped = [c for c in d.ckpts if c.step is not None]
    all_steps = sorted({int(c.step) for c in stepped})  # type: ignore[arg-type]
    if len(all_steps) < 2:
        have = ("no checkpoint has a step" if not all_steps else
                f"{'the only checkpoint' if len(d.ckpts) == 1 else 'every checkpoint with a step'} is at step "
                f"{all_steps[0]}")
        out.append(f'<p class="muted note-steps">No plots: {NEED_STEPS}, and {have}.</p>')
        return "\n".join(out), 0
    unstepped = len(d.ckpts) - len(stepped)
    br = bridges(d)
    how = ("--baseline " + escape(d.labels[d.baseline]) if d.baseline else
           f"each stage's bridge in matrix {escape(d.matrix.name)}" if d.matrix is not None else
           "the last checkpoint of the previous stage")
    out.append('<p class="muted">Per task one figure, one subplot per metric on a shared step axis; error bars: '
               f'standard deviation over seeds (none with one seed); dashed line: the bridge ({how}).'
               + (f" {unstepped} checkpoint(s) without a step appear only in the tables." if unstepped else "") + "</p>")
    figures, single = [], []
    tasks = [t for ts in d.suites.values() for t in ts]
    for task in dict.fromkeys(tasks):
        metrics = d.metrics_of(task)
        titles = [(m, f"{m} {'↑' if d.hib(task, m) else '↓'}") for m in metrics]
        subplots, steps = task_subplots(d, titles, _cell_value(d, task), br)
        if len(steps) < 2:
            if subplots:
                single.append(f"{escape(task)} (step {min(steps)})")
            continue
        drawn = [m for m, t in titles if any(sp.title == t for sp in subplots)]
        figures.append(figure_html("steps", task, drawn, subplots, task))
    if single:
        out.append(f'<p class="muted note-steps">Not plotted ({NEED_STEPS}): {", ".join(single)}.</p>')
    out.extend(figures)
    return "\n".join(out), len(figures)


__all__ = ["NEED_STEPS", "bridges", "figure_html", "legend_names", "section_plots", "task_subplots"]

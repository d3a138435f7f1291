"""Metric-vs-step figures as inline SVG (matplotlib, no pyplot, no global backend change).

One figure per task holds small multiples: one subplot per metric, all on one shared step axis, and one
legend for the whole figure (so a stage or bridge is named once, not on every subplot). Tick labels are plain
numbers with just enough digits to tell the ticks apart: no ``1e8`` offset text above an axis to collide with
a title.

Text stays text (``svg.fonttype: none``) so pages are small and searchable; each figure gets its own
``svg.hashsalt`` so the ids of several figures inlined in one page never collide; the XML prolog and the
metadata block are dropped, so the SVG embeds in HTML and references nothing outside the page.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import matplotlib
from matplotlib import ticker
from matplotlib.figure import Figure

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
_GRAY = "#555555"
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)
MAX_COLS = 4  # subplots per row: four fill the page's width at a readable size


@dataclass(frozen=True)
class Point:
    step: int
    value: float
    spread: float | None  # seed std (error bar), None with one seed
    n_seeds: int


@dataclass
class Subplot:
    """One metric: its points per legend label (a run of one stage), and dashed horizontal lines (a bridge):
    legend label -> (value, the legend label of the series whose color the line takes, None for gray)."""

    title: str
    series: dict[str, list[Point]] = field(default_factory=dict)
    lines: dict[str, tuple[float, str | None]] = field(default_factory=dict)


def step_figure(subplots: Sequence[Subplot], *, title: str, salt: str) -> str:
    """An SVG string: one subplot per metric (value vs step, seed-std error bars, bridge lines dashed), up to
    :data:`MAX_COLS` per row, sharing the step axis, with one legend under the title."""
    with matplotlib.rc_context(_RC | {"svg.hashsalt": salt}):  # type: ignore[arg-type]
        return _figure(subplots, title=title)


def figure_columns(n_subplots: int) -> int:
    return max(1, min(n_subplots, MAX_COLS))


# text stays text; one short font list instead of matplotlib's eleven names on every label
_RC: dict[str, Any] = {"svg.fonttype": "none", "font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans", "Arial", "sans-serif"]}

# layout in inches (fixed margins: constrained layout would double the drawing time, the dominant cost)
_W, _H = 2.6, 1.75  # one subplot
_LEFT, _RIGHT, _WSPACE, _HSPACE = 0.6, 0.15, 0.6, 0.62
_TITLE, _LEGEND_ROW, _BOTTOM = 0.34, 0.2, 0.42


class PlainFormatter(ticker.Formatter):
    """Tick labels as plain numbers: fixed-point with the decimals the tick spacing needs (``0.10 0.15``,
    ``16500 17000``, ``100000010``); only beyond 1e12, or under 1e-4, each label carries its own exponent
    (``1.5e13``). Never an offset or a multiplier drawn apart from the ticks."""

    def __init__(self) -> None:
        self.fixed = True
        self.digits = 0
        self.zero = 0.0

    def set_locs(self, locs: Any) -> None:
        super().set_locs(locs)
        vals = sorted(float(v) for v in locs)
        big = max((abs(v) for v in vals), default=0.0)
        self.zero = 1e-9 * big
        self.fixed = big == 0 or 1e-4 <= big < 1e12
        gaps = [b - a for a, b in zip(vals, vals[1:], strict=False) if b - a > self.zero]
        first = max(0, math.ceil(round(-math.log10(min(gaps)), 6))) if self.fixed and gaps else 0 if self.fixed else 2
        for d in range(first, first + 10):
            self.digits = d
            labels = [self.format(v) for v in vals]
            tol = 1e-3 * min(gaps) if gaps else 0.0
            if len(set(labels)) == len(labels) and all(abs(float(t) - v) <= tol for t, v in zip(labels, vals, strict=True)):
                break  # every tick told apart and shown as it is (0.125, not 0.12)

    def format(self, x: float) -> str:
        if abs(x) <= self.zero:
            return f"{0:.{self.digits}f}" if self.fixed else "0"
        if self.fixed:
            return f"{x:.{self.digits}f}"
        mant, exp = f"{x:.{self.digits}e}".split("e")
        mant = mant.rstrip("0").rstrip(".") if "." in mant else mant
        return f"{mant}e{int(exp)}"

    def __call__(self, x: float, pos: int | None = None) -> str:
        return self.format(x)


class StepFormatter(ticker.Formatter):
    """Steps as people write them, one unit for the whole axis: ``500 1000``, ``6k 12k 18k``, ``1.5M 3M``."""

    def __init__(self) -> None:
        self.scale, self.unit = 1.0, ""

    def set_locs(self, locs: Any) -> None:
        super().set_locs(locs)
        big = max((abs(float(v)) for v in locs), default=0.0)
        self.scale, self.unit = (1e6, "M") if big >= 1e6 else (1e3, "k") if big >= 1e4 else (1.0, "")

    def __call__(self, x: float, pos: int | None = None) -> str:
        return "0" if x == 0 else f"{x / self.scale:g}{self.unit}"


def _figure(subplots: Sequence[Subplot], *, title: str) -> str:
    n = max(1, len(subplots))
    ncols = figure_columns(n)
    nrows = math.ceil(n / ncols)
    names = list(dict.fromkeys(name for sp in subplots for name in sp.series))
    color = {name: _COLORS[i % len(_COLORS)] for i, name in enumerate(names)}
    line_names = list(dict.fromkeys(name for sp in subplots for name in sp.lines))
    n_entries = len(names) + len(line_names)
    legend_cols = max(1, min(n_entries, ncols + 1))
    legend_h = _LEGEND_ROW * math.ceil(n_entries / legend_cols) if n_entries else 0.0
    width = _LEFT + ncols * _W + (ncols - 1) * _WSPACE + _RIGHT
    top = _TITLE + legend_h + 0.28  # the title, the legend and the first row's subplot titles
    height = top + nrows * _H + (nrows - 1) * _HSPACE + _BOTTOM
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=_LEFT / width, right=1 - _RIGHT / width, bottom=_BOTTOM / height, top=1 - top / height,
                        wspace=_WSPACE / _W, hspace=_HSPACE / _H)
    grid = fig.subplots(nrows, ncols, sharex=True, squeeze=False)
    axes = [ax for row in grid for ax in row]
    for ax in axes[n:]:
        ax.remove()
    for i, (ax, sp) in enumerate(zip(axes, subplots, strict=False)):
        for name, pts in sp.series.items():
            pts = sorted(pts, key=lambda p: p.step)
            err = [p.spread if p.spread is not None and math.isfinite(p.spread) else 0.0 for p in pts]
            ax.errorbar([p.step for p in pts], [p.value for p in pts], yerr=err if any(err) else None, marker="o",
                        ms=3.5, lw=1.3, capsize=2.5, color=color[name], label=name)
        for name, (value, like) in sp.lines.items():
            ax.axhline(value, ls="--", lw=1.0, color=color.get(like, _GRAY) if like else _GRAY, label=name)
        ax.set_title(sp.title, fontsize=8.5)
        ax.tick_params(labelsize=7)
        ax.yaxis.set_major_formatter(PlainFormatter())
        ax.xaxis.set_major_locator(ticker.MaxNLocator(nbins=5, integer=True))
        ax.xaxis.set_major_formatter(StepFormatter())
        ax.grid(True, lw=0.4, alpha=0.5)
        if i + ncols >= n:  # nothing below it: the step axis is labelled here
            ax.xaxis.set_tick_params(labelbottom=True)
            ax.set_xlabel("step", fontsize=7.5)
    steps = sorted({p.step for sp in subplots for pts in sp.series.values() for p in pts})
    if len(steps) == 1:  # one step (a caller that draws it anyway): centre it instead of a +-0.05 window
        axes[0].set_xlim(steps[0] - 1, steps[0] + 1)
    found: dict[str, Any] = {}
    for ax in axes[:n]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            found.setdefault(lab, h)
    handles = {lab: found[lab] for lab in [*names, *line_names] if lab in found}  # the runs first, then the bridges
    fig.suptitle(title, fontsize=10, y=1 - 0.08 / height, va="top")
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="upper center", ncol=legend_cols, fontsize=7.5,
                   frameon=False, bbox_to_anchor=(0.5, 1 - _TITLE / height), borderaxespad=0, handlelength=2.2)
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    return _METADATA.sub("", svg)


__all__ = ["MAX_COLS", "PlainFormatter", "Point", "StepFormatter", "Subplot", "figure_columns", "step_figure"]

"""Metric-vs-step figures as inline SVG (matplotlib, no pyplot, no global backend change).

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
from matplotlib.figure import Figure

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)


@dataclass(frozen=True)
class Point:
    step: int
    value: float
    spread: float | None  # seed std (error bar), None with one seed
    n_seeds: int


@dataclass
class Panel:
    """One stage: a series of points per model name, and the bridge line (label, value) if any."""

    stage: str
    series: dict[str, list[Point]] = field(default_factory=dict)
    line: tuple[str, float] | None = None


def metric_figure(panels: Sequence[Panel], *, title: str, ylabel: str, salt: str) -> str:
    """An SVG string: one subplot per stage (shared y axis), value vs step with seed-std error bars, and the
    bridge baseline as a dashed horizontal line."""
    with matplotlib.rc_context(_RC | {"svg.hashsalt": salt}):  # type: ignore[arg-type]
        return _figure(panels, title=title, ylabel=ylabel)


# text stays text; one short font list instead of matplotlib's eleven names on every label
_RC: dict[str, Any] = {"svg.fonttype": "none", "font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans", "Arial", "sans-serif"]}


def _figure(panels: Sequence[Panel], *, title: str, ylabel: str) -> str:
    n = max(1, len(panels))
    width = min(3.6 * n, 12.0) + 0.6
    fig = Figure(figsize=(width, 2.7))
    # fixed margins: constrained layout would double the drawing time, the dominant cost of a report
    fig.subplots_adjust(left=0.75 / width, right=1 - 0.15 / width, bottom=0.17, top=0.8, wspace=0.08)
    axes = fig.subplots(1, n, sharey=True, squeeze=False)[0]
    names = sorted({name for p in panels for name in p.series})
    color = {name: _COLORS[i % len(_COLORS)] for i, name in enumerate(names)}
    for ax, panel in zip(axes, panels, strict=False):
        for name, pts in sorted(panel.series.items()):
            pts = sorted(pts, key=lambda p: p.step)
            xs = [p.step for p in pts]
            ys = [p.value for p in pts]
            err = [p.spread if p.spread is not None and math.isfinite(p.spread) else 0.0 for p in pts]
            ax.errorbar(xs, ys, yerr=err if any(err) else None, marker="o", ms=4, lw=1.4, capsize=3,
                        color=color[name], label=name)
        if panel.line is not None:
            label, value = panel.line
            ax.axhline(value, ls="--", lw=1.1, color="#555555", label=f"bridge ({label})")
        steps = sorted({p.step for pts in panel.series.values() for p in pts})
        if len(steps) == 1:  # one checkpoint: centre it instead of matplotlib's +-0.05 window
            ax.set_xlim(steps[0] - 1, steps[0] + 1)
            ax.set_xticks(steps)
        ax.set_title(f"stage {panel.stage}", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, lw=0.4, alpha=0.5)
        ax.legend(fontsize=6.5, loc="best", frameon=False)
    axes[0].set_ylabel(ylabel, fontsize=8)
    fig.suptitle(title, fontsize=10)
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    return _METADATA.sub("", svg)


__all__ = ["Point", "Panel", "metric_figure"]

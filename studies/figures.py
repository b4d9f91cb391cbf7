"""One look for every study's figures. Colour says the family (plain nets red, residual nets blue,
in every plot), line style and marker say the depth (ResNet-56 and plain-56 share a dash), so a
legend entry is readable without the legend. Figures are matplotlib ``Figure`` objects (no pyplot
state: studies run on headless machines)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator

from studies.stats import fmt_mean_sd

__all__ = ["FAMILY_COLORS", "DEPTH_STYLES", "family_color", "depth_style", "curve_style", "family_label",
           "new_figure", "save_figure", "log_error_axis", "epoch_axis", "seed_strip", "mean_band"]

FAMILY_COLORS = {"plain": "#d62728", "resnet": "#1f77b4"}
# dash pattern and marker per depth, shortest dash for the deepest nets
DEPTH_STYLES = {8: ("-", "v"), 14: ((0, (8, 2)), "P"), 20: ("-", "o"), 32: ((0, (6, 2)), "s"),
                44: ((0, (3, 1.5)), "^"), 56: ((0, (1.2, 1.2)), "D"), 110: ((0, (5, 1.5, 1, 1.5)), "X"),
                1202: ((0, (5, 1.5, 1, 1.5, 1, 1.5)), "*")}


def family_color(residual: bool) -> str:
    return FAMILY_COLORS["resnet" if residual else "plain"]


def family_label(residual: bool, depth: int | None = None) -> str:
    name = "ResNet" if residual else "plain"
    return name if depth is None else f"{name}-{depth}"


def depth_style(depth: int) -> tuple[Any, str]:
    """(line style, marker) of a depth; depths not listed get a dash-dot and a pentagon."""
    return DEPTH_STYLES.get(depth, ((0, (4, 1, 1, 1)), "p"))


def curve_style(residual: bool, depth: int, markers: bool = True) -> dict[str, Any]:
    """Keyword arguments for ``ax.plot`` of one net: its family's colour, its depth's dashes."""
    ls, marker = depth_style(depth)
    style = {"color": family_color(residual), "linestyle": ls, "label": family_label(residual, depth)}
    if markers:
        style.update(marker=marker, ms=3.5, markevery=0.1)
    return style


def new_figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (5.0, 3.8), **subplots: Any
               ) -> tuple[Figure, np.ndarray]:
    """A figure of ``nrows`` x ``ncols`` panels of ``size`` inches each; axes as a 2-D array."""
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False, **subplots)


def save_figure(fig: Figure, out: Path, name: str, dpi: int = 150) -> str:
    """Save ``out/<name>.png``; returns the file name for the README."""
    fig.savefig(Path(out) / f"{name}.png", dpi=dpi)
    return f"{name}.png"


def log_error_axis(ax: Any) -> None:
    """Log-scaled error axis labelled with plain numbers (1, 2, 5, 10 %), not 9x10^1."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def epoch_axis(ax: Any) -> None:
    """Whole epochs only on the x axis (short runs otherwise get ticks at 1.5, 2.5, ...)."""
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def seed_strip(ax: Any, groups: dict[str, tuple[list[float], str, str]], ylabel: str) -> None:
    """Every seed's value as a dot (spread sideways so that equal values stay visible) and each
    group's mean as a bar-wide line, annotated with ``mean ± sd (n)`` and an optional extra line:
    with five seeds the dots show the spread a min-max error bar hides. ``groups`` maps a tick
    label to (values, colour, extra annotation)."""
    for x, (label, (values, color, extra)) in enumerate(groups.items()):
        ax.scatter(x + np.linspace(-0.12, 0.12, len(values)), values, color=color, alpha=0.7, zorder=3)
        ax.hlines(float(np.mean(values)), x - 0.28, x + 0.28, color=color, lw=2.5)
        ax.annotate(fmt_mean_sd(values, 2, "%") + (f"\n{extra}" if extra else ""), (x, max(values)), ha="center",
                    va="bottom", xytext=(0, 6), textcoords="offset points", fontsize=7)
    ax.set_xticks(list(range(len(groups))), list(groups))
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set(ylabel=ylabel)
    ax.margins(y=0.25)
    ax.grid(True, axis="y", alpha=0.3)


def mean_band(ax: Any, epochs: list[int], curves: list[list[float]], color: str, label: str, **plot: Any) -> None:
    """One curve per group: the mean over seeds, with the min-max band when there are several
    (five single curves per group tangle; the band keeps the spread in view)."""
    values = np.asarray(curves, dtype=float)
    ax.plot(epochs, values.mean(axis=0), color=color, label=f"{label} (mean of {len(values)})"
            if len(values) > 1 else label, **plot)
    if len(values) > 1:
        ax.fill_between(epochs, values.min(axis=0), values.max(axis=0), color=color, alpha=0.12, lw=0)

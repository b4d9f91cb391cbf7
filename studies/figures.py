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

__all__ = ["FAMILY_COLORS", "DEPTH_STYLES", "family_color", "depth_style", "curve_style", "family_label",
           "new_figure", "save_figure", "log_error_axis", "epoch_axis"]

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

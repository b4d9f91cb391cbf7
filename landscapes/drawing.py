"""Matplotlib figures of surfaces: contour, filled contour, heat map and 3-D surface panels on one
shared scale (several values of one surface, or one value of several surfaces), 1-D curves, and
PCA training paths. It only draws: values come from :mod:`landscapes.values`, scales and names
from :mod:`landscapes.scales`."""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
from matplotlib import colors, ticker
from matplotlib.figure import Figure

from .scales import PlotConfig, Scale, axis_titles, model_label, pc_ratios, shared_scale, surface_title, value_label
from .surface import Surface
from .trajectory import Projection
from .values import available_values, best_point, default_value, surface_grid, value_array, value_family

KINDS = ("contour", "contourf", "heat", "surface", "1d")
KINDS_2D = ("contour", "contourf", "heat", "surface")

__all__ = ["KINDS", "KINDS_2D", "plot_2d", "plot_compare", "plot_1d", "plot_path", "draw_trajectory"]

Panel = tuple[Surface, str, str]  # (surface, value name, panel title)


def draw_trajectory(ax, proj: Projection, color: str = "white") -> None:
    """The training path over a 2-D plot: a line through the checkpoints, start and end marked."""
    ax.plot(proj.x, proj.y, "-", color="black", lw=2.6, zorder=5, solid_capstyle="round")
    ax.plot(proj.x, proj.y, "-o", color=color, lw=1.4, ms=3.2, mec="black", mew=0.6, zorder=6, label="training path")
    ax.plot(proj.x[:1], proj.y[:1], "o", color="tab:green", ms=7, mec="black", zorder=7,
            label=f"epoch {proj.epochs[0]}" if len(proj.epochs) else "start")
    ax.plot(proj.x[-1:], proj.y[-1:], "s", color="tab:red", ms=6, mec="black", zorder=7,
            label=f"epoch {proj.epochs[-1]}" if len(proj.epochs) else "end")


def _mark(ax, surface: Surface, name: str, Z: np.ndarray, owner: str = "") -> None:
    ext = best_point(name, Z)
    if ext is None:
        return
    k, which = ext
    iy, ix = np.unravel_index(k, Z.shape)
    ax.plot(surface.x[ix], surface.y[iy], "*", color="red", ms=13, mec="white", mew=0.8, zorder=8,
            label=f"grid {'minimum' if which == 'min' else 'maximum'}")
    # the label goes on the side away from the center, where the trained model's marker sits
    sx = -1 if surface.x[ix] < 0 else 1
    sy = -1 if surface.y[iy] < 0 else 1
    ax.annotate(f"{owner + ' ' if owner else ''}{which} {Z[iy, ix]:.3g}", (surface.x[ix], surface.y[iy]),
                xytext=(7 * sx, 7 * sy), textcoords="offset points", ha="left" if sx > 0 else "right",
                va="bottom" if sy > 0 else "top", fontsize=7, color="darkred", zorder=4,
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.7})


def _mark_unconverged(ax, surface: Surface, name: str, X: np.ndarray, Y: np.ndarray) -> None:
    """Hessian maps: a cross on every point whose eigenvalue solver did not converge."""
    conv = surface.values.get("hessian_converged")
    if conv is None or not (name.endswith("_eig") or name.endswith("eig_ratio")):
        return
    bad = np.asarray(conv) == 0
    if bad.shape == X.shape and bad.any():
        ax.plot(X[bad], Y[bad], "x", color="black", ms=7, mew=2.6, zorder=6, label="eigensolver not converged")
        ax.plot(X[bad], Y[bad], "x", color="white", ms=6, mew=1.1, zorder=7)


def _note_gaps(ax, Z: np.ndarray) -> None:
    gaps = int((~np.isfinite(Z)).sum())
    if gaps:
        ax.text(0.01, 0.01, f"{gaps} point{'s' * (gaps > 1)} missing or not finite (blank)", transform=ax.transAxes,
                fontsize=7, color="0.25", va="bottom", ha="left",
                bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "0.7", "alpha": 0.8})


def _square_units(surface: Surface) -> bool:
    """Equal aspect when both axes span comparable ranges (a 1:1 view of the weight plane)."""
    wx = float(np.ptp(surface.x)) if len(surface.x) > 1 else 0.0
    wy = float(np.ptp(surface.y)) if surface.y is not None and len(surface.y) > 1 else 0.0
    return wx > 0 and wy > 0 and 0.25 <= wx / wy <= 4


def _bar_label(names: Sequence[str]) -> str:
    """The colour bar names what all panels show: the value when it is the same everywhere, else
    its kind ("loss" for train and test loss)."""
    labels = {value_label(n) for n in names}
    if len(labels) == 1:
        return labels.pop()
    family = value_family(names[0])
    if family == "loss":
        return "loss"
    if family == "percent":
        return " ".join(value_label(names[0]).split(" ")[-2:])  # "accuracy (%)", "error (%)"
    return "value"


def _check_family(names: Sequence[str]) -> None:
    if len({value_family(n) for n in names}) > 1 or (len(names) > 1 and value_family(names[0]) == "other"):
        raise ValueError(f"side-by-side panels share one colour scale, so they must be the same kind of value "
                         f"(e.g. train_loss,test_loss); got {','.join(names)}: draw them one at a time")


def plot_2d(surface: Surface, kind: str, config: PlotConfig = PlotConfig(),
            trajectory: Projection | None = None) -> Figure:
    """One panel per value of ``config.values`` (shared colour scale): contour lines (labelled),
    filled contours, a heat map (cells centred on the grid points) or a 3-D surface."""
    names = list(config.values or (default_value(surface),))
    _check_family(names)
    panels = [(surface, n, value_label(n) if len(names) > 1 else "") for n in names]
    return _draw_panels(panels, kind, config, trajectory, surface_title(surface, names, config))


def plot_compare(surfaces: Sequence[Surface], kind: str = "contourf", config: PlotConfig = PlotConfig(),
                 labels: Sequence[str] | None = None, ncols: int | None = None) -> Figure:
    """One value (``config.values[0]``, default train_loss) of several surfaces side by side on one
    colour scale, one set of levels, one frame and (3-D) one z range: panels that are meant to be
    compared; ``ncols`` panels per row (default all in one row)."""
    if not surfaces:
        raise ValueError("plot_compare needs at least one surface")
    labels = list(labels) if labels else [model_label(s) for s in surfaces]
    if len(labels) != len(surfaces):
        raise ValueError(f"{len(labels)} labels for {len(surfaces)} surfaces")
    name = (config.values or (default_value(surfaces[0]),))[0]
    title = config.title or f"{value_label(name)}: {' vs '.join(labels)}"
    return _draw_panels([(s, name, lab) for s, lab in zip(surfaces, labels)], kind, config, None, title,
                        owners=labels, ncols=ncols)


def _draw_panels(panels: Sequence[Panel], kind: str, config: PlotConfig, trajectory: Projection | None, title: str,
                 owners: Sequence[str] | None = None, ncols: int | None = None) -> Figure:
    if kind not in KINDS_2D:
        raise ValueError(f"2-D kind must be one of {', '.join(KINDS_2D)}; got {kind!r}")
    grids = [surface_grid(s, n) for s, n, _ in panels]
    name0 = panels[0][1]
    scale = shared_scale(name0, [g[2] for g in grids], config)
    n = len(panels)
    three_d = kind == "surface"
    first = panels[0][0]
    height = 5.4
    if not three_d and _square_units(first):  # equal aspect: fit the figure to the plane's shape
        height = float(np.clip(4.6 * np.ptp(first.y) / np.ptp(first.x), 2.5, 6.5)) + 1.3
    cols = max(1, min(ncols or n, n))
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(5.6 * cols + 0.8, (height - 0.6) * rows + 0.6), layout="constrained")
    axes = [fig.add_subplot(rows, cols, i + 1, projection="3d" if three_d else None) for i in range(n)]
    mappable = None
    for i, (ax, (surface, name, panel_title), (X, Y, Z)) in enumerate(zip(axes, panels, grids)):
        Zm = np.ma.masked_invalid(Z)
        if scale.log:
            Zm = np.ma.masked_less_equal(Zm, 0)
        if panel_title:
            ax.set_title(panel_title, fontsize=10)
        if three_d:
            mappable = _surface3d(ax, X, Y, Zm, name, scale, config)
            continue
        if not np.ma.count(Zm):
            ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes, fontsize=12)
            ax.set_xlim(X.min(), X.max() if X.max() > X.min() else X.min() + 1)
            ax.set_ylim(Y.min(), Y.max() if Y.max() > Y.min() else Y.min() + 1)
        elif kind == "heat":
            mappable = ax.pcolormesh(X, Y, Zm, shading="nearest", cmap=config.cmap, norm=scale.norm, rasterized=True)
        elif min(Z.shape) < 2:
            mappable = ax.scatter(X.ravel(), Y.ravel(), c=Zm.ravel(), cmap=config.cmap, norm=scale.norm, s=30)
        elif kind == "contourf":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "no contour levels" on flat pieces
                mappable = ax.contourf(X, Y, Zm, levels=scale.levels, cmap=config.cmap, norm=scale.norm,
                                       extend="both")
                ax.contour(X, Y, Zm, levels=scale.levels, colors="k", linewidths=0.3, alpha=0.5)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                cs = ax.contour(X, Y, Zm, levels=scale.levels, cmap=config.cmap, norm=scale.norm, linewidths=1.0)
            if len(cs.levels) and cs.allsegs and any(len(s) for s in cs.allsegs):
                ax.clabel(cs, cs.levels[::2] if len(cs.levels) > 12 else cs.levels, inline=True, fontsize=6,
                          fmt=lambda v: f"{v:.3g}")
                mappable = cs
        if trajectory is not None:
            draw_trajectory(ax, trajectory)
        _mark_unconverged(ax, surface, name, X, Y)
        if config.mark_min:
            _mark(ax, surface, name, Z, owners[i] if owners else "")
        if 0.0 >= X.min() and 0.0 <= X.max() and 0.0 >= Y.min() and 0.0 <= Y.max():
            ax.plot(0, 0, "+", color="black", ms=9, mew=1.4, zorder=8, label="center (trained model)")
        xt, yt = axis_titles(pc_ratios(surface, trajectory))
        ax.set_xlabel(xt)
        ax.set_ylabel(yt)
        ax.set_aspect("equal" if _square_units(surface) else "auto")
        _note_gaps(ax, Z)
    if not three_d and n > 1:  # compared panels: one frame
        xs = [a.get_xlim() for a in axes]
        ys = [a.get_ylim() for a in axes]
        for a in axes:
            a.set_xlim(min(x[0] for x in xs), max(x[1] for x in xs))
            a.set_ylim(min(y[0] for y in ys), max(y[1] for y in ys))
    legend = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    if legend:  # one legend under the panels: markers and paths must not be hidden by it
        fig.legend(list(legend.values()), list(legend), loc="outside lower center", ncol=min(5, len(legend)),
                   fontsize=7, frameon=False, handletextpad=0.4, columnspacing=1.2)
    if mappable is not None:
        extra = {}
        if kind == "heat":  # arrows on the colour bar when colours saturate (contourf has its own)
            fin = np.concatenate([g[2].ravel() for g in grids])
            fin = fin[np.isfinite(fin)]
            over, under = bool(fin.size and fin.max() > scale.hi), bool(fin.size and fin.min() < scale.lo)
            extra["extend"] = {(True, True): "both", (True, False): "max", (False, True): "min"}.get(
                (over, under), "neither")
        cbar = fig.colorbar(mappable, ax=axes, shrink=0.85 if not three_d else 0.6, pad=0.02, **extra)
        label = _bar_label([nm for _, nm, _ in panels])
        cbar.set_label(label + (" (log scale)" if scale.log else ""))
        if scale.log:  # readable ticks (1, 2, 5 per decade) in value units, not the levels nor log10
            ticks = scale.ticks()
            if three_d:
                cbar.set_ticks(np.log10(ticks), labels=[f"{t:g}" for t in ticks])
            else:
                cbar.set_ticks(ticks)
                cbar.ax.set_ylim(scale.lo, scale.hi)
                cbar.formatter = ticker.FormatStrFormatter("%g")
                cbar.update_ticks()
    fig.suptitle(title, fontsize=10)
    return fig


def _surface3d(ax, X: np.ndarray, Y: np.ndarray, Zm: np.ma.MaskedArray, name: str, scale: Scale,
               config: PlotConfig):
    """3-D surface; gaps stay holes (NaN faces are dropped), values above the cap are drawn at the
    cap; every panel of a figure gets the scale's z range, and the z axis reads in value units."""
    Z = Zm.filled(np.nan).astype(np.float64)
    top = scale.cap if scale.cap is not None and value_family(name) in ("loss", "ratio") else None
    if top is not None:
        Z = np.where(Z > top, top, Z)
    Z = scale.to_axis(Z)
    lo, hi = (math.log10(scale.lo), math.log10(scale.hi)) if scale.log else (scale.lo, scale.hi)
    surf = ax.plot_surface(X, Y, Z, cmap=config.cmap, norm=colors.Normalize(lo, hi), linewidth=0, antialiased=True,
                           rstride=1, cstride=1)
    ax.set_zlim(lo, hi)
    if scale.log:
        ticks = scale.ticks()
        ax.set_zticks(np.log10(ticks), labels=[f"{t:g}" for t in ticks])
    ax.set_xlabel("α")
    ax.set_ylabel("β")
    ax.set_zlabel(value_label(name).split(" ", 1)[-1] if " " in value_label(name) else value_label(name),
                  labelpad=9)
    ax.set_box_aspect(None, zoom=0.85)
    ax.view_init(elev=35, azim=-60)
    return surf


def plot_1d(surface: Surface, config: PlotConfig = PlotConfig()) -> Figure:
    """Loss (left axis) and accuracy (right axis) along a 1-D scan, train solid and test dashed;
    other values (eigenvalues, their ratio) on the left axis."""
    if surface.y is not None:
        raise ValueError(f"{surface.path} is a 2-D surface; 1-D curves need a 1-D scan (use contour, contourf, "
                         f"heat or surface)")
    names = list(config.values) if config.values else sorted(
        (n for n in available_values(surface) if n.endswith(("_loss", "_acc")) or n == "eig_ratio"),
        key=lambda n: (n.endswith("_acc"), not n.startswith("train"), n))
    if not names:
        names = [default_value(surface)]
    for n in names:
        value_array(surface, n)  # validates the names
    fig = Figure(figsize=(6.6, 4.4), layout="constrained")
    ax = fig.add_subplot()
    right = None
    styles = {"train": "-", "test": "--"}
    lines = []
    for name in names:
        z = value_array(surface, name)
        split = name.split("_")[0]
        ls = styles.get(split, "-")
        if value_family(name) == "percent":
            right = right or ax.twinx()
            lines += right.plot(surface.x, z, ls, color="tab:red", lw=1.6, label=value_label(name))
        else:
            color = "tab:blue" if value_family(name) == "loss" else "tab:purple"
            lines += ax.plot(surface.x, z, ls, color=color, lw=1.6, label=value_label(name))
            if config.mark_min and (ext := best_point(name, z)) is not None:
                ax.plot(surface.x[ext[0]], z[ext[0]], "*", color=color, ms=10, mec="white", zorder=5)
    left_names = [n for n in names if value_family(n) != "percent"]
    ax.set_xlabel("α (distance along the direction)")
    ax.set_ylabel(", ".join(dict.fromkeys(value_label(n).split(" ", 1)[-1] if value_family(n) == "loss"
                                          else value_label(n) for n in left_names)) or "value", color="tab:blue")
    if config.log:
        ax.set_yscale("log")
    if config.vmin is not None or config.vmax is not None:
        ax.set_ylim(config.vmin, config.vmax)
    if right is not None:
        shown = {value_label(n).split(" ", 1)[-1] for n in names if value_family(n) == "percent"}
        right.set_ylabel(" / ".join(sorted(shown)), color="tab:red")  # only what is drawn
        right.set_ylim(-2, 102)
        right.tick_params(axis="y", colors="tab:red")
    ax.tick_params(axis="y", colors="tab:blue")
    ax.grid(True, alpha=0.3)
    if lines:
        ax.legend(lines, [ln.get_label() for ln in lines], loc="best", fontsize=8, framealpha=0.85)
    gaps = int(sum((~np.isfinite(value_array(surface, n))).sum() for n in names))
    if gaps:
        ax.text(0.01, 0.01, f"{gaps} missing / non-finite values (gaps)", transform=ax.transAxes, fontsize=7,
                color="0.3")
    fig.suptitle(surface_title(surface, names, config), fontsize=10)
    return fig


def _epoch_labels(xy: np.ndarray, epochs: Sequence[int], min_gap: float) -> list[tuple[int, str]]:
    """(index, text) of the path's epoch labels: consecutive checkpoints closer than ``min_gap`` (in
    data units) to the first of their run share one label, "5–10", instead of piling up."""
    out, i = [], 0
    while i < len(xy):
        j = i
        while j + 1 < len(xy) and np.hypot(*(xy[j + 1] - xy[i])) < min_gap:
            j += 1
        out.append((i, f"{epochs[i]}" if j == i else f"{epochs[i]}–{epochs[j]}"))
        i = j + 1
    return out


def plot_path(proj: Projection, config: PlotConfig = PlotConfig()) -> Figure:
    """The training path alone in its PCA plane (no surface), epochs labelled where they do not
    pile up (late epochs crowd near the end), axes in the plane's units with equal aspect; the
    explained variance goes on the axis labels."""
    fig = Figure(figsize=(5.8, 4.8), layout="constrained")
    ax = fig.add_subplot()
    draw_trajectory(ax, proj, color="tab:blue")
    ax.plot(0, 0, "+", color="black", ms=9, mew=1.4, zorder=8, label="final model")
    xy = np.stack([np.asarray(proj.x, float), np.asarray(proj.y, float)], 1)
    span = float(max(np.ptp(xy[:, 0]), np.ptp(xy[:, 1]), 1e-12)) if len(xy) else 1.0
    for i, text in _epoch_labels(xy, list(proj.epochs), 0.06 * span):
        ax.annotate(text, (proj.x[i], proj.y[i]), xytext=(4, 4), textcoords="offset points", fontsize=7)
    xt, yt = axis_titles(proj.attrs.get("explained_variance_ratio"))
    ax.set_xlabel(xt)
    ax.set_ylabel(yt)
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    total = float((proj.distance ** 2).sum()) if np.isfinite(proj.distance).all() else float("nan")
    share = 1 - float((proj.residual ** 2).sum()) / total if total > 0 else float("nan")
    title = config.title or (f"{proj.attrs.get('model', '')} training path, {len(proj.x)} checkpoints"
                             + (f"\n{100 * share:.1f}% of the squared offsets lie in this plane"
                                if math.isfinite(share) else ""))
    fig.suptitle(title.strip(), fontsize=10)
    return fig

"""Pictures of surface files: contour, filled contour, heat map, 3-D surface and 1-D curves (PNG via
matplotlib), an interactive Plotly page (one self-contained HTML), ParaView .vtp, and PCA training
paths drawn over a landscape. It only reads files: computing never plots, plotting never computes.

    python -m landscapes.plot SURFACE.h5 [--kind contour|contourf|heat|surface|1d] [--html] [--out F]
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
from matplotlib import colors, ticker
from matplotlib.figure import Figure

from .sampling import precision_note, se_hover
from .surface import Surface, read_surface
from .trajectory import Projection, read_projection

KINDS = ("contour", "contourf", "heat", "surface", "1d")
KINDS_2D = ("contour", "contourf", "heat", "surface")
# The paper's contour levels for losses (the reference's plot_2D defaults).
LOSS_LEVELS = (0.1, 10.0, 0.5)
# The reference draws |lambda_min / lambda_max| on a 0..0.5 colour scale.
RATIO_LEVELS = (0.0, 0.5, 0.025)

__all__ = ["PlotConfig", "KINDS", "surface_grid", "value_array", "available_values", "default_value", "levels_for",
           "plot_2d", "plot_1d", "plot_path", "draw_trajectory", "write_html", "write_vtp", "plot_surface_file", "main"]


@dataclass(frozen=True)
class PlotConfig:
    """How to draw. ``values`` None picks train_loss (or the eigenvalue ratio of a Hessian map);
    several values are drawn side by side on one colour scale (e.g. train and test loss).
    vmin/vmax/vlevel None: the paper's 0.1 / 10 / 0.5 for losses, 0 / 0.5 / 0.025 for the
    |min/max| eigenvalue ratio, the finite data range otherwise. log: logarithmic colour scale
    (and z axis / loss axis). zmax: clip the 3-D surface there (default vmax for losses), so a
    diverged corner does not flatten the rest. trajectory: a ``landscapes.trajectory`` file (or
    the reference's ``*_proj_cos.h5``) drawn over 2-D plots."""

    values: tuple[str, ...] | None = None
    vmin: float | None = None
    vmax: float | None = None
    vlevel: float | None = None
    log: bool = False
    cmap: str = "viridis"
    dpi: int = 150
    zmax: float | None = None
    trajectory: str | None = None
    title: str | None = None
    mark_min: bool = True

    def __post_init__(self) -> None:
        if self.values is not None:
            object.__setattr__(self, "values", tuple(self.values))
            if not self.values:
                raise ValueError("values must name at least one value (or be None for the default)")
        if self.vlevel is not None and not self.vlevel > 0:
            raise ValueError(f"vlevel must be > 0, got {self.vlevel}")
        if self.vmin is not None and self.vmax is not None and not self.vmin < self.vmax:
            raise ValueError(f"vmin must be below vmax, got {self.vmin} and {self.vmax}")
        if self.log and self.vmin is not None and self.vmin <= 0:
            raise ValueError(f"a log scale needs vmin > 0, got {self.vmin}")
        if self.dpi < 10:
            raise ValueError(f"dpi must be >= 10, got {self.dpi}")
        try:
            from matplotlib import colormaps
            colormaps[self.cmap]
        except KeyError:
            raise ValueError(f"unknown colormap {self.cmap!r}; try viridis, magma, coolwarm, terrain") from None


# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------

def available_values(surface: Surface) -> list[str]:
    """Stored values plus those derived from them: ``<split>_err`` = 100 - acc, and ``eig_ratio`` =
    |min_eig / max_eig| when both eigenvalues are stored."""
    names = list(surface.values)
    names += [n[:-4] + "_err" for n in surface.values if n.endswith("_acc") and n[:-4] + "_err" not in names]
    if "max_eig" in surface.values and "min_eig" in surface.values:
        names.append("eig_ratio")
    return names


def default_value(surface: Surface) -> str:
    if "train_loss" in surface.values:
        return "train_loss"
    if "max_eig" in surface.values and "min_eig" in surface.values:
        return "eig_ratio"
    losses = [n for n in surface.values if n.endswith("_loss")]
    if losses or surface.values:
        return (losses or list(surface.values))[0]
    raise ValueError(f"{surface.path} holds no values to plot")


def value_array(surface: Surface, name: str) -> np.ndarray:
    """The value ``name`` as float64 of the surface's shape; non-finite entries become NaN (a gap)."""
    if name in surface.values:
        z = np.array(surface.values[name], dtype=np.float64)
    elif name == "eig_ratio" and "max_eig" in surface.values and "min_eig" in surface.values:
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.abs(surface.values["min_eig"] / surface.values["max_eig"])
    elif name.endswith("_err") and name[:-4] + "_acc" in surface.values:
        z = 100.0 - np.asarray(surface.values[name[:-4] + "_acc"], dtype=np.float64)
    else:
        raise ValueError(f"{surface.path} has no value {name!r}; available: {', '.join(available_values(surface))}")
    z[~np.isfinite(z)] = np.nan
    return z


def surface_grid(surface: Surface, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X, Y, Z) of shape (ny, nx) for a 2-D surface, as matplotlib's contour wants them:
    ``Z[iy, ix]`` is the value at ``(X[iy, ix], Y[iy, ix]) = (x[ix], y[iy])``; NaN marks gaps."""
    if surface.y is None:
        raise ValueError(f"{surface.path} is a 1-D surface (no ycoordinates); use --kind 1d")
    X, Y = np.meshgrid(surface.x, surface.y)  # 'xy' indexing: rows follow y
    Z = value_array(surface, name)
    if Z.shape != X.shape:
        raise ValueError(f"{name} has shape {Z.shape}, expected (ny, nx) = {X.shape}")
    return X, Y, Z


def _family(name: str) -> str:
    if name.endswith("_loss") or name == "loss":
        return "loss"
    if name.endswith(("_acc", "_err")):
        return "percent"
    if name == "eig_ratio":
        return "ratio"
    return "other"


def _label(name: str) -> str:
    if name == "eig_ratio":
        return "|λ_min / λ_max|"
    if name == "max_eig":
        return "λ_max (Hessian)"
    if name == "min_eig":
        return "λ_min (Hessian)"
    split, _, what = name.rpartition("_")
    nice = {"loss": "loss", "acc": "accuracy (%)", "err": "error (%)"}.get(what)
    return f"{split} {nice}" if split and nice else name.replace("_", " ")


def levels_for(name: str, data: np.ndarray, config: PlotConfig) -> tuple[np.ndarray, colors.Normalize]:
    """Contour levels and the colour normalization shared by every 2-D kind."""
    finite = data[np.isfinite(data)]
    if config.log:
        finite = finite[finite > 0]
    # A log scale is for spanning decades: by default it covers the data, not the paper's 0.1..10.
    defaults = None if config.log else {"loss": LOSS_LEVELS, "ratio": RATIO_LEVELS}.get(_family(name))
    lo = config.vmin if config.vmin is not None else (defaults[0] if defaults else
                                                      (float(finite.min()) if finite.size else 0.0))
    hi = config.vmax if config.vmax is not None else (defaults[1] if defaults else
                                                      (float(finite.max()) if finite.size else 1.0))
    if config.log:
        if lo <= 0:
            lo = float(finite.min()) if finite.size else 1e-3
        if not hi > lo:
            hi = lo * 10
        count = int(np.clip(round((hi - lo) / config.vlevel), 2, 40)) if config.vlevel else 20
        return np.geomspace(lo, hi, count + 1), colors.LogNorm(lo, hi)
    if not hi > lo:  # a constant surface
        lo, hi = lo - 0.5 * max(abs(lo), 1.0), hi + 0.5 * max(abs(hi), 1.0)
    step = config.vlevel if config.vlevel is not None else (defaults[2] if defaults and config.vmin is None
                                                             and config.vmax is None else None)
    if step is not None:
        if (hi - lo) / step > 200:  # checked before np.arange allocates them (1e-9 would need 74 GiB)
            raise ValueError(f"vlevel {step:g} gives {(hi - lo) / step:.3g} contour levels between {lo:g} and "
                             f"{hi:g}; use a larger --vlevel")
        levels = np.arange(lo, hi + 1e-9 * step, step)
        if levels.size < 2:
            levels = np.array([lo, hi])
    else:
        levels = ticker.MaxNLocator(16).tick_values(lo, hi)
    return levels, colors.Normalize(lo, hi)


def _extremum(name: str, Z: np.ndarray) -> tuple[int, str] | None:
    """Flat index of the best finite point: min for losses and errors, max for accuracy; None for
    values without a "best" (eigenvalues and their ratio)."""
    if not np.isfinite(Z).any() or _family(name) not in ("loss", "percent"):
        return None
    if name.endswith("_acc"):
        return int(np.nanargmax(Z)), "max"
    return int(np.nanargmin(Z)), "min"


# --------------------------------------------------------------------------------------------
# Titles and axes
# --------------------------------------------------------------------------------------------

def _title(surface: Surface, names: Sequence[str], config: PlotConfig) -> str:
    if config.title is not None:
        return config.title
    a = surface.attrs
    model = a.get("model") or Path(surface.path).stem
    data = a.get("dataset", "")
    split = {"both": "train+test"}.get(a.get("split", ""), a.get("split", ""))
    n = a.get("num_samples")
    if isinstance(n, dict) and len(n) > 1:
        what = f"{data} ({', '.join(f'{k} {v}' for k, v in sorted(n.items(), key=lambda kv: kv[0] != 'train'))} images)"
    else:
        n = next(iter(n.values())) if isinstance(n, dict) and n else (n or a.get("samples") or "")
        what = f"{data} {split}".strip()
        if what and n:
            what += f", {n} images"
    grid = f"{len(surface.x)}-point" if surface.y is None else f"{len(surface.x)}×{len(surface.y)}"
    dirs = a.get("directions_source", "")
    meta = a.get("directions_meta")
    if isinstance(meta, dict) and meta.get("source") == "pca":
        dirs = "PCA"
    elif dirs.startswith("file"):
        dirs = "file"
    if a.get("format") != "resnet-toolkit/1":
        dirs = "reference-project file"
    first = f"{model}" + (f" on {what}" if what else "")
    shown = ", ".join(_label(v) for v in names) if len(names) <= 2 else "loss and accuracy"
    second = f"{shown} · {grid} grid" + (f" · {dirs} directions" if dirs and
                                                                       "reference" not in dirs else "")
    if "reference" in dirs:
        second += " · reference-project file"
    note = precision_note(surface)  # adaptive sample counts: at what precision (partial files too)
    return f"{first}\n{second}" + (f"\n{note}" if note else "")


def _pc_ratios(surface: Surface, trajectory: Projection | None) -> np.ndarray | None:
    """Explained variance ratios of PCA directions, from the trajectory file or the direction file."""
    if trajectory is not None and "explained_variance_ratio" in trajectory.attrs:
        return np.asarray(trajectory.attrs["explained_variance_ratio"], dtype=float)
    dir_file = surface.attrs.get("dir_file")
    if dir_file and Path(dir_file).is_file():
        try:
            with h5py.File(dir_file, "r") as f:
                if "explained_variance_ratio_" in f:
                    return np.asarray(f["explained_variance_ratio_"][()], dtype=float)
        except OSError:
            return None
    return None


def _axis_labels(ax, ratios: Sequence[float] | np.ndarray | None) -> None:
    """PCA planes say how much of the path's variance each axis holds; random planes name α, β."""
    if ratios is not None and len(ratios) >= 2:
        ax.set_xlabel(f"1st PC: {100 * ratios[0]:.1f} % of variance")
        ax.set_ylabel(f"2nd PC: {100 * ratios[1]:.1f} % of variance")
    else:
        ax.set_xlabel("x direction (α)")
        ax.set_ylabel("y direction (β)")


def draw_trajectory(ax, proj: Projection, color: str = "white") -> None:
    """The training path over a 2-D plot: a line through the checkpoints, start and end marked."""
    ax.plot(proj.x, proj.y, "-", color="black", lw=2.6, zorder=5, solid_capstyle="round")
    ax.plot(proj.x, proj.y, "-o", color=color, lw=1.4, ms=3.2, mec="black", mew=0.6, zorder=6, label="training path")
    ax.plot(proj.x[:1], proj.y[:1], "o", color="tab:green", ms=7, mec="black", zorder=7,
            label=f"epoch {proj.epochs[0]}" if len(proj.epochs) else "start")
    ax.plot(proj.x[-1:], proj.y[-1:], "s", color="tab:red", ms=6, mec="black", zorder=7,
            label=f"epoch {proj.epochs[-1]}" if len(proj.epochs) else "end")


def _mark(ax, surface: Surface, name: str, Z: np.ndarray) -> None:
    ext = _extremum(name, Z)
    if ext is None:
        return
    k, which = ext
    iy, ix = np.unravel_index(k, Z.shape)
    ax.plot(surface.x[ix], surface.y[iy], "*", color="red", ms=13, mec="white", mew=0.8, zorder=8,
            label=f"grid {'minimum' if which == 'min' else 'maximum'}")
    # the label goes on the side away from the center, where the trained model's marker sits
    sx = -1 if surface.x[ix] < 0 else 1
    sy = -1 if surface.y[iy] < 0 else 1
    ax.annotate(f"{Z[iy, ix]:.3g}", (surface.x[ix], surface.y[iy]), xytext=(7 * sx, 7 * sy),
                textcoords="offset points", ha="left" if sx > 0 else "right", va="bottom" if sy > 0 else "top",
                fontsize=7, color="darkred", zorder=4,
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.7})


def _note_gaps(ax, Z: np.ndarray) -> None:
    gaps = int((~np.isfinite(Z)).sum())
    if gaps:
        ax.text(0.01, 0.01, f"{gaps} point{'s' * (gaps > 1)} missing or not finite (blank)", transform=ax.transAxes,
                fontsize=7, color="0.25", va="bottom", ha="left",
                bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "0.7", "alpha": 0.8})


# --------------------------------------------------------------------------------------------
# Matplotlib figures
# --------------------------------------------------------------------------------------------

def plot_2d(surface: Surface, kind: str, config: PlotConfig = PlotConfig(),
            trajectory: Projection | None = None) -> Figure:
    """One panel per value of ``config.values`` (shared colour scale): contour lines (labelled),
    filled contours, a heat map (cells centred on the grid points) or a 3-D surface."""
    if kind not in KINDS_2D:
        raise ValueError(f"2-D kind must be one of {', '.join(KINDS_2D)}; got {kind!r}")
    names = list(config.values or (default_value(surface),))
    if len({_family(n) for n in names}) > 1 or (len(names) > 1 and _family(names[0]) == "other"):
        raise ValueError(f"side-by-side panels share one colour scale, so they must be the same kind of value "
                         f"(e.g. train_loss,test_loss); got {','.join(names)}: draw them one at a time")
    grids = [surface_grid(surface, n) for n in names]
    X, Y = grids[0][0], grids[0][1]
    stacked = np.concatenate([g[2].ravel() for g in grids])
    levels, norm = levels_for(names[0], stacked, config)
    n = len(names)
    three_d = kind == "surface"
    height = 5.4
    if not three_d and _square_units(surface):  # equal aspect: fit the figure to the plane's shape
        height = float(np.clip(4.6 * np.ptp(surface.y) / np.ptp(surface.x), 2.5, 6.5)) + 1.3
    fig = Figure(figsize=(5.6 * n + 0.8, height), layout="constrained")
    axes = [fig.add_subplot(1, n, i + 1, projection="3d" if three_d else None) for i in range(n)]
    mappable = None
    for ax, name, (_, _, Z) in zip(axes, names, grids):
        Zm = np.ma.masked_invalid(Z)
        if config.log:
            Zm = np.ma.masked_less_equal(Zm, 0)
        if three_d:
            mappable = _surface3d(ax, X, Y, Zm, name, config, norm)
            continue
        if not np.ma.count(Zm):
            ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes, fontsize=12)
            ax.set_xlim(X.min(), X.max() if X.max() > X.min() else X.min() + 1)
            ax.set_ylim(Y.min(), Y.max() if Y.max() > Y.min() else Y.min() + 1)
        elif kind == "heat":
            mappable = ax.pcolormesh(X, Y, Zm, shading="nearest", cmap=config.cmap, norm=norm, rasterized=True)
        elif min(Z.shape) < 2:
            mappable = ax.scatter(X.ravel(), Y.ravel(), c=Zm.ravel(), cmap=config.cmap, norm=norm, s=30)
        elif kind == "contourf":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "no contour levels" on flat pieces
                mappable = ax.contourf(X, Y, Zm, levels=levels, cmap=config.cmap, norm=norm, extend="both")
                ax.contour(X, Y, Zm, levels=levels, colors="k", linewidths=0.3, alpha=0.5)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                cs = ax.contour(X, Y, Zm, levels=levels, cmap=config.cmap, norm=norm, linewidths=1.0)
            if len(cs.levels) and cs.allsegs and any(len(s) for s in cs.allsegs):
                ax.clabel(cs, cs.levels[::2] if len(cs.levels) > 12 else cs.levels, inline=True, fontsize=6,
                          fmt=lambda v: f"{v:.3g}")
                mappable = cs
        if trajectory is not None:
            draw_trajectory(ax, trajectory)
        if config.mark_min:
            _mark(ax, surface, name, Z)
        if 0.0 >= X.min() and 0.0 <= X.max() and 0.0 >= Y.min() and 0.0 <= Y.max():
            ax.plot(0, 0, "+", color="black", ms=9, mew=1.4, zorder=8, label="center (trained model)")
        _axis_labels(ax, _pc_ratios(surface, trajectory))
        if n > 1:
            ax.set_title(_label(name), fontsize=10)
        ax.set_aspect("equal" if _square_units(surface) else "auto")
        _note_gaps(ax, Z)
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
            fin = stacked[np.isfinite(stacked)]
            over, under = bool(fin.size and fin.max() > norm.vmax), bool(fin.size and fin.min() < norm.vmin)
            extra["extend"] = {(True, True): "both", (True, False): "max", (False, True): "min"}.get(
                (over, under), "neither")
        cbar = fig.colorbar(mappable, ax=axes, shrink=0.85 if not three_d else 0.6, pad=0.02, **extra)
        cbar.set_label(("log10 " if config.log and three_d else "")
                       + (_label(names[0]) if n == 1 else _label(names[0]).split(" ", 1)[-1]))
        if config.log and not three_d:  # readable ticks (1, 2, 5 per decade) instead of the levels
            cbar.set_ticks(ticker.LogLocator(subs=(1.0, 2.0, 5.0)).tick_values(norm.vmin, norm.vmax))
            cbar.ax.set_ylim(norm.vmin, norm.vmax)
            cbar.formatter = ticker.FormatStrFormatter("%g")
            cbar.update_ticks()
    fig.suptitle(_title(surface, names, config), fontsize=10)
    return fig


def _square_units(surface: Surface) -> bool:
    """Equal aspect when both axes span comparable ranges (a 1:1 view of the weight plane)."""
    wx = float(np.ptp(surface.x)) if len(surface.x) > 1 else 0.0
    wy = float(np.ptp(surface.y)) if surface.y is not None and len(surface.y) > 1 else 0.0
    return wx > 0 and wy > 0 and 0.25 <= wx / wy <= 4


def _surface3d(ax, X: np.ndarray, Y: np.ndarray, Zm: np.ma.MaskedArray, name: str, config: PlotConfig,
               norm: colors.Normalize):
    """3-D surface; gaps stay holes (NaN faces are dropped), values above zmax are clipped there."""
    zmax = config.zmax if config.zmax is not None else (norm.vmax if _family(name) in ("loss", "ratio") else None)
    Z = Zm.filled(np.nan).astype(np.float64)
    if zmax is not None:
        Z = np.where(Z > zmax, zmax, Z)
    if config.log:
        with np.errstate(divide="ignore", invalid="ignore"):
            Z = np.log10(Z)
        norm = colors.Normalize(math.log10(norm.vmin), math.log10(norm.vmax))
    surf = ax.plot_surface(X, Y, Z, cmap=config.cmap, norm=norm, linewidth=0, antialiased=True,
                           rstride=1, cstride=1)
    if np.isfinite(Z).any():
        ax.set_zlim(np.nanmin(Z), np.nanmax(Z) if np.nanmax(Z) > np.nanmin(Z) else np.nanmin(Z) + 1)
    if len(ax.figure.axes) > 1:  # several panels (the colour bar is added later)
        ax.set_title(_label(name), fontsize=10)
    ax.set_xlabel("x (α)")
    ax.set_ylabel("y (β)")
    # no z label: the colour bar names the value, and mplot3d draws a z label over its tick labels
    ax.set_box_aspect(None, zoom=0.92)
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
        if _family(name) == "percent":
            right = right or ax.twinx()
            lines += right.plot(surface.x, z, ls, color="tab:red", lw=1.6, label=_label(name))
        else:
            color = "tab:blue" if _family(name) == "loss" else "tab:purple"
            lines += ax.plot(surface.x, z, ls, color=color, lw=1.6, label=_label(name))
            if config.mark_min and (ext := _extremum(name, z)) is not None:
                ax.plot(surface.x[ext[0]], z[ext[0]], "*", color=color, ms=10, mec="white", zorder=5)
    left_names = [n for n in names if _family(n) != "percent"]
    ax.set_xlabel("α (distance along the direction)")
    ax.set_ylabel(", ".join(dict.fromkeys(_label(n).split(" ", 1)[-1] if _family(n) == "loss" else _label(n)
                                          for n in left_names)) or "value", color="tab:blue")
    if config.log:
        ax.set_yscale("log")
    if config.vmin is not None or config.vmax is not None:
        ax.set_ylim(config.vmin, config.vmax)
    if right is not None:
        right.set_ylabel("accuracy / error (%)", color="tab:red")
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
    fig.suptitle(_title(surface, names, config), fontsize=10)
    return fig


def plot_path(proj: Projection, config: PlotConfig = PlotConfig()) -> Figure:
    """The training path alone in its PCA plane (no surface), epochs labelled, axes in the
    plane's units with equal aspect; the explained variance goes on the axis labels."""
    fig = Figure(figsize=(5.8, 4.8), layout="constrained")
    ax = fig.add_subplot()
    draw_trajectory(ax, proj, color="tab:blue")
    ax.plot(0, 0, "+", color="black", ms=9, mew=1.4, zorder=8, label="final model")
    step = max(1, len(proj.x) // 12)
    for i in range(0, len(proj.x), step):
        ax.annotate(str(proj.epochs[i]), (proj.x[i], proj.y[i]), xytext=(4, 4), textcoords="offset points", fontsize=7)
    _axis_labels(ax, proj.attrs.get("explained_variance_ratio"))
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


def _is_trajectory_file(path: str | os.PathLike) -> bool:
    try:
        with h5py.File(path, "r") as f:
            return "proj_xcoord" in f and "xcoordinates" not in f
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# Interactive and ParaView output
# --------------------------------------------------------------------------------------------

def _json_ready(z: np.ndarray) -> list:
    """NaN/inf -> None, which Plotly draws as a gap (and which keeps the JSON valid)."""
    return np.where(np.isfinite(z), z, None).tolist()


def write_html(surface: Surface, path: str | os.PathLike, config: PlotConfig = PlotConfig(),
               trajectory: Projection | None = None) -> Path:
    """One self-contained page (plotly.js embedded, works offline): for 2-D a rotatable 3-D surface
    beside a contour map per value, for 1-D the curves. Plotly is imported here only, so the rest
    of the module works where it is not installed."""
    try:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
    except ImportError:
        raise ImportError("interactive HTML needs plotly (pip install plotly); PNG plots work without it") from None
    path = Path(path)
    names = list(config.values or (default_value(surface),))
    title = _title(surface, names, config).replace("\n", "<br>")
    if surface.y is None:
        names = list(config.values) if config.values else [n for n in surface.values if n.endswith(("_loss", "_acc"))] \
            or [default_value(surface)]
        fig = make_subplots(specs=[[{"secondary_y": True}]])
        for name in names:
            z = value_array(surface, name)
            fig.add_trace(go.Scatter(x=surface.x.tolist(), y=_json_ready(z), name=_label(name), mode="lines",
                                     line={"dash": "dash" if name.startswith("test") else "solid"}),
                          secondary_y=_family(name) == "percent")
        fig.update_xaxes(title_text="α")
        fig.update_yaxes(title_text="loss", type="log" if config.log else "linear", secondary_y=False)
        fig.update_yaxes(title_text="accuracy (%)", secondary_y=True)
    else:
        rows = len(names)
        fig = make_subplots(rows=rows, cols=2, specs=[[{"type": "surface"}, {"type": "xy"}]] * rows,
                            subplot_titles=[t for n in names for t in (f"{_label(n)} (3-D)", f"{_label(n)} (contour)")],
                            horizontal_spacing=0.06, vertical_spacing=0.08)
        for r, name in enumerate(names, start=1):
            X, Y, Z = surface_grid(surface, name)
            levels, norm = levels_for(name, Z, config)
            shown = Z.copy()
            zlabel = _label(name)
            if config.log:
                with np.errstate(divide="ignore", invalid="ignore"):
                    shown = np.log10(np.where(shown > 0, shown, np.nan))
                lo, hi = math.log10(norm.vmin), math.log10(norm.vmax)
                zlabel = f"log10 {zlabel}"
            else:
                lo, hi = norm.vmin, norm.vmax
            zmax = config.zmax if config.zmax is not None else (hi if _family(name) in ("loss", "ratio") else None)
            clipped = np.where(shown > zmax, zmax, shown) if zmax is not None else shown
            colorscale = config.cmap.capitalize() if config.cmap in ("viridis", "magma", "plasma", "inferno",
                                                                      "cividis") else "Viridis"
            hover = se_hover(surface, name)  # value ± SE where the surface has standard errors
            fig.add_trace(go.Surface(x=surface.x.tolist(), y=surface.y.tolist(), z=_json_ready(clipped),
                                     colorscale=colorscale, cmin=lo, cmax=hi, showscale=False, name=_label(name),
                                     **hover),
                          row=r, col=1)
            step = (hi - lo) / max(len(levels) - 1, 1)
            fig.add_trace(go.Contour(x=surface.x.tolist(), y=surface.y.tolist(), z=_json_ready(shown),
                                     colorscale=colorscale, zmin=lo, zmax=hi, connectgaps=False,
                                     contours={"start": lo, "end": hi, "size": step, "showlabels": True},
                                     colorbar={"title": {"text": zlabel}, "len": 1.0 / rows,
                                               "y": 1 - (r - 0.5) / rows}, name=_label(name), **hover),
                          row=r, col=2)
            if trajectory is not None:
                fig.add_trace(go.Scatter(x=trajectory.x.tolist(), y=trajectory.y.tolist(), mode="lines+markers",
                                         line={"color": "white", "width": 2}, marker={"size": 5, "color": "black"},
                                         text=[f"epoch {e}" for e in trajectory.epochs], name="training path"),
                              row=r, col=2)
            ext = _extremum(name, Z)
            if ext is not None:
                iy, ix = np.unravel_index(ext[0], Z.shape)
                fig.add_trace(go.Scatter(x=[float(surface.x[ix])], y=[float(surface.y[iy])], mode="markers",
                                         marker={"symbol": "star", "size": 13, "color": "red"},
                                         name=f"grid {ext[1]} {Z[iy, ix]:.3g}"), row=r, col=2)
            scene = "scene" if r == 1 else f"scene{r}"
            fig.update_layout({scene: {"xaxis_title": "α", "yaxis_title": "β", "zaxis_title": zlabel}})
        fig.update_layout(height=520 * rows, width=1200)
    fig.update_layout(title={"text": title, "font": {"size": 14}}, template="plotly_white")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)
    return path


def write_vtp(surface: Surface, path: str | os.PathLike, config: PlotConfig = PlotConfig()) -> Path:
    """ParaView PolyData (XML, ASCII): one quad per grid cell whose four corners are finite, z the
    value (log10 with ``config.log``; clipped at zmax), the value also as point data. The paper's
    3-D renderings were made from such files (the reference's h52vtp)."""
    name = (config.values or (default_value(surface),))[0]
    X, Y, Z = surface_grid(surface, name)
    z = Z.copy()
    if config.log:
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.log10(np.where(z > 0, z, np.nan))
    zmax = config.zmax if config.zmax is not None else (levels_for(name, Z, replace(config, log=False))[1].vmax
                                                         if _family(name) in ("loss", "ratio") else None)
    if zmax is not None and not config.log:
        z = np.where(z > zmax, zmax, z)
    ny, nx = z.shape
    ok = np.isfinite(z)
    quads = []
    for iy in range(ny - 1):
        for ix in range(nx - 1):
            if ok[iy, ix] and ok[iy, ix + 1] and ok[iy + 1, ix + 1] and ok[iy + 1, ix]:
                k = iy * nx + ix
                quads.append((k, k + 1, k + 1 + nx, k + nx))
    pts = np.stack([X.ravel(), Y.ravel(), np.where(ok, z, 0.0).ravel()], 1)
    vals = np.where(ok, z, 0.0).ravel()

    def fmt(a: np.ndarray) -> str:
        return " ".join(f"{v:.7g}" for v in np.asarray(a).ravel())

    conn = fmt(np.array(quads, dtype=np.int64).ravel()) if quads else ""
    offsets = fmt(4 * np.arange(1, len(quads) + 1)) if quads else ""
    text = (
        '<?xml version="1.0"?>\n<VTKFile type="PolyData" version="0.1" byte_order="LittleEndian">\n<PolyData>\n'
        f'<Piece NumberOfPoints="{nx * ny}" NumberOfVerts="0" NumberOfLines="0" NumberOfStrips="0" '
        f'NumberOfPolys="{len(quads)}">\n'
        f'<PointData Scalars="{name}"><DataArray type="Float64" Name="{name}" format="ascii">{fmt(vals)}'
        '</DataArray></PointData>\n'
        f'<Points><DataArray type="Float64" NumberOfComponents="3" format="ascii">{fmt(pts)}</DataArray></Points>\n'
        f'<Polys><DataArray type="Int64" Name="connectivity" format="ascii">{conn}</DataArray>\n'
        f'<DataArray type="Int64" Name="offsets" format="ascii">{offsets}</DataArray></Polys>\n'
        '</Piece>\n</PolyData>\n</VTKFile>\n')
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --------------------------------------------------------------------------------------------
# Files in, files out
# --------------------------------------------------------------------------------------------

def _default_kinds(surface: Surface) -> list[str]:
    return ["1d"] if surface.y is None else ["contour"]


def _outputs(surface: Surface, stem: Path, kinds: Sequence[str], config: PlotConfig, html: bool, vtp: bool
             ) -> list[tuple[str, Path]]:
    tag = "-".join(config.values) if config.values else ("curves" if surface.y is None else default_value(surface))
    log = "_log" if config.log else ""
    traj = "_path" if config.trajectory else ""
    jobs = [(k, stem.with_name(f"{stem.name}_{tag}_{k}{log}{traj}.png")) for k in kinds]
    if html:
        jobs.append(("html", stem.with_name(f"{stem.name}_{tag}{log}.html")))
    if vtp:
        jobs.append(("vtp", stem.with_name(f"{stem.name}_{tag}{log}.vtp")))
    return jobs


def plot_surface_file(path: str | os.PathLike, config: PlotConfig = PlotConfig(), kinds: Sequence[str] | None = None,
                      html: bool | None = None, vtp: bool = False, out: str | os.PathLike | None = None) -> list[Path]:
    """Draw a surface file; returns the files written.

    kinds None: contour (2-D) or 1d (1-D); ``"all"`` in kinds: every kind that fits the surface.
    html None: also write the interactive page when plotly is installed (True: required).
    out: a file name (one output only), or a directory; default next to the surface file, named
    ``<stem>_<value>_<kind>.png``. A trajectory file (``landscapes.trajectory``) instead of a
    surface draws the path alone.
    """
    if Path(path).is_file() and _is_trajectory_file(path):  # a path file alone: draw the path
        target = Path(out) if out is not None and Path(out).suffix else \
            (Path(out) if out is not None else Path(path).parent) / f"{Path(path).stem}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        plot_path(read_projection(path), config).savefig(target, dpi=config.dpi)
        return [target]
    surface = read_surface(path)
    kinds = list(kinds) if kinds else _default_kinds(surface)
    if "all" in kinds:
        kinds = ["1d"] if surface.y is None else list(KINDS_2D)
    for k in kinds:
        if k not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)} (or all); got {k!r}")
        if (k == "1d") != (surface.y is None):
            dim = "1-D" if surface.y is None else "2-D"
            fits = "1d" if surface.y is None else ", ".join(KINDS_2D)
            raise ValueError(f"{path} is a {dim} surface: --kind {k} does not apply; use {fits}")
    for v in config.values or ():
        value_array(surface, v)
    if html is None:
        try:
            import plotly  # noqa: F401
            html = True
        except ImportError:
            html = False
    trajectory = read_projection(config.trajectory) if config.trajectory else None
    if trajectory is not None and surface.y is None:
        raise ValueError("a trajectory is drawn on a 2-D plane; this surface is 1-D")
    src = Path(path)
    stem = src.with_suffix("")
    jobs = _outputs(surface, stem, kinds, config, html, vtp)
    if out is not None:
        out = Path(out)
        if out.suffix.lower() in (".png", ".pdf", ".svg", ".html", ".vtp"):
            if len(jobs) != 1:
                raise ValueError(f"--out {out} names one file but {len(jobs)} outputs are due "
                                 f"({', '.join(k for k, _ in jobs)}); give a directory instead")
            jobs = [(jobs[0][0], out)]
        else:
            jobs = [(k, out / p.name) for k, p in jobs]
    written = []
    for kind, target in jobs:
        target.parent.mkdir(parents=True, exist_ok=True)
        if kind == "html":
            written.append(write_html(surface, target, config, trajectory))
        elif kind == "vtp":
            written.append(write_vtp(surface, target, config))
        else:
            fig = plot_1d(surface, config) if kind == "1d" else plot_2d(surface, kind, config, trajectory)
            fig.savefig(target, dpi=config.dpi)
            written.append(target)
    return written


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m landscapes.plot", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("surface", help="surface .h5 (ours or the reference project's), or a trajectory .h5 "
                                   "(the path alone)")
    p.add_argument("--kind", action="append", choices=KINDS + ("all",),
                   help="repeatable; default contour (2-D) or 1d (1-D)")
    p.add_argument("--all", action="store_true", help="every kind that fits the surface")
    p.add_argument("--html", action="store_true", help="also an interactive Plotly page (self-contained)")
    p.add_argument("--vtp", action="store_true", help="also a ParaView .vtp surface")
    p.add_argument("--out", help="output file (one output) or directory")
    p.add_argument("--value", help="value(s) to draw, comma-separated for side-by-side panels, e.g. "
                                   "train_loss,test_loss; derived: train_err, eig_ratio (default: train_loss, "
                                   "or eig_ratio for a Hessian map)")
    p.add_argument("--vmin", type=float, help="lowest contour level / colour (default: 0.1 for losses)")
    p.add_argument("--vmax", type=float, help="highest contour level / colour (default: 10 for losses)")
    p.add_argument("--vlevel", type=float, help="spacing of contour levels (default: 0.5 for losses)")
    p.add_argument("--log", action="store_true", help="logarithmic colour scale and z axis")
    p.add_argument("--zmax", type=float, help="clip the 3-D surface at this value")
    p.add_argument("--cmap", default=PlotConfig.cmap, help="matplotlib colormap")
    p.add_argument("--dpi", type=int, default=PlotConfig.dpi)
    p.add_argument("--trajectory", metavar="PROJ.h5", help="training path to overlay (landscapes.trajectory)")
    p.add_argument("--title", help="replace the automatic title")
    p.add_argument("--no-min", dest="mark_min", action="store_false", help="do not mark the grid minimum")
    p.add_argument("--se", action="store_true", help="also map the standard error of each drawn value (surfaces "
                   "scanned with --precision)")
    p.add_argument("--list", action="store_true", help="print the file's values and attributes, draw nothing")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        if args.list:
            s = read_surface(args.surface)
            grid = f"{len(s.x)}" if s.y is None else f"{len(s.x)} x {len(s.y)}"
            print(f"{args.surface}: {grid} grid, {int(s.done.sum()) if s.done is not None else '?'} points done")
            for name in available_values(s):
                z = value_array(s, name)
                fin = z[np.isfinite(z)]
                rng = f"{fin.min():.4g} .. {fin.max():.4g}" if fin.size else "no finite values"
                print(f"  {name}: {rng}")
            for k, v in sorted(s.attrs.items()):
                if not isinstance(v, np.ndarray):
                    print(f"  @{k} = {str(v)[:100]}")
            return
        values = tuple(v.strip() for v in args.value.split(",") if v.strip()) if args.value else None
        config = PlotConfig(values=values, vmin=args.vmin, vmax=args.vmax, vlevel=args.vlevel, log=args.log,
                            cmap=args.cmap, dpi=args.dpi, zmax=args.zmax, trajectory=args.trajectory,
                            title=args.title, mark_min=args.mark_min)
        kinds = (args.kind or []) + (["all"] if args.all else [])
        written = plot_surface_file(args.surface, config, kinds or None, html=args.html or False, vtp=args.vtp,
                                    out=args.out)
        if args.se:  # the uncertainty map(s), one figure per value
            s = read_surface(args.surface)
            for v in config.values or (default_value(s),):
                written += plot_surface_file(args.surface, replace(config, values=(f"{v}_se",), vmin=None, vmax=None,
                                                                   vlevel=None, log=False), kinds or None,
                                             html=False, out=None if args.out and Path(args.out).suffix else args.out)
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    for path in written:
        print(path)


if __name__ == "__main__":
    main()

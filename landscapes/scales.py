"""What the matplotlib figures and the Plotly pages share, so that a PNG and a page of the same
surfaces read the same: the drawing options (:class:`PlotConfig`), one colour scale and one set of
contour levels for any number of panels (:func:`shared_scale`), the cap above which values are
drawn flat and marked, and the names and titles of values and models."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
from matplotlib import colormaps, colors, ticker

from .sampling import precision_note
from .surface import Surface
from .trajectory import Projection
from .values import value_family

# The paper's contour levels for losses (the reference's plot_2D defaults).
LOSS_LEVELS = (0.1, 10.0, 0.5)
# The reference draws |lambda_min / lambda_max| on a 0..0.5 colour scale.
RATIO_LEVELS = (0.0, 0.5, 0.025)
# A log scale draws a level every quarter decade (1, 1.78, 3.16, 5.62 x 10^k): evenly spaced in
# log10, which Plotly's contours need (start, end, size) and matplotlib's then match exactly.
LOG_LEVEL_STEP = 0.25
# Losses that span more than this many decades are drawn on a log scale unless told otherwise.
LOG_SPAN_DECADES = 2.0

__all__ = ["PlotConfig", "Scale", "LOSS_LEVELS", "RATIO_LEVELS", "shared_scale", "levels_for", "value_label",
           "model_label", "surface_title", "pc_ratios"]


@dataclass(frozen=True)
class PlotConfig:
    """How to draw. ``values`` None picks train_loss (or the eigenvalue ratio of a Hessian map);
    several values are drawn side by side on one colour scale (e.g. train and test loss).
    vmin/vmax/vlevel None: the paper's 0.1 / 10 / 0.5 for losses, 0 / 0.5 / 0.025 for the
    |min/max| eigenvalue ratio, the finite data range otherwise; on a log scale vlevel is the level
    spacing in decades (default 0.25). log None: a log scale for losses that span more than two
    decades, linear otherwise. zmax: the cap (default vmax for losses, 10 on the paper's scale):
    values above it are drawn at the cap, in a colour of their own on the pages, so a diverged
    corner does not flatten the rest. trajectory: a ``landscapes.trajectory`` file (or the
    reference's ``*_proj_cos.h5``) drawn over 2-D plots."""

    values: tuple[str, ...] | None = None
    vmin: float | None = None
    vmax: float | None = None
    vlevel: float | None = None
    log: bool | None = None
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
        if self.zmax is not None and self.log and self.zmax <= 0:
            raise ValueError(f"a log scale needs zmax > 0, got {self.zmax}")
        if self.dpi < 10:
            raise ValueError(f"dpi must be >= 10, got {self.dpi}")
        if self.cmap not in colormaps:
            raise ValueError(f"unknown colormap {self.cmap!r}; try viridis, magma, coolwarm, terrain")


@dataclass(frozen=True)
class Scale:
    """One colour scale for every panel of a figure or page. Colours run from ``lo`` to ``hi``;
    ``levels`` are the contour levels (evenly spaced, in log10 when ``log``); values above ``cap``
    (None: no cap) are drawn at the cap and marked."""

    log: bool
    lo: float
    hi: float
    levels: np.ndarray
    cap: float | None

    @property
    def norm(self) -> colors.Normalize:
        return colors.LogNorm(self.lo, self.hi) if self.log else colors.Normalize(self.lo, self.hi)

    def to_axis(self, v):
        """Value -> drawn coordinate (log10 on a log scale; non-positive values become NaN there)."""
        v = np.asarray(v, dtype=np.float64)
        if not self.log:
            return v
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log10(np.where(v > 0, v, np.nan))

    def ticks(self) -> np.ndarray:
        """Colour-bar ticks in value units: 1, 2, 5 per decade on a log scale, round steps otherwise."""
        if self.log:
            t = ticker.LogLocator(subs=(1.0, 2.0, 5.0)).tick_values(self.lo, self.hi)
        else:
            t = ticker.MaxNLocator(8).tick_values(self.lo, self.hi)
        t = t[(t >= self.lo * (1 - 1e-9)) & (t <= self.hi * (1 + 1e-9))] if self.log else \
            t[(t >= self.lo - 1e-9 * abs(self.hi - self.lo)) & (t <= self.hi + 1e-9 * abs(self.hi - self.lo))]
        if self.log and len(t) > 9:  # many decades: 1 and 5 only, then decades only
            t = t[np.isin(np.round(t / 10 ** np.floor(np.log10(t)), 6), (1.0, 5.0))]
            if len(t) > 9:
                t = t[np.isclose(t, 10 ** np.round(np.log10(t)))]
        return t


def _auto_log(family: str, finite: np.ndarray, config: PlotConfig, cap: float | None) -> bool:
    """Losses whose drawn range (vmin..vmax, else the data up to the cap) spans more than two decades."""
    pos = finite[finite > 0]
    if family != "loss" or pos.size < 2 and (config.vmin is None or config.vmax is None):
        return False
    lo = config.vmin if config.vmin is not None else float(pos.min())
    hi = config.vmax if config.vmax is not None else min(float(pos.max()), cap if cap is not None else math.inf)
    return lo > 0 and hi > lo and math.log10(hi / lo) > LOG_SPAN_DECADES


def shared_scale(name: str, data: Sequence[np.ndarray] | np.ndarray, config: PlotConfig) -> Scale:
    """The colour scale and contour levels for ``data`` (one array, or several panels' arrays that
    must read on one scale) of value ``name``'s family."""
    arrays = [data] if isinstance(data, np.ndarray) else list(data)
    finite = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays]) if arrays else np.zeros(0)
    finite = finite[np.isfinite(finite)]
    family = value_family(name)
    defaults = {"loss": LOSS_LEVELS, "ratio": RATIO_LEVELS}.get(family)
    cap = config.zmax if config.zmax is not None else (config.vmax if config.vmax is not None else
                                                        (defaults[1] if family == "loss" else None))
    log = config.log if config.log is not None else _auto_log(family, finite, config, cap)
    if log:
        pos = finite[finite > 0]
        lo = config.vmin if config.vmin is not None else (float(pos.min()) if pos.size else 1e-3)
        hi = config.vmax if config.vmax is not None else (float(pos.max()) if pos.size else lo * 10)
        if cap is not None and config.vmax is None:
            hi = min(hi, cap)
        if not hi > lo:
            hi = lo * 10
        step = config.vlevel or LOG_LEVEL_STEP
        if config.vmin is None:  # start on a level, so the lowest colour band is a whole band
            lo = min(lo, 10.0 ** (math.floor(math.log10(lo) / step + 1e-9) * step))
        k = np.arange(math.ceil(math.log10(lo) / step - 1e-9), math.floor(math.log10(hi) / step + 1e-9) + 1)
        if k.size > 200:
            raise ValueError(f"vlevel {step:g} gives {k.size} log contour levels between {lo:g} and {hi:g}; "
                             f"use a larger --vlevel (decades per level on a log scale)")
        levels = 10.0 ** (k * step) if k.size >= 2 else np.geomspace(lo, hi, 3)
        return Scale(True, lo, hi, levels, cap)
    lo = config.vmin if config.vmin is not None else (defaults[0] if defaults else
                                                      (float(finite.min()) if finite.size else 0.0))
    hi = config.vmax if config.vmax is not None else (defaults[1] if defaults else
                                                      (float(finite.max()) if finite.size else 1.0))
    if cap is not None and config.vmax is None and family == "loss" and cap > lo:
        hi = cap  # colours reach the cap; above it the pages mark values as capped
    if not hi > lo:  # a constant surface
        lo, hi = lo - 0.5 * max(abs(lo), 1.0), hi + 0.5 * max(abs(hi), 1.0)
    paper = defaults is not None and (lo, hi) == defaults[:2]
    step = config.vlevel if config.vlevel is not None else (defaults[2] if paper else None)
    if step is not None:
        if (hi - lo) / step > 200:  # checked before np.arange allocates them (1e-9 would need 74 GiB)
            raise ValueError(f"vlevel {step:g} gives {(hi - lo) / step:.3g} contour levels between {lo:g} and "
                             f"{hi:g}; use a larger --vlevel")
        levels = np.arange(lo, hi + 1e-9 * step, step)
        if levels.size < 2:
            levels = np.array([lo, hi])
    else:
        levels = ticker.MaxNLocator(16).tick_values(lo, hi)
    return Scale(False, lo, hi, np.asarray(levels, dtype=np.float64), cap)


def levels_for(name: str, data: np.ndarray, config: PlotConfig) -> tuple[np.ndarray, colors.Normalize]:
    """Contour levels and the colour normalization of one array (see :func:`shared_scale`)."""
    scale = shared_scale(name, data, config)
    return scale.levels, scale.norm


def value_label(name: str, tex: bool = True) -> str:
    """How a value is named on an axis: mathtext for matplotlib (``tex``), HTML for Plotly."""
    split, _, what = name.rpartition("_")
    if name.endswith("eig_ratio"):
        split, what = name[:-len("eig_ratio")].strip(), "eig_ratio"
    lam = {"min": r"$\lambda_{\min}$", "max": r"$\lambda_{\max}$"} if tex else \
        {"min": "λ<sub>min</sub>", "max": "λ<sub>max</sub>"}
    nice = {"loss": "loss", "acc": "accuracy (%)", "err": "error (%)",
            "eig_ratio": f"|{lam['min']} / {lam['max']}|"}.get(what)
    if name == "max_eig":
        return f"{lam['max']} (Hessian)"
    if name == "min_eig":
        return f"{lam['min']} (Hessian)"
    if nice is None:
        return name.replace("_", " ")
    return f"{split} {nice}".strip()


def model_label(surface: Surface) -> str:
    """The model a surface belongs to, as a legend names it: ``resnet56`` or ``resnet56_noshort``
    from the file's attributes, else the file name."""
    return str(surface.attrs.get("model") or Path(surface.path).stem)


def surface_title(surface: Surface, names: Sequence[str], config: PlotConfig) -> str:
    """Two lines: the model and its data, then what is drawn on which grid and plane."""
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
    shown = ", ".join(value_label(v) for v in names) if len(names) <= 2 else "loss and accuracy"
    second = f"{shown} · {grid} grid" + (f" · {dirs} directions" if dirs and "reference" not in dirs else "")
    if "reference" in dirs:
        second += " · reference-project file"
    note = precision_note(surface)  # adaptive sample counts: at what precision (partial files too)
    return f"{first}\n{second}" + (f"\n{note}" if note else "")


def pc_ratios(surface: Surface, trajectory: Projection | None) -> np.ndarray | None:
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


def axis_titles(ratios: Sequence[float] | np.ndarray | None) -> tuple[str, str]:
    """PCA planes say how much of the path's variance each axis holds; random planes name α, β."""
    if ratios is not None and len(ratios) >= 2:
        return f"1st PC: {100 * ratios[0]:.1f} % of variance", f"2nd PC: {100 * ratios[1]:.1f} % of variance"
    return "α (x direction)", "β (y direction)"

"""Values of a surface, stored and derived: the error (100 - accuracy) and the Hessian's
|min / max| eigenvalue ratio are computed from what a scan stored, here and nowhere else, so the
pictures, the studies and the checks all see the same numbers. Nothing here draws."""
from __future__ import annotations

import numpy as np

from .surface import Surface

__all__ = ["available_values", "default_value", "value_array", "surface_grid", "value_family", "best_point"]


def available_values(surface: Surface) -> list[str]:
    """Stored values plus those derived from them: ``<split>_err`` = 100 - acc, and ``eig_ratio`` =
    |min_eig / max_eig| when both eigenvalues are stored."""
    names = list(surface.values)
    names += [n[:-4] + "_err" for n in surface.values if n.endswith("_acc") and n[:-4] + "_err" not in names]
    if "max_eig" in surface.values and "min_eig" in surface.values:
        names.append("eig_ratio")
    return names


def default_value(surface: Surface) -> str:
    """train_loss when stored, else the eigenvalue ratio of a Hessian map, else the first loss."""
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


def value_family(name: str) -> str:
    """What kind of number a value is: "loss", "percent" (accuracy, error), "ratio" (eigenvalue
    ratio) or "other". Values of one family can share a colour scale."""
    if name.endswith("_loss") or name == "loss":
        return "loss"
    if name.endswith(("_acc", "_err")):
        return "percent"
    if name == "eig_ratio" or name.endswith(" eig_ratio"):
        return "ratio"
    return "other"


def best_point(name: str, Z: np.ndarray) -> tuple[int, str] | None:
    """Flat index of the best finite point: min for losses and errors, max for accuracy; None for
    values without a "best" (eigenvalues and their ratio)."""
    if not np.isfinite(Z).any() or value_family(name) not in ("loss", "percent"):
        return None
    if name.endswith("_acc"):
        return int(np.nanargmax(Z)), "max"
    return int(np.nanargmin(Z)), "min"

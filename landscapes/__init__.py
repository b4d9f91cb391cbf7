"""Loss landscapes of trained networks: directions in weight space, a batched evaluation engine,
resumable surface files (the reference project's HDF5 layout), scans, plots and trajectories.

Scans: ``from landscapes.scan import ScanConfig, scan`` (or ``python -m landscapes.scan``).
"""
from .directions import (DirectionConfig, create_directions, load_directions, normalize_direction,
                         random_direction, save_directions, target_direction)
from .surface import Surface, SurfaceStore, read_surface, write_surface

__all__ = ["DirectionConfig", "create_directions", "load_directions", "normalize_direction", "random_direction",
           "save_directions", "target_direction", "Surface", "SurfaceStore", "read_surface", "write_surface",
           "ScanConfig", "compute_surface"]


def __getattr__(name: str):
    # Lazy, so that `python -m landscapes.scan` does not find landscapes.scan pre-imported. The
    # functions scan() and interpolate() share their modules' names: import them from there.
    if name in ("ScanConfig", "compute_surface"):
        from . import scan as _scan
        return getattr(_scan, name)
    raise AttributeError(f"module 'landscapes' has no attribute {name!r}")

"""ParaView PolyData (.vtp) of a surface: the paper's 3-D renderings were made from such files
(the reference's h52vtp)."""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from .scales import PlotConfig, shared_scale
from .surface import Surface
from .values import default_value, surface_grid, value_family

__all__ = ["write_vtp"]


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
    zmax = config.zmax if config.zmax is not None else (shared_scale(name, Z, replace(config, log=False)).hi
                                                         if value_family(name) in ("loss", "ratio") else None)
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

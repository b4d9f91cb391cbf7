"""Pictures of surface files, from the command line: contour, filled contour, heat map, 3-D surface
and 1-D curves (PNG, :mod:`landscapes.drawing`), interactive pages (:mod:`landscapes.pages`),
ParaView .vtp (:mod:`landscapes.vtp`), and PCA training paths drawn over a landscape. Several
surfaces make one comparison on one colour scale. It only reads files: computing never plots,
plotting never computes.

    python -m landscapes.plot SURFACE.h5 [--kind contour|contourf|heat|surface|1d] [--html] [--out F]
    python -m landscapes.plot A.h5 B.h5 [C.h5 ...] --html --out PAGE.html
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from .pages import write_comparison, write_html
from .drawing import KINDS, KINDS_2D, draw_trajectory, plot_1d, plot_2d, plot_compare, plot_path
from .scales import LOSS_LEVELS, RATIO_LEVELS, PlotConfig, levels_for, shared_scale
from .surface import Surface, read_surface
from .trajectory import read_projection
from .values import available_values, default_value, surface_grid, value_array
from .vtp import write_vtp

__all__ = ["PlotConfig", "KINDS", "surface_grid", "value_array", "available_values", "default_value", "levels_for",
           "shared_scale", "plot_2d", "plot_compare", "plot_1d", "plot_path", "draw_trajectory", "write_html",
           "write_comparison", "write_vtp", "plot_surface_file", "compare_surface_files", "main",
           "LOSS_LEVELS", "RATIO_LEVELS"]


def _is_trajectory_file(path: str | os.PathLike) -> bool:
    try:
        with h5py.File(path, "r") as f:
            return "proj_xcoord" in f and "xcoordinates" not in f
    except OSError:
        return False


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
                      html: bool | None = None, vtp: bool = False, out: str | os.PathLike | None = None,
                      self_contained: bool = False) -> list[Path]:
    """Draw a surface file; returns the files written.

    kinds None: contour (2-D) or 1d (1-D); ``"all"`` in kinds: every kind that fits the surface.
    html None: also write the interactive page when plotly is installed (True: required).
    out: a file name (one output only), or a directory; default next to the surface file, named
    ``<stem>_<value>_<kind>.png``; an ``.html`` file name with ``html`` and no kinds asked for writes
    the page alone. Pages share one ``plotly.min.js`` per folder unless ``self_contained``. A
    trajectory file (``landscapes.trajectory``) instead of a surface draws the path alone.
    """
    if Path(path).is_file() and _is_trajectory_file(path):  # a path file alone: draw the path
        target = Path(out) if out is not None and Path(out).suffix else \
            (Path(out) if out is not None else Path(path).parent) / f"{Path(path).stem}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        plot_path(read_projection(path), config).savefig(target, dpi=config.dpi)
        return [target]
    surface = read_surface(path)
    page_only = html and not kinds and out is not None and Path(out).suffix.lower() == ".html"
    kinds = list(kinds) if kinds else ([] if page_only else _default_kinds(surface))
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
            written.append(write_html(surface, target, config, trajectory, self_contained))
        elif kind == "vtp":
            written.append(write_vtp(surface, target, config))
        else:
            fig = plot_1d(surface, config) if kind == "1d" else plot_2d(surface, kind, config, trajectory)
            fig.savefig(target, dpi=config.dpi)
            written.append(target)
    return written


def compare_surface_files(paths: Sequence[str | os.PathLike], config: PlotConfig = PlotConfig(),
                          kinds: Sequence[str] = (), html: bool = True, out: str | os.PathLike | None = None,
                          labels: Sequence[str] | None = None, self_contained: bool = False) -> list[Path]:
    """One value of several 2-D surfaces on one colour scale: a comparison page (``html``) and one
    multi-panel PNG per kind. out: the page's file name (``.html``), or a directory; default
    ``<stemA>_vs_<stemB>..._<value>`` beside the first file."""
    surfaces = [read_surface(p) for p in paths]
    for s in surfaces:
        if s.y is None:
            raise ValueError(f"{s.path} is a 1-D surface; comparisons draw 2-D surfaces")
        for v in config.values or ():
            value_array(s, v)
    for k in kinds:
        if k not in KINDS_2D:
            raise ValueError(f"a comparison draws 2-D kinds ({', '.join(KINDS_2D)}); got {k!r}")
    if not html and not kinds:
        raise ValueError("nothing to write: add --html or a --kind")
    name = (config.values or (default_value(surfaces[0]),))[0]
    stem = "_vs_".join(Path(p).stem for p in paths) + f"_{name}"
    if out is not None and Path(out).suffix.lower() == ".html":
        page, folder = Path(out), Path(out).parent
        stem = page.stem
    else:
        folder = Path(out) if out is not None else Path(paths[0]).parent
        page = folder / f"{stem}.html"
    written = [write_comparison(surfaces, page, config, labels, self_contained)] if html else []
    for kind in kinds:
        target = folder / f"{stem}_{kind}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        plot_compare(surfaces, kind, config, labels).savefig(target, dpi=config.dpi)
        written.append(target)
    return written


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m landscapes.plot", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("surface", nargs="+", help="surface .h5 (ours or the reference project's), or a trajectory .h5 "
                                              "(the path alone); several surfaces: one comparison on one scale")
    p.add_argument("--kind", action="append", choices=KINDS + ("all",),
                   help="repeatable; default contour (2-D) or 1d (1-D); with several surfaces, none unless given")
    p.add_argument("--all", action="store_true", help="every kind that fits the surface")
    p.add_argument("--html", action="store_true", help="also an interactive Plotly page (plotly.min.js written "
                                                       "once beside it)")
    p.add_argument("--self-contained", action="store_true", help="embed plotly.js in the page (one file to e-mail)")
    p.add_argument("--label", action="append", help="a surface's name on a comparison (repeat, in file order; "
                                                    "default: its model)")
    p.add_argument("--vtp", action="store_true", help="also a ParaView .vtp surface")
    p.add_argument("--out", help="output file (one output) or directory")
    p.add_argument("--value", help="value(s) to draw, comma-separated for side-by-side panels, e.g. "
                                   "train_loss,test_loss; derived: train_err, eig_ratio (default: train_loss, "
                                   "or eig_ratio for a Hessian map)")
    p.add_argument("--vmin", type=float, help="lowest contour level / colour (default: 0.1 for losses)")
    p.add_argument("--vmax", type=float, help="highest contour level / colour (default: 10 for losses)")
    p.add_argument("--vlevel", type=float, help="spacing of contour levels (default: 0.5 for losses; decades "
                                                "per level on a log scale, 0.25)")
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--log", dest="log", action="store_true", default=None,
                       help="logarithmic colour scale and z axis (default: when losses span > 2 decades)")
    scale.add_argument("--linear", dest="log", action="store_false", help="linear colour scale and z axis")
    p.add_argument("--cap", "--zmax", dest="zmax", type=float,
                   help="draw values above this at the cap, marked (default: vmax for losses, 10)")
    p.add_argument("--cmap", default=PlotConfig.cmap, help="matplotlib colormap")
    p.add_argument("--dpi", type=int, default=PlotConfig.dpi)
    p.add_argument("--trajectory", metavar="PROJ.h5", help="training path to overlay (landscapes.trajectory)")
    p.add_argument("--title", help="replace the automatic title")
    p.add_argument("--no-min", dest="mark_min", action="store_false", help="do not mark the grid minimum")
    p.add_argument("--se", action="store_true", help="also map the standard error of each drawn value (surfaces "
                   "scanned with --precision)")
    p.add_argument("--list", action="store_true", help="print the file's values and attributes, draw nothing")
    return p


def _list(path: str) -> None:
    s = read_surface(path)
    grid = f"{len(s.x)}" if s.y is None else f"{len(s.x)} x {len(s.y)}"
    print(f"{path}: {grid} grid, {int(s.done.sum()) if s.done is not None else '?'} points done")
    for name in available_values(s):
        z = value_array(s, name)
        fin = z[np.isfinite(z)]
        rng = f"{fin.min():.4g} .. {fin.max():.4g}" if fin.size else "no finite values"
        print(f"  {name}: {rng}")
    for k, v in sorted(s.attrs.items()):
        if not isinstance(v, np.ndarray):
            print(f"  @{k} = {str(v)[:100]}")


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        if args.list:
            for path in args.surface:
                _list(path)
            return
        values = tuple(v.strip() for v in args.value.split(",") if v.strip()) if args.value else None
        config = PlotConfig(values=values, vmin=args.vmin, vmax=args.vmax, vlevel=args.vlevel, log=args.log,
                            cmap=args.cmap, dpi=args.dpi, zmax=args.zmax, trajectory=args.trajectory,
                            title=args.title, mark_min=args.mark_min)
        kinds = (args.kind or []) + (["all"] if args.all else [])
        if len(args.surface) > 1:
            if "all" in kinds:
                kinds = [k for k in kinds if k != "all"] + list(KINDS_2D)
            written = compare_surface_files(args.surface, config, list(dict.fromkeys(kinds)), html=args.html,
                                            out=args.out, labels=args.label, self_contained=args.self_contained)
        else:
            written = plot_surface_file(args.surface[0], config, kinds or None, html=args.html or False,
                                        vtp=args.vtp, out=args.out, self_contained=args.self_contained)
            if args.se:  # the uncertainty map(s), one figure per value
                s = read_surface(args.surface[0])
                for v in config.values or (default_value(s),):
                    written += plot_surface_file(args.surface[0], replace(config, values=(f"{v}_se",), vmin=None,
                                                                          vmax=None, vlevel=None, log=False),
                                                 kinds or None, html=False,
                                                 out=None if args.out and Path(args.out).suffix else args.out)
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    for path in written:
        print(path)

if __name__ == "__main__":
    main()

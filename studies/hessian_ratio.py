"""Li et al. 2018, Sec. 6: is a convex-looking 2-D slice really convex? At each point of the slice the
top and bottom Hessian eigenvalues (over all weight directions) give |lambda_min / lambda_max|: near 0
the loss is locally convex, large values mean strong negative curvature the slice does not show.
ResNets stay near 0 around the minimizer; nets without skip connections do not.

    python studies/hessian_ratio.py [--quick | --smoke]
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from landscapes.hessian import HessianConfig, HessianScanConfig, hessian_scan
from landscapes.plot import PlotConfig, plot_compare
from models.cli import fail
from studies.cache import run_path, split_size, trained_record
from studies.common import add_depths_option, depths_left_note, parse_args, selected_depths
from studies.recipes import landscape_label, landscape_net, training_recipe
from studies.report import Timer, compute_note, study_header, write_json, write_readme
from studies.scans import replacing_conflicts, scan_config
from studies.stats import final_train_error, fmt_error_se

NAME = "hessian_ratio"
CONVEX = 0.05  # a point counts as "locally convex" when |lambda_min / lambda_max| is below this


@dataclass(frozen=True)
class Settings:
    depths: tuple[int, ...]
    grid: str
    samples: int            # fixed training subset: every Hessian-vector product passes over it
    max_iter: int           # Hessian-vector products per point (Lanczos)
    tol: float


MODES = {
    "full": Settings((20, 56, 110), "-1:1:21", 4096, 100, 1e-3),
    # One point costs 10-20 products: ~1.5 s for ResNet-20 on 16 MNIST images with one thread, ~3x that
    # for ResNet-56, so 5x5 maps of both pairs take ~6 min. The grid lies on resnet_vs_noshort's.
    "quick": Settings((20, 56), "-0.3:0.3:5", 16, 20, 1e-2),
    # The cpu tier: 9x9 on the paper's [-1, 1]^2 (the same plane as resnet_vs_noshort's 31x31; the grids
    # share the centre and the corners) over 128 training images.
    "cpu": Settings((20, 56), "-1:1:9", 128, 20, 1e-2),
    "smoke": Settings((8,), "-1:1:3", 8, 12, 1e-2),
}


def ratio_stats(surface: Any) -> dict[str, Any]:
    """The map in numbers: ratio at the center (the grid's middle point) and over the grid,
    share of locally convex points, eigenvalues at the center, points whose Lanczos converged."""
    mx, mn = surface.values["max_eig"], surface.values["min_eig"]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.abs(mn / mx)
    iy, ix = len(surface.y) // 2, len(surface.x) // 2
    q25, q75 = np.nanpercentile(ratio, [25, 75])
    return {"ratio_center": float(ratio[iy, ix]), "ratio_median": float(np.nanmedian(ratio)),
            "ratio_q25": float(q25), "ratio_q75": float(q75),
            "ratio_max": float(np.nanmax(ratio)), "convex_share": float(np.nanmean(ratio < CONVEX)),
            "max_eig_center": float(mx[iy, ix]), "min_eig_center": float(mn[iy, ix]),
            "converged": int(np.nansum(surface.values["hessian_converged"])), "points": int(ratio.size),
            "hvps_mean": float(np.nanmean(surface.values["hessian_hvps"]))}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(NAME, __doc__.split("\n\n")[0], argv, lambda p: add_depths_option(p, MODES))
    s = MODES[args.mode]
    s = replace(s, depths=selected_depths(args, s.depths))
    template = training_recipe(args)
    hcfg = HessianConfig(max_iter=s.max_iter, tol=s.tol, batch_size=min(128, s.samples), seed=args.seed,
                         progress=args.mode != "smoke")
    records, maps = [], {}
    try:
        with Timer() as timer:
            for depth in s.depths:
                for residual in (True, False):
                    rec = trained_record(landscape_net(args, depth, residual), args.runs,
                                         label=landscape_label(depth, residual), depth=depth, residual=residual)
                    out = args.out / "surfaces" / f"hessian_{rec['model']}.h5"
                    # The plane of resnet_vs_noshort_landscape's contours: same checkpoint, seed, direction file.
                    config = scan_config(args, run_path(rec), out, x=s.grid, y=s.grid, samples=s.samples)
                    with Timer() as t:
                        surface = replacing_conflicts(lambda c: hessian_scan(HessianScanConfig(c, hcfg)), config)
                    maps[rec["label"]] = surface
                    del rec["history"][:-1]
                    rec.update(surface=f"surfaces/{out.name}", seconds=t.seconds,
                               seconds_per_point=surface.attrs.get("seconds_per_point"), **ratio_stats(surface))
                    records.append(rec)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    figures = plot(maps, s, args.out, template.dataset)
    result = {**study_header(args, [args.seed], split_size(template, "train"), split_size(template, "test")),
              "dataset": template.dataset, "grid": s.grid, "samples": s.samples,
              "hessian": {"method": hcfg.method, "max_iter": hcfg.max_iter, "tol": hcfg.tol, "params": hcfg.params},
              "convex_threshold": CONVEX, "seed": args.seed,
              "seconds": timer.seconds, "threads": torch.get_num_threads(), "nets": records}
    write_json(args.out / "results.json", result)
    table = [{"net": r["label"], "train error % (eval mode)": final_train_error(r),
              "test error % (± binomial SE)": fmt_error_se(r["final_test_error"], r["test_samples_n"]),
              "λmax at center": r["max_eig_center"],
              "λmin at center": r["min_eig_center"], "ratio at center": r["ratio_center"],
              "median ratio": r["ratio_median"], "max ratio": r["ratio_max"],
              f"share < {CONVEX}": r["convex_share"], "converged": f"{r['converged']}/{r['points']}",
              "s/point": r["seconds_per_point"]} for r in records]
    write_readme(args, "Hessian eigenvalue ratio |λmin/λmax| over the landscape (Li et al. 2018, Sec. 6)",
                 "Two random directions can hide negative curvature, so Li et al. map |λmin/λmax| of the full "
                 "Hessian over the plotted region: for ResNets it is near zero (locally convex) in the region around "
                 "the minimizer that looks convex in the contour plots; the chaotic landscapes of deep nets without "
                 "skip connections have large ratios (strong negative curvature) almost everywhere.",
                 {"Eigenvalues and ratios": table}, figures, describe(records), notes(args, s) + "\n\n" + compute_note(
                     sum(r["wall_seconds"] for r in records), maps.values()), timer.seconds)
    return result


def plot(maps: dict[str, Any], s: Settings, out: Path, dataset: str) -> list[str]:
    """One figure: a heat map of the ratio per net (two per row), all on the paper's 0..0.5 colour
    scale and one frame, points where Lanczos did not converge crossed out (landscapes.plot)."""
    title = (rf"$|\lambda_{{\min}} / \lambda_{{\max}}|$ of the Hessian over the {s.grid.rsplit(':', 1)[1]}² slice "
             f"({dataset}, {s.samples} training images per point)")
    fig = plot_compare(list(maps.values()), "heat", PlotConfig(values=("eig_ratio",), vmin=0.0, vmax=0.5, title=title),
                       labels=list(maps), ncols=2)
    fig.savefig(out / "eig_ratio.png", dpi=110)
    return ["eig_ratio.png"]


def describe(records: list[dict[str, Any]]) -> str:
    lines = [f"- {r['label']}: |λmin/λmax| = {r['ratio_center']:.3f} at the center (λmax {r['max_eig_center']:.3g}, "
             f"λmin {r['min_eig_center']:.3g}), median {r['ratio_median']:.3f} and max {r['ratio_max']:.3f} over the "
             f"grid; {100 * r['convex_share']:.0f}% of the points below {CONVEX}; Lanczos converged at "
             f"{r['converged']}/{r['points']} points." for r in records]
    by = {(r["depth"], r["residual"]): r for r in records}
    for d in sorted({r["depth"] for r in records}):
        a, b = by[d, True], by[d, False]
        more = b["ratio_median"] > a["ratio_median"]
        apart = b["ratio_q25"] > a["ratio_q75"]
        lines.append(f"- Depth {d}: the median ratio is {'higher' if more else '**not higher**'} without skips "
                     f"({b['ratio_median']:.3f}, interquartile range {b['ratio_q25']:.3f}-{b['ratio_q75']:.3f} over "
                     f"the grid, vs {a['ratio_median']:.3f}, {a['ratio_q25']:.3f}-{a['ratio_q75']:.3f})"
                     + (("; the interquartile ranges do not overlap." if apart else
                         "; the interquartile ranges overlap, so the maps differ less than they vary across the grid.")
                        if more else ", unlike the paper's deep noshort nets."))
    depths = sorted({r["depth"] for r in records})
    if len(depths) > 1:
        gap = {d: by[d, False]["ratio_median"] - by[d, True]["ratio_median"] for d in depths}
        grows = gap[depths[-1]] > gap[depths[0]]
        lines.append(f"- The gap of the medians, without minus with skips, is "
                     f"{', '.join(f'{gap[d]:+.3f} at depth {d}' for d in depths)}: it "
                     + ("grows with depth, as the paper has it" if grows else
                        "does **not** grow with depth, **unlike the paper**")
                     + "; one net per configuration and one plane, so no seed or direction spread is measured.")
    for r in records:
        if final_train_error(r) > 50:
            lines.append(f"- Caveat: {r['label']} barely trained ({final_train_error(r):.0f}% training error), "
                         f"so its "
                         f"map describes a point far from any minimum, where negative curvature is to be expected; the "
                         f"paper's noshort nets are trained to low loss.")
    return "\n".join(lines)


def notes(args: Any, s: Settings) -> str:
    parts = [f"Eigenvalues: `landscapes.hessian` (Lanczos on Hessian-vector products by double backward, "
             f"up to {s.max_iter} products per point, residual tolerance {s.tol}) of the mean cross-entropy over a "
             f"fixed subset of the first {s.samples} training images, w.r.t. the conv and linear weights (as the "
             f"reference code); BN in eval mode. The grid {s.grid} lies in the same plane as the loss contours of "
             f"`resnet_vs_noshort_landscape` (same checkpoints, seed {args.seed} and filter-normalized direction "
             f"files). Maps in `surfaces/hessian_*.h5` (values max_eig, min_eig; `python -m landscapes.plot` draws "
             f"them)."]
    left = depths_left_note(args, MODES[args.mode].depths, s.depths, "mapped")
    if left:
        parts.append(left)
    if args.mode == "quick":
        n = s.grid.rsplit(":", 1)[1]
        parts.append(f"**Scaled down for 2 CPU cores**: the Hessian costs 10-20 Hessian-vector products per point, "
                     f"so the quick maps are {n}x{n} on [-0.3, 0.3]² (the basin of the short-trained nets, see "
                     f"resnet_vs_noshort_landscape) over {s.samples} MNIST images, for the ResNet-20 and ResNet-56 "
                     f"pairs of the shared quick recipe, not ResNet-20/56/110 on CIFAR-10 over [-1, 1]². The paper "
                     f"expects little difference at depth 20 (even its noshort net looks convex there) and a large "
                     f"one at 56. {s.samples} images make these the eigenvalues of a very small loss; the reference "
                     f"code used a few thousand. The noshort-56 net is barely trained (see the test errors), so its "
                     f"map is that of a point far from any minimum.")
    parts.append("Full mode (`python studies/hessian_ratio.py`) maps ResNet-20/56/110 and their noshort twins "
                 "(CIFAR-10, "
                 f"{MODES['full'].grid} grid, {MODES['full'].samples} images per point, up to "
                 f"{MODES['full'].max_iter} products); it needs a GPU and was not run here.")
    return "\n\n".join(parts)


if __name__ == "__main__":
    main()

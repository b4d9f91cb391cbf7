"""Li et al. 2018, Fig. 5-6: filter-normalized 2-D loss contours and 3-D surfaces of ResNet-20/56/110
and their twins without skip connections. Shallow nets look convex either way; without skips the
landscape of deep nets turns chaotic, with skips it stays smooth.

    python studies/resnet_vs_noshort_landscape.py [--quick | --smoke]
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from landscapes.plot import PlotConfig, plot_compare, write_comparison
from landscapes.sampling import SamplingConfig, sampling_summary
from models.cli import fail
from models.train import warmup_enabled

from studies.cache import run_path, split_size, trained_record
from studies.common import add_depths_option, depths_left_note, parse_args, selected_depths
from studies.recipes import LANDSCAPE_TRAINING, landscape_label, landscape_net, training_recipe
from studies.report import Timer, compute_note, write_json, write_readme
from studies.scans import scan_run
from studies.stats import error_diff_se, final_train_error, fmt_error_se

NAME = "resnet_vs_noshort_landscape"
# Training error (%) above which a scanned net counts as untrained: its slice is not the paper's figure.
UNTRAINED_ERROR_PCT = 50.0

# Li et al. 2018 (Table 1 / Fig. 5): CIFAR-10 test error (%) of the scanned nets. As quoted in the
# issue; we could not read the paper's table from here to check them digit by digit.
PAPER_TEST_ERROR = {(20, True): 7.37, (20, False): 8.18, (56, True): 5.89, (56, False): 13.31,
                    (110, True): 5.06, (110, False): 16.44}


@dataclass(frozen=True)
class Settings:
    """What a mode scans: depths, grid (START:STOP:NUM per axis), training images per point."""

    depths: tuple[int, ...]
    grid: str
    samples: int | None
    html_depth: int  # the pair drawn as interactive 3-D surfaces in one HTML page
    sampling: SamplingConfig | None = None  # adaptive sample counts (None: every point sees all images)


MODES = {
    # The paper: 51x51 on [-1, 1]^2 over all 50k CIFAR-10 training images, nets trained 300 epochs
    # (SGD, batch 128, lr 0.1, weight decay 5e-4, lr /10 at epochs 150, 225 and 275).
    "full": Settings((20, 56, 110), "-1:1:51", None, 56),
    # 2 shared CPU cores: ResNet-110 and a 51x51 grid are out of reach; 13x13 over 256 MNIST training
    # images keeps both pairs at ~7 min (ResNet-56: ~0.9 s per point). Nets trained for 80 steps are far
    # sharper at the filter-normalized scale than the paper's (a first run on [-1, 1]^2 measured losses of
    # 6e3-1.6e10 at the corners, 1e2-3e5 at |alpha| = |beta| = 0.5), so the grid spans their basin.
    "quick": Settings((20, 56), "-0.3:0.3:13", 256, 56),
    # The cpu tier: the paper's scale ([-1, 1]^2, filter-normalized, biases and BN ignored) on a 31x31 grid
    # over 2,000 MNIST training images, for the converged nets of the degradation study. Every point whose
    # loss is below 10 (the contour plots' top level) is the mean over all 2,000 images; a point whose
    # loss lies more than 3 SE above 10 stops early, after 128 images or a doubling of them
    # (landscapes.sampling, with its SE stored): on 2 cores a full 31x31 scan of a 56-layer net is ~40
    # core-minutes, and most of the [-1, 1]^2 square lies far above any drawn contour.
    "cpu": Settings((20, 56), "-1:1:31", 2000, 56, SamplingConfig(precision=0.0, cap=10.0, chunk=128)),
    "smoke": Settings((8,), "-1:1:5", 32, 8, SamplingConfig(precision=0.0, cap=10.0, chunk=8)),
}
def slice_stats(surface: Any, value: str = "train_loss") -> dict[str, Any]:
    """Numbers that say how convex and how wide the 2-D slice is (computed from the grid alone):
    center and minimum loss; ``convex_fraction``: share of interior grid points whose 2x2
    finite-difference Hessian is positive semidefinite; ``local_minima``: grid points below all 8
    neighbours (interior points); ``basin_fraction``: share of the grid within 1.0 of the center's loss."""
    z = np.asarray(surface.values[value], dtype=np.float64)
    x, y = surface.x, surface.y
    hx, hy = x[1] - x[0], y[1] - y[0]
    c = z[1:-1, 1:-1]
    dxx = (z[1:-1, 2:] - 2 * c + z[1:-1, :-2]) / hx ** 2
    dyy = (z[2:, 1:-1] - 2 * c + z[:-2, 1:-1]) / hy ** 2
    dxy = (z[2:, 2:] - z[2:, :-2] - z[:-2, 2:] + z[:-2, :-2]) / (4 * hx * hy)
    psd = (dxx >= 0) & (dyy >= 0) & (dxx * dyy - dxy ** 2 >= 0)
    ny, nx = z.shape
    neighbours = np.stack([z[1 + dy:ny - 1 + dy, 1 + dx:nx - 1 + dx]
                           for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)])
    minima = int((c < neighbours.min(0)).sum())  # interior only: an edge point has no outside
    center = float(surface.attrs[f"{value}_center"])
    return {"center_loss": center, "min_loss": float(np.nanmin(z)), "max_loss": float(np.nanmax(z)),
            "convex_fraction": float(psd.mean()), "local_minima": minima,
            "basin_fraction": float((z <= center + 1.0).mean())}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(NAME, __doc__.split("\n\n")[0], argv, lambda p: add_depths_option(p, MODES))
    settings = MODES[args.mode]
    depths = selected_depths(args, settings.depths)
    if depths != settings.depths:
        settings = replace(settings, depths=depths, html_depth=settings.html_depth if settings.html_depth in depths
                           else max(depths))
    template = training_recipe(args, **LANDSCAPE_TRAINING[args.mode])
    nets = [(d, residual) for d in settings.depths for residual in (True, False)]
    records, surfaces = [], {}
    try:
        with Timer() as timer:
            for depth, residual in nets:
                config = landscape_net(args, depth, residual)
                rec = trained_record(config, args.runs, label=landscape_label(depth, residual), depth=depth, residual=residual,
                                     warmup=warmup_enabled(config))
                with Timer() as scan_timer:
                    res = scan_run(args, run_path(rec), args.out / "surfaces" / f"{rec['model']}.h5",
                                   x=settings.grid, y=settings.grid, samples=settings.samples,
                                   sampling=settings.sampling)
                surfaces[rec["label"]] = res.surface
                rec.update(surface=f"surfaces/{rec['model']}.h5", scan_seconds=scan_timer.seconds,
                           seconds_per_point=res.surface.attrs.get("seconds_per_point"),
                           paper_test_error=PAPER_TEST_ERROR.get((depth, residual)),
                           **slice_stats(res.surface))
                if settings.sampling is not None:
                    rec["sampling"] = sampling_summary(res.surface.values)
                del rec["history"][:-1]  # the per-epoch history stays in the run folder
                records.append(rec)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    figures = plot(surfaces, settings, args.out, template.dataset)
    axis = [float(v) for v in settings.grid.split(":")]
    result = {"study": NAME, "tier": args.mode, "mode": args.mode, "dataset": template.dataset,
              "depths": list(settings.depths), "grid": [int(axis[2]), int(axis[2])], "range": [axis[0], axis[1], axis[0], axis[1]],
              "samples": settings.samples, "epochs": template.epochs, "seeds": [args.seed],
              "train_samples": split_size(template, "train"), "test_samples": split_size(template, "test"),
              # keyed by registry name (resnet56, resnet56_noshort, ...), as tools read them
              "nets": {r["model"]: {**r, "train_error_pct": final_train_error(r), "test_error_pct": r["final_test_error"]}
                       for r in records},
              "seconds": timer.seconds, "threads": torch.get_num_threads(),
              "paper_test_error": {landscape_label(d, r): e for (d, r), e in PAPER_TEST_ERROR.items()}}
    write_json(args.out / "results.json", result)
    write_readme(args, "ResNet vs ResNet-noshort loss landscapes (Li et al. 2018, Fig. 5-6)",
                 "Filter-normalized 2-D slices around the trained weights: ResNet-20 and ResNet-20-noshort both "
                 "look convex; without skip connections the landscape becomes chaotic and sharply non-convex as depth "
                 "grows (ResNet-56/110-noshort), and these nets train worse; with skip connections it stays "
                 "smooth and nearly convex at every depth.",
                 {"Test error and slice statistics": table(records)}, figures, describe(records),
                 notes(args, settings, template) + "\n\n" + compute_note(
                     sum(r["wall_seconds"] for r in records), surfaces.values()), timer.seconds)
    return result


def table(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"net": r["label"], "params": r["params"], "warm-up": "yes" if r["warmup"] else "no",
             "train error % (ours, eval mode)": final_train_error(r), "test error % (ours, ± binomial SE)": fmt_error_se(r["final_test_error"], r["test_samples_n"]),
             "test error % (Li et al., CIFAR-10, as quoted)": r["paper_test_error"],
             "loss at center": r["center_loss"], "min loss on grid": r["min_loss"],
             "convex fraction": r["convex_fraction"], "local minima": r["local_minima"],
             "grid within +1 of center": r["basin_fraction"], "s/point": r["seconds_per_point"],
             **({"images per point (min-max)": f"{r['sampling']['images_min']}-{r['sampling']['images_max']}"}
                if "sampling" in r else {})} for r in records]


def plot(surfaces: dict[str, Any], settings: Settings, out: Path, dataset: str) -> list[str]:
    """Contours (paper Fig. 5: a row with skips, a row without, one column per depth) and 3-D
    surfaces (one z range), all drawn by landscapes.plot on one colour scale; the HTML page compares
    one pair on one scale."""
    nets = [landscape_label(d, r) for r in (True, False) for d in settings.depths]  # a row with skips, a row without
    size = settings.grid.rsplit(':', 1)[1]
    title = (f"Train loss on {dataset}, with (top) and without (bottom) skips\nfilter-normalized directions, "
             f"{size}x{size} grid" if len(settings.depths) == 1 else
             f"Train loss on {dataset} with (top) and without (bottom) skip connections, filter-normalized "
             f"directions, {size}x{size} grid")
    fig = plot_compare([surfaces[n] for n in nets], "contour", PlotConfig(title=title), labels=nets,
                       ncols=len(settings.depths))
    fig.savefig(out / "contours.png", dpi=110)
    figures = ["contours.png"]
    pairs = [landscape_label(d, r) for d in settings.depths for r in (True, False)]  # a row per depth
    fig = plot_compare([surfaces[n] for n in pairs], "surface", PlotConfig(log=True, title="3-D loss surfaces "
                       "(log scale, one height range)"), labels=pairs, ncols=2)
    fig.savefig(out / "surfaces_3d.png", dpi=100)
    figures.append("surfaces_3d.png")
    d = settings.html_depth
    write_comparison([surfaces[landscape_label(d, True)], surfaces[landscape_label(d, False)]], out / f"resnet{d}_vs_noshort_3d.html",
                     PlotConfig(title=f"ResNet-{d} with and without skip connections: train loss on {dataset}"),
                     labels=[landscape_label(d, True), landscape_label(d, False)])
    return figures


def describe(records: list[dict[str, Any]]) -> str:
    by = {(r["depth"], r["residual"]): r for r in records}
    lines = []
    for d in sorted({r["depth"] for r in records}):
        a, b = by[d, True], by[d, False]
        lines.append(f"- Depth {d}: with skips the slice is convex at {100 * a['convex_fraction']:.0f}% of the "
                     f"interior grid points with {a['local_minima']} local minimum(s), center loss "
                     f"{a['center_loss']:.3g}; "
                     f"without skips {100 * b['convex_fraction']:.0f}%, {b['local_minima']} local minimum(s), center "
                     f"loss {b['center_loss']:.3g}. Test error {fmt_error_se(a['final_test_error'], a['test_samples_n'])} vs {fmt_error_se(b['final_test_error'], b['test_samples_n'])} (± binomial SE).")
    deepest = max(d for d, _ in by)
    shallow = min(d for d, _ in by)
    for r in records:
        if final_train_error(r) > UNTRAINED_ERROR_PCT:
            lines.append(f"- {r['label']}: training error {final_train_error(r):.1f}%: this is the landscape around "
                         f"a net that did not train, a wide high plateau, not the fractured landscape around a "
                         f"trained noshort net.")
        elif r["min_loss"] < r["center_loss"] * (1 - 1e-3):
            lines.append(f"- {r['label']}: the grid's lowest loss ({r['min_loss']:.3g}) lies "
                         f"{100 * (1 - r['min_loss'] / r['center_loss']):.1f}% below the center's "
                         f"({r['center_loss']:.3g}): the trained weights sit near, not exactly at, a minimum of "
                         f"this slice.")
    if deepest != shallow:
        drop = {d: by[d, True]["convex_fraction"] - by[d, False]["convex_fraction"] for d in (shallow, deepest)}
        lines.append(f"- Removing skips costs {100 * drop[shallow]:.0f} points of convex slice at depth {shallow} and "
                     f"{100 * drop[deepest]:.0f} at depth {deepest}"
                     + (" (more non-convex with depth, the paper's direction" if drop[deepest] > drop[shallow]
                        else " (**not** more non-convex with depth") + "; one slice per net, so no spread).")
        gap = {d: test_gap(by[d, False], by[d, True]) for d in (shallow, deepest)}
        grows = gap[deepest][0] - gap[deepest][1] > gap[shallow][0] + gap[shallow][1]
        lines.append(f"- The test-error cost of removing skips (± the binomial SE of the difference; one seed "
                     f"per net): {gap[shallow][0]:+.2f} ± {gap[shallow][1]:.2f} points at depth {shallow}, "
                     f"{gap[deepest][0]:+.2f} ± {gap[deepest][1]:.2f} at depth {deepest}: "
                     + ("it grows with depth beyond the SE, as in the paper." if grows else
                        "**not** a growth beyond the SE."))
    return "\n".join(lines)


def test_gap(plain: dict[str, Any], residual: dict[str, Any]) -> tuple[float, float]:
    """plain - residual test error (points) and its binomial SE (independent test-set estimates)."""
    return error_diff_se(plain["final_test_error"], plain["test_samples_n"],
                         residual["final_test_error"], residual["test_samples_n"])


def notes(args: Any, settings: Settings, template: Any) -> str:
    parts = [f"Nets trained with `models.train` ({template.dataset}, {template.samples or 'all'} training / "
             f"{template.test_samples or 'all'} test images, {template.epochs} epochs, batch {template.batch_size}, "
             f"lr {template.lr}, weight decay {template.weight_decay}), cached under `runs/studies/` and shared "
             f"with the other studies. Scans: `landscapes.scan` with two random Gaussian directions, filter-"
             f"normalized, biases and BN parameters left out (the paper's method), BN in eval mode with the "
             f"stored statistics, the train loss over the first {settings.samples or 'all'} training images, "
             f"grid {settings.grid} on both axes, seed {args.seed}. The surfaces are in `surfaces/*.h5` "
             f"(reference-project layout); `resnet{settings.html_depth}_vs_noshort_3d.html` is an interactive "
             f"3-D view.",
             *([] if settings.sampling is None else [
                 f"Images per point: every point whose train loss is below {settings.sampling.cap:g} (the top "
                 f"contour level) is the mean over all {settings.samples:,} images; a point whose loss lies more "
                 f"than 3 standard errors above {settings.sampling.cap:g} stops early, after as few as "
                 f"{settings.sampling.chunk} of them (same seeded image order at every point; the SE is stored "
                 f"in the surface as `train_loss_se`). Such points are drawn clipped at the top level in every "
                 f"plot, so the figures and every statistic below the cap are those of the full "
                 f"{settings.samples:,}-image evaluation."]),
             "Slice statistics are read off the grid: *convex fraction* is the share of interior grid points "
             "whose finite-difference 2x2 Hessian of the slice is positive semidefinite; *local minima* counts "
             "interior grid points lower than their 8 neighbours. They describe the 2-D slice only; "
             "`hessian_ratio` measures curvature in all directions."]
    left = depths_left_note(args, MODES[args.mode].depths, settings.depths, "scanned")
    if left:
        parts.append(left)
    if args.mode == "quick":
        parts.append("**Scaled down for 2 CPU cores**: MNIST instead of CIFAR-10 (not available offline), nets "
                     "trained 4 epochs on 2,500 images (the shared quick recipe, so the degradation study's nets are "
                     "reused), depths 20 and 56 only (ResNet-110 would take longer than the whole budget), a 13x13 "
                     "grid on [-0.3, 0.3]² instead of 51x51 on [-1, 1]², and 256 training images per point. The "
                     "short-trained nets are much sharper at the filter-normalized scale than the paper's: a first "
                     "run over [-1, 1]² (11x11) measured corner losses of 6e3 (ResNet-20), 1.9e5 "
                     "(ResNet-20-noshort), 5.5e6 (ResNet-56) and 1.6e10 (ResNet-56-noshort), and 1e2 to 3e5 at "
                     "(±0.5, ±0.5), with every contour below 10 inside |α|, |β| < 0.4; so the quick grid covers that "
                     "basin. The paper's numbers are CIFAR-10 test errors after 300 epochs; ours are MNIST errors "
                     "after 80 SGD steps, so only the direction of the gaps is comparable. A short run also leaves "
                     "the noshort nets far from a "
                     "minimum (their training loss is still high), which itself is the paper's point: they are "
                     "hard to train.")
    parts.append("Full mode (`python studies/resnet_vs_noshort_landscape.py`) runs the paper's settings: CIFAR-10, "
                 "ResNet-20/56/110 with and without skips trained 300 epochs, 51x51 grids over all 50,000 training "
                 "images. It needs a GPU (a 51x51 ResNet-56 scan is ~33 PFLOP) and was not run here.")
    return "\n\n".join(parts)


if __name__ == "__main__":
    main()

"""Li et al. 2018, Sec. 7 (Fig. 9): optimization paths projected on the plane of their first two PCA
directions, drawn over the loss contours of that plane. Random directions miss the path (they are
nearly orthogonal to it in high dimension); PCA directions capture most of its variation, showing
that SGD moves in a very low-dimensional subspace.

    python studies/trajectory.py [--quick | --smoke]
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from landscapes.plot import PlotConfig, plot_surface_file
from landscapes.trajectory import (PCAConfig, TrajectoryConfig, pca_trajectory, random_walk_variance,
                                   suggested_axes)
from models.cli import fail
from studies.cache import run_path, split_size, trained_record
from studies.common import parse_args
from studies.recipes import BATCH_SIZE_MODES, training_recipe
from studies.report import Timer, compute_note, write_json, write_readme
from studies.scans import scan_run

NAME = "trajectory"


@dataclass(frozen=True)
class Settings:
    """The scan of each run's PCA plane (the runs are batch_size_flatness's: both batch sizes,
    every weight decay)."""

    points: int                 # grid points per axis of each PCA plane
    samples: int | None         # training images per point


# The runs are those of batch_size_flatness (same model, data and recipe): the two studies share
# the trained checkpoints through the run cache, as the paper draws its Fig. 9 from the Fig. 3 nets.
MODES = {
    "full": Settings(51, None),
    "cpu": Settings(21, 2000),
    "quick": Settings(15, 256),
    "smoke": Settings(5, 32),
}


def label(batch: int, wd: float) -> str:
    return f"batch {batch}, wd {wd:g}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(NAME, __doc__.split("\n\n")[0], argv)
    s, b = MODES[args.mode], BATCH_SIZE_MODES[args.mode]
    template = replace(training_recipe(args, **b.training), model=b.model)
    records, planes = [], []
    try:
        with Timer() as timer:
            for batch, wd in [(bs, wd) for wd in b.weight_decays for bs in (b.small, b.large)]:
                rec = trained_record(replace(template, batch_size=batch, weight_decay=wd), args.runs,
                                     label=label(batch, wd), batch_size=batch, weight_decay=wd)
                run = run_path(rec)
                tag = f"bs{batch}_wd{wd:g}"
                # The PCA directions (model-sized) stay in the run cache; the path (small) is a result.
                traj = pca_trajectory(TrajectoryConfig(
                    run_dir=str(run), pca=PCAConfig(), dir_file=str(args.runs / "directions" / f"{run.name}_pca.h5"),
                    proj_file=str(args.out / f"path_{tag}.h5"), progress=False))
                gx, gy = suggested_axes(traj.projection, margin=0.25, num=s.points)
                res = scan_run(args, run, args.out / "surfaces" / f"pca_plane_{tag}.h5", x=gx, y=gy,
                               samples=s.samples, dir_file=traj.dir_file)
                planes.append(res.surface)
                proj, ratio = traj.projection, traj.pca.explained_variance_ratio
                total = float((proj.distance ** 2).sum())
                dim = sum(int(t.numel()) for t in traj.pca.directions[0].values())
                walk_mean, walk_sd = random_walk_variance(len(proj.x), dim, seed=args.seed)
                del rec["history"][:-1]
                rec.update(tag=tag, checkpoints=len(proj.x), explained_variance_ratio=[float(r) for r in ratio],
                           pc12_variance=float(ratio.sum()), explained_variance_2pc=float(ratio.sum()),
                           random_walk_2pc={"mean": walk_mean, "sd": walk_sd, "points": len(proj.x), "dim": dim},
                           path_in_plane=1 - float((proj.residual ** 2).sum()) / total if total > 0 else float("nan"),
                           start=[float(proj.x[0]), float(proj.y[0])], path_length=float(np.hypot(
                               np.diff(proj.x), np.diff(proj.y)).sum()), grid=[gx, gy],
                           surface=f"surfaces/pca_plane_{tag}.h5", path=f"path_{tag}.h5",
                           center_loss=float(res.surface.attrs["train_loss_center"]),
                           scan_seconds=res.seconds, path_xy=[proj.x.tolist(), proj.y.tolist()],
                           path_epochs=proj.epochs.tolist())
                records.append(rec)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    figures = plot(records, args.out)
    result = {"study": NAME, "tier": args.mode, "mode": args.mode, "dataset": template.dataset, "model": b.model,
              "samples_per_point": s.samples, "seeds": [args.seed], "train_samples": split_size(template, "train"),
              "test_samples": split_size(template, "test"), "seconds": timer.seconds,
              "threads": torch.get_num_threads(), "runs": {r["tag"]: r for r in records},
              # the null: an isotropic random walk with as many checkpoints in as many dimensions
              "random_walk_2pc": {r["tag"]: r["random_walk_2pc"] for r in records}}
    write_json(args.out / "results.json", result)
    table = [{"run": r["label"], "checkpoints": r["checkpoints"],
              "PC1 variance %": 100 * r["explained_variance_ratio"][0],
              "PC2 variance %": 100 * r["explained_variance_ratio"][1],
              "PC1+PC2 %": 100 * r["pc12_variance"],
              "random walk PC1+PC2 % (null, mean ± sd)": f"{100 * r['random_walk_2pc']['mean']:.1f} ± "
                                                         f"{100 * r['random_walk_2pc']['sd']:.1f}",
              "path in plane %": 100 * r["path_in_plane"],
              "test error %": r["final_test_error"], "loss at the end (scan)": r["center_loss"]} for r in records]
    write_readme(args, "Optimization paths in PCA planes (Li et al. 2018, Sec. 7, Fig. 9)",
                 "The path of SGD lies in a very low-dimensional subspace: the first two PCA directions of the "
                 "checkpoints' offsets from the final weights explain most of the path's variation (40-90% in the "
                 "paper's VGG-9 runs), whereas random directions in a space of millions of dimensions are nearly "
                 "orthogonal to it. Over the loss contours of that plane, the path first runs down across the "
                 "contours and then drifts along the flat valley toward the final minimizer.",
                 {"Paths": table}, figures, describe(records), notes(args, s, b, template) + "\n\n" + compute_note(
                     sum(r["wall_seconds"] for r in records), planes), timer.seconds)
    return result


def plot(records: list[dict[str, Any]], out: Path) -> list[str]:
    """One filled contour plot per run on a log scale where the loss spans decades (line contours
    left the regions below 0.1 and above 10 both white), its path drawn over it (landscapes.plot
    reads the two files)."""
    figures = []
    for r in records:
        name = f"trajectory_{r['tag']}.png"
        plot_surface_file(out / r["surface"], PlotConfig(trajectory=str(out / r["path"]), dpi=110,
                                                         title=f"{r['label']}: training path over the train loss "
                                                               f"(PCA plane)"),
                          kinds=["contourf"], html=False, out=out / name)
        figures.append(name)
    return figures


def describe(records: list[dict[str, Any]]) -> str:
    lines = []
    for r in records:
        ev = r["explained_variance_ratio"]
        walk = r["random_walk_2pc"]
        lines.append(f"- {r['label']}: PC1 + PC2 explain {100 * ev[0]:.1f}% + {100 * ev[1]:.1f}% = "
                     f"{100 * sum(ev):.1f}% of the variance of {r['checkpoints']} checkpoints, against "
                     f"{100 * walk['mean']:.1f} ± {100 * walk['sd']:.1f}% for an isotropic random walk with as many "
                     f"checkpoints in as many dimensions ({walk['dim']:,}); "
                     f"{100 * r['path_in_plane']:.1f}% of the squared offsets from the final weights lie in the plane.")
    low = min(r["pc12_variance"] for r in records)
    verdict = ("within the paper's 40-90%" if 0.4 <= low <= 0.9 else "**below** the paper's 40-90%" if low < 0.4
               else "even above the paper's 40-90%: a short run's path is close to a curve in a plane")
    lines.append(f"- The two leading directions explain at least {100 * low:.0f}% in every run ({verdict}).")
    above = [r for r in records if r["pc12_variance"] > r["random_walk_2pc"]["mean"] + 2 * r["random_walk_2pc"]["sd"]]
    lines.append(f"- Above the random-walk null by more than 2 sd: {len(above)} of {len(records)} runs"
                 + (f" ({', '.join(r['label'] for r in above)})" if above else "") + ". A PC1+PC2 share near the null "
                 "says only that the path is walk-like; the planarity claim needs a share clearly above it.")
    sb = [r for r in records if r["batch_size"] == min(x["batch_size"] for x in records)]
    lb = [r for r in records if r["batch_size"] == max(x["batch_size"] for x in records)]
    def shares(rs: list[dict[str, Any]]) -> str:
        return ", ".join(f"{100 * r['pc12_variance']:.1f}%" for r in rs)

    lines.append(f"- Small-batch paths are less planar than large-batch ones (PC1 + PC2: {shares(sb)} vs "
                 f"{shares(lb)}): more, noisier steps."
                 if max(r["pc12_variance"] for r in sb) < min(r["pc12_variance"] for r in lb) else
                 "- Small- and large-batch paths are about equally planar.")
    early = {r["label"]: early_share(r) for r in records}
    lines.append("- Share of each path's length (in the PCA plane) covered in the first quarter of the epochs: "
                 + ", ".join(f"{k} {100 * v:.0f}%" for k, v in early.items())
                 + (": the path moves fast at first and then creeps toward the final minimizer, as in the paper's "
                    "Fig. 9." if min(early.values()) > 0.5 else
                    ": not the paper's fast descent followed by a slow creep in every run."))
    return "\n".join(lines)


def early_share(record: dict[str, Any]) -> float:
    """Fraction of the projected path's length walked in the first quarter of its epochs."""
    x, y = (np.asarray(v, dtype=float) for v in record["path_xy"])
    epochs = np.asarray(record["path_epochs"], dtype=float)
    steps = np.hypot(np.diff(x), np.diff(y))
    cut = epochs[0] + (epochs[-1] - epochs[0]) / 4
    total = steps.sum()
    return float(steps[epochs[1:] <= cut].sum() / total) if total > 0 else float("nan")


def notes(args: Any, s: Settings, b: Any, template: Any) -> str:
    parts = [f"Runs: {b.model} on {template.dataset} ({template.samples or 'all'} training images, "
             f"{template.epochs} epochs, SGD lr {template.lr}, momentum {template.momentum}), one checkpoint per "
             f"epoch; the same runs as `batch_size_flatness` (shared through the run cache). Directions: "
             f"`landscapes.trajectory` (PCA of theta_i - theta_final over the epoch checkpoints, biases and BN "
             f"parameters left out, mean-centred as the reference's sklearn PCA), the path projected by least "
             f"squares. Planes scanned with `landscapes.scan` on a {s.points}x{s.points} grid covering the path, "
             f"over the first {s.samples or 'all'} training images. Paths are in `path_*.h5` (the reference's "
             f"`proj_xcoord`/`proj_ycoord` layout), planes in `surfaces/`. PCA coordinates are in weight-space "
             f"units (unit directions, not filter-normalized)."]
    if args.mode == "quick":
        parts.append(f"**Scaled down for 2 CPU cores**: {b.model} on {template.samples} MNIST images for "
                     f"{template.epochs} epochs ({template.epochs + 1} checkpoints with the initialization) instead of "
                     f"VGG-9 on CIFAR-10 for 300 "
                     f"epochs, batch {b.small}/{b.large} instead of 128/8192, weight decay {max(b.weight_decays):g} "
                     f"instead of 5e-4 (see batch_size_flatness), and a {s.points}x{s.points} grid over {s.samples} "
                     f"images.")
    parts.append("Full mode (`python studies/trajectory.py`) uses the paper's VGG-9 CIFAR-10 runs of "
                 "`batch_size_flatness` (300 epochs, checkpoints every 10 epochs by the full training recipe) and "
                 "51x51 planes over all training images; it needs a GPU and was not run here.")
    return "\n\n".join(parts)


if __name__ == "__main__":
    main()

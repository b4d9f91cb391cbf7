"""Li et al. 2018, Fig. 2-3: small-batch vs large-batch minimizers, with and without weight decay.
The linear interpolation between them (Goodfellow et al.) makes whichever solution has the smaller
weights look sharper; filter-normalized 1-D slices remove that scale effect and show the large-batch
minimizer sharper, in line with its higher test error.

    python studies/batch_size_flatness.py [--quick | --smoke]
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from landscapes.plot import PlotConfig, plot_1d
from models.cli import fail
from studies.cache import load_trained, run_path, split_size, trained_record
from studies.common import parse_args
from studies.figures import new_figure, save_figure
from studies.recipes import BATCH_SIZE_MODES, BatchSizeSettings, training_recipe
from studies.report import Timer, compute_note, write_json, write_readme
from studies.scans import scan_run
from studies.stats import clearly_above, final_train_loss, fmt_error_se, mean_sd

NAME = "batch_size_flatness"

# Li et al. 2018, Fig. 3 (VGG-9 on CIFAR-10, 300 epochs): test error (%) in the sub-figure titles,
# keyed by (weight decay, batch size). Transcribed from memory of the figure, not checked against
# the paper's text here: treat them as approximate.
PAPER_TEST_ERROR = {(0.0, 128): 7.37, (0.0, 8192): 11.07, (5e-4, 128): 6.00, (5e-4, 8192): 10.19}


def paper_setting(wd: float, small: bool) -> tuple[float, int]:
    """The paper's (weight decay, batch size) that a run of ours stands for."""
    return (0.0 if wd == 0 else 5e-4, 128 if small else 8192)


def label(batch: int, wd: float) -> str:
    return f"batch {batch}, wd {wd:g}"


def weight_vector(model: Any) -> np.ndarray:
    """All conv and linear weights (tensors of dim > 1) as one vector: what weight decay shrinks
    and what filter normalization rescales to."""
    return np.concatenate([p.detach().cpu().numpy().ravel() for p in model.parameters() if p.dim() > 1])


def sharpness(surface: Any, value: str = "train_loss") -> dict[str, float]:
    """From a 1-D slice centred on a minimizer: the mean rise of the loss at alpha = +-0.5 and
    +-1, and the curvature of a quadratic fitted over |alpha| <= 0.25 (or the 3 central points)."""
    x, z = surface.x, np.asarray(surface.values[value], dtype=np.float64)
    center = float(surface.attrs[f"{value}_center"])

    def rise(a: float) -> float:
        return float(np.mean([np.interp(s * a, x, z) for s in (-1, 1)]) - center)

    near = np.abs(x) <= max(0.25, np.sort(np.abs(x))[min(2, len(x) - 1)] + 1e-12)
    curvature = float(2 * np.polyfit(x[near], z[near], 2)[0]) if near.sum() >= 3 else float("nan")
    return {"center_loss": center, "rise_0.5": rise(0.5), "rise_1": rise(1.0), "curvature": curvature}


# Filter-normalized 1-D slices per run: one random direction each, over this many direction seeds,
# so that a sharpness figure comes with its spread over directions.
DIRECTION_SEEDS = {"full": 3, "cpu": 3, "quick": 3, "smoke": 2}
SHARPNESS_KEYS = ("rise_0.5", "rise_1", "curvature")


def sharpness_over_seeds(surfaces: list[Any]) -> dict[str, Any]:
    """Mean, sd and per-seed values of :func:`sharpness` over slices along different directions."""
    each = [sharpness(s) for s in surfaces]
    out: dict[str, Any] = {"center_loss": each[0]["center_loss"], "direction_seeds": len(each)}
    for key in SHARPNESS_KEYS:
        values = [e[key] for e in each]
        out[key], out[f"{key}_sd"] = mean_sd(values)
        out[f"{key}_per_seed"] = values
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(NAME, __doc__.split("\n\n")[0], argv)
    s = BATCH_SIZE_MODES[args.mode]
    template = replace(training_recipe(args, **s.training), model=s.model)
    records: dict[tuple[float, int], dict[str, Any]] = {}
    interpolations: dict[float, Any] = {}
    slices: dict[tuple[float, int], Any] = {}
    try:
        with Timer() as timer:
            for wd in s.weight_decays:
                for batch in (s.small, s.large):
                    rec = trained_record(replace(template, batch_size=batch, weight_decay=wd), args.runs,
                                         label=label(batch, wd), batch_size=batch, weight_decay=wd)
                    seeds = [args.seed + k for k in range(DIRECTION_SEEDS[args.mode])]
                    along = [scan_run(args, run_path(rec), args.out / "surfaces" / (
                                          f"random_bs{batch}_wd{wd:g}" + ("" if seed == args.seed else f"_seed{seed}")
                                          + ".h5"),
                                      x=s.random_axis, samples=s.samples, split="both", seed=seed).surface
                             for seed in seeds]
                    slices[wd, batch] = along[0]
                    w = weight_vector(load_trained(run_path(rec)))
                    rec.update(weight_norm=float(np.linalg.norm(w)), weight_abs_mean=float(np.abs(w).mean()),
                               steps=template.epochs * -(-template.samples // batch) if template.samples else None,
                               paper_test_error=PAPER_TEST_ERROR[paper_setting(wd, batch == s.small)],
                               **sharpness_over_seeds(along))
                    rec["weights"] = w
                    del rec["history"][:-1]
                    records[wd, batch] = rec
                # 0 = the small-batch weights, 1 = the large-batch ones. The paper moves the stored BN
                # statistics along too, but beyond the ends their linear extrapolation turns variances
                # negative (NaN losses: all of alpha < 0 in our weight-decay run), so BN is recalibrated
                # on the training images at every point (torch.optim.swa_utils.update_bn's estimate).
                res = scan_run(args, run_path(records[wd, s.small]),
                               args.out / "surfaces" / f"interpolation_wd{wd:g}.h5", x=s.interp_axis,
                               samples=s.samples, bn="recalibrate",
                               model2=str(run_path(records[wd, s.large]) / "final.pt"))
                interpolations[wd] = res.surface
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    figures = plot(records, slices, interpolations, s, args.out)
    rows = [{k: v for k, v in r.items() if k != "weights"} for r in records.values()]
    result = {"study": NAME, "tier": args.mode, "mode": args.mode, "dataset": template.dataset, "model": s.model,
              "seeds": [args.seed], "direction_seeds": DIRECTION_SEEDS[args.mode],
              "train_samples": split_size(template, "train"), "test_samples": split_size(template, "test"),
              "training": {k: getattr(template, k) for k in ("samples", "test_samples", "epochs", "lr", "momentum")},
              "samples_per_point": s.samples, "seed": args.seed,
              "seconds": timer.seconds, "threads": torch.get_num_threads(), "runs": rows,
              "interpolation": {f"{wd:g}": {k: interpolations[wd].values[k].tolist() for k in interpolations[wd].values}
                                | {"alpha": interpolations[wd].x.tolist()} for wd in interpolations},
              "paper_test_error": {label(b, wd): e for (wd, b), e in PAPER_TEST_ERROR.items()}}
    write_json(args.out / "results.json", result)
    table = [{"run": r["label"], "train loss": final_train_loss(r),
              "test error % (ours, ± binomial SE)": fmt_error_se(r["final_test_error"], r["test_samples_n"]),
              "test error % (Li et al. VGG-9, approx.)": r["paper_test_error"], "weight norm": r["weight_norm"],
              **{f"{name} (mean ± sd, {r['direction_seeds']} directions)": f"{r[key]:.3g} ± {r[key + '_sd']:.2g}"
                 for key, name in (("rise_0.5", "rise at ±0.5"), ("rise_1", "rise at ±1"), ("curvature", "curvature at 0"))}}
             for r in rows]
    write_readme(args, "Small vs large batch, with and without weight decay (Li et al. 2018, Fig. 2-3)",
                 "Linear interpolation between a small-batch (128) and a large-batch (8192) minimizer is misleading: "
                 "without weight decay the large-batch minimum looks sharper, with weight decay the small-batch one "
                 "does, because weight decay shrinks the small-batch weights (more updates) and a fixed step is "
                 "relatively larger for smaller weights. Filter-normalized 1-D slices remove the scale effect: the "
                 "large-batch minimizers are sharper in both cases and generalize worse.",
                 {"Solutions": table}, figures, describe(records, interpolations, s),
                 notes(args, s, template, rows) + "\n\n" + compute_note(
                     sum(r["wall_seconds"] for r in rows), [*slices.values(), *interpolations.values()]), timer.seconds)
    return result


def plot(records: dict, slices: dict, interpolations: dict, s: BatchSizeSettings, out: Path) -> list[str]:
    """Interpolations (landscapes.plot's 1-D curves), the filter-normalized slices of both batch
    sizes overlaid per weight decay (paper Fig. 3 top), and weight histograms (Fig. 2 bottom)."""
    figures = []
    for wd, surface in interpolations.items():
        fig = plot_1d(surface, PlotConfig(title=f"Interpolation: batch {s.small} (α=0) → batch {s.large} (α=1), "
                                                f"weight decay {wd:g}", dpi=120))
        name = f"interpolation_wd{wd:g}.png"
        fig.savefig(out / name, dpi=120)
        figures.append(name)
    # Several slices on one axes: plot_1d draws one surface, so this overlay is drawn here.
    fig, axes = new_figure(len(s.weight_decays), 1, size=(5.2, 3.9))
    for ax, wd in zip(axes[0], s.weight_decays):
        acc_ax = ax.twinx()
        for batch, color in ((s.small, "tab:blue"), (s.large, "tab:red")):
            surf, r = slices[wd, batch], records[wd, batch]
            ax.plot(surf.x, surf.values["train_loss"], "-", color=color, lw=1.8,
                    label=f"batch {batch}: train loss (test err {r['final_test_error']:.1f}%)")
            acc_ax.plot(surf.x, surf.values["test_acc"], ":", color=color, lw=1.3, label=f"batch {batch}: test acc")
        ax.set(xlabel="α (filter-normalized random direction)", ylabel="train loss",
               title=f"weight decay {wd:g}")
        acc_ax.set_ylabel("test accuracy (%)")
        acc_ax.set_ylim(0, 102)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        lines = ax.get_lines() + acc_ax.get_lines()
        ax.legend(lines, [ln.get_label() for ln in lines], fontsize=7, loc="upper center")
    figures.append(save_figure(fig, out, "filter_normalized_1d"))
    fig, axes = new_figure(len(s.weight_decays), 1, size=(5.0, 3.4))
    for ax, wd in zip(axes[0], s.weight_decays):
        for batch, color in ((s.small, "tab:blue"), (s.large, "tab:red")):
            w = records[wd, batch]["weights"]
            ax.hist(w, bins=120, range=(-0.6, 0.6), histtype="step", color=color, lw=1.4, density=True,
                    label=f"batch {batch} (‖w‖ = {np.linalg.norm(w):.1f})")
        ax.set(xlabel="weight value (conv and linear)", ylabel="density", title=f"weight decay {wd:g}", yscale="log")
        ax.legend(fontsize=7)
    figures.append(save_figure(fig, out, "weight_histograms"))
    return figures


def describe(records: dict, interpolations: dict, s: BatchSizeSettings) -> str:
    lines = []
    for wd in s.weight_decays:
        sb, lb = records[wd, s.small], records[wd, s.large]
        interp = interpolations[wd]
        z, x = interp.values["train_loss"], interp.x
        # Sharpness seen by the interpolation: the loss rise a quarter of the way out of each end.
        out_sb = float(np.interp(-0.25, x, z) - np.interp(0.0, x, z))
        out_lb = float(np.interp(1.25, x, z) - np.interp(1.0, x, z))
        lines.append(
            f"- Weight decay {wd:g}: test error {fmt_error_se(sb['final_test_error'], sb.get('test_samples_n'))} (batch {s.small}) vs {fmt_error_se(lb['final_test_error'], lb.get('test_samples_n'))} (batch {s.large}; "
            f"± binomial SE); weight norms {sb['weight_norm']:.1f} vs "
            f"{lb['weight_norm']:.1f}. Interpolation: the loss rises by {out_sb:.3g} going 0.25 beyond the small-batch "
            f"end and by {out_lb:.3g} beyond the large-batch end, so the "
            f"{'large' if out_lb > out_sb else 'small'}-batch "
            f"solution looks sharper there ({interpolation_verdict(wd, out_lb > out_sb)}). Filter-normalized slices (mean ± sd over {sb['direction_seeds']} "
            f"directions): rise at ±1 is {sb['rise_1']:.3g} ± {sb['rise_1_sd']:.2g} (batch {s.small}) vs "
            f"{lb['rise_1']:.3g} ± {lb['rise_1_sd']:.2g} (batch {s.large}), curvature {sb['curvature']:.3g} ± "
            f"{sb['curvature_sd']:.2g} vs {lb['curvature']:.3g} ± {lb['curvature_sd']:.2g} "
            + ("(large batch sharper beyond the direction spread, as in the paper)."
               if clearly_above(lb["rise_1_per_seed"], sb["rise_1_per_seed"]) else
               "(**small batch sharper beyond the direction spread, unlike the paper**)."
               if clearly_above(sb["rise_1_per_seed"], lb["rise_1_per_seed"]) else
               "(the difference is within the spread over directions).")
            + short_of_minimum(sb, lb))
    return "\n".join(lines)


def interpolation_verdict(wd: float, large_sharper: bool) -> str:
    """Li et al.: interpolation makes the large batch look sharper without weight decay and the small
    batch with it (its weights shrink more); our reading against that."""
    expected_large = wd == 0
    return ("as in the paper" if large_sharper == expected_large else
            f"**unlike the paper**, where the {'large' if expected_large else 'small'}-batch end looks sharper "
            f"{'without' if expected_large else 'with'} weight decay")


def stopped_short(records: Any) -> list[dict[str, Any]]:
    """The runs whose final training loss is not below :data:`CONVERGED_LOSS`."""
    return [r for r in records if final_train_loss(r) >= CONVERGED_LOSS]


def short_of_minimum(*records: dict[str, Any]) -> str:
    short = stopped_short(records)
    if not short:
        return ""
    return (" Caveat: " + ", ".join(f"{r['label']} stopped at a training loss of {final_train_loss(r):.3g}" for r in short)
            + f" (not below {CONVERGED_LOSS}), so part of this difference may be distance from a minimum.")


# Li et al. compare minimizers; a run whose training loss is still above this is not at one.
CONVERGED_LOSS = 0.02


def converged_note(rows: list[dict[str, Any]]) -> str:
    """What training reached, run by run, against :data:`CONVERGED_LOSS`: sharpness differences between
    runs that stopped short of a minimum are partly distance from one."""
    eval_mode = all("train_loss_eval" in r["history"][-1] for r in rows)
    reached = "; ".join(f"{r['label']} {final_train_loss(r):.3g}" for r in rows)
    short = [r["label"] for r in stopped_short(rows)]
    return (f"Training loss at the end ({'eval mode on the fixed training subset' if eval_mode else 'running average'}"
            f"): {reached}. " + (f"All runs are below {CONVERGED_LOSS}." if not short else
                                 f"**Not below {CONVERGED_LOSS}**: {', '.join(short)}; their slices describe a point "
                                 f"short of a minimum, so part of a sharpness difference may be distance from one."))


def notes(args: Any, s: BatchSizeSettings, template: Any, rows: list[dict[str, Any]]) -> str:
    parts = [f"Every run uses one recipe except batch size and weight decay ({s.model}, {template.dataset}, "
             f"{template.samples or 'all'} training images, {template.epochs} epochs, SGD lr {template.lr} with "
             f"momentum {template.momentum}, lr /10 at {', '.join(f'{m:.0%}' for m in template.milestones)} of the "
             f"iterations), so the large batch takes {s.large // s.small}x fewer steps, as in the paper. Slices: "
             f"`landscapes.scan`, filter-normalized random directions (biases/BN ignored), one per direction seed "
             f"({args.seed}..{args.seed + DIRECTION_SEEDS[args.mode] - 1}), "
             f"{s.random_axis}, losses over the first {s.samples or 'all'} images of each split; interpolation: "
             f"`landscapes.scan --model2 --bn recalibrate`, {s.interp_axis}, over the first {s.samples or 'all'} "
             f"training images, BN statistics re-estimated on them at every point. The paper interpolates the "
             f"stored BN statistics with the weights (`--dir-type states`, exact at α = 0 and 1), but extrapolated "
             f"linearly they turn variances negative beyond the ends: a first quick run that way gave NaN losses "
             f"for every α < 0 and α > 1.05 in the weight-decay pair. Raw curves in `surfaces/*.h5` and "
             f"`results.json`."]
    if args.mode != "full":
        parts.append(converged_note(rows))
    if args.mode == "quick":
        small = max(r["history"][-1]["train_loss"] for r in rows if r["batch_size"] == s.small)
        large = min(r["history"][-1]["train_loss"] for r in rows if r["batch_size"] == s.large)
        parts.append(f"**Scaled down for 2 CPU cores**: {s.model} on {template.samples} MNIST training images for "
                     f"{template.epochs} epochs instead of VGG-9 on CIFAR-10 for 300 epochs, batch {s.small} vs "
                     f"{s.large} instead of 128 vs 8192 (small batches are slow on a CPU), weight decay "
                     f"{max(s.weight_decays):g} instead of 5e-4 (in {rows[0]['steps']} small-batch steps instead of "
                     f"the paper's ~117,000, 5e-4 would barely act). The large-batch runs end at a training loss of "
                     f"at least {large:.3g} against at most {small:.3g} for the small batch"
                     + (": they are not at a minimum yet, so part of any sharpness difference is distance from one. "
                        if large > 2 * small + 0.05 else ". ")
                     + "The test errors are MNIST numbers, the paper's CIFAR-10: compare the direction of the gaps.")
    parts.append("Full mode (`python studies/batch_size_flatness.py`) trains VGG-9 on CIFAR-10 for 300 epochs with "
                 "batch 128 and 8192, weight decay 0 and 5e-4, and scans the paper's grids (51 points, 401 for the "
                 "interpolation) over all 50,000 images. It needs a GPU and was not run here. The paper's test "
                 "errors in the table are transcribed from memory of its Fig. 3 titles, not checked against the text.")
    return "\n\n".join(parts)


if __name__ == "__main__":
    main()

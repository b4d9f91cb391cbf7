"""He et al. 2015, Table 3: shortcut options at equal depth. A (identity, zero-padding where the
shape changes, no parameters), B (1x1 projections only where the shape changes), C (projections
in every block), and the plain net with no shortcut: error and parameter count.

    python studies/shortcut_options.py [--cpu | --quick | --smoke] [--seeds N]
"""
from __future__ import annotations

import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

from models.cli import fail
import models
from models.data import DATASETS
from models.summary import summarize as count
from studies.cache import trained_record
from studies.common import parse_args
from studies.figures import epoch_axis, log_error_axis, mean_band, new_figure, save_figure, seed_strip
from studies.recipes import training_recipe
from studies.report import Timer, training_note, write_json, write_readme
from studies.stats import binomial_se_pct, clearly_above, final_train_error, fmt_diff_se, fmt_mean_sd, mean_sd

NAME = "shortcut_options"
# ResNet-32 is the CIFAR net closest to the paper's ResNet-34. Quick uses ResNet-20 at the paper's
# lr 0.1 (stable at this depth, unlike 44/56 on the quick budget), which trains it much further
# than the shared quick recipe's lr 0.02, and two seeds to show the seed-to-seed spread.
# The cpu tier: ResNet-20 with each option and plain-20 on all of MNIST, five seeds each (the A/B/C
# differences are small, so an order is claimed only where it exceeds the seed spread).
DEPTH = {"full": 32, "cpu": 20, "quick": 20, "smoke": 8}
SEEDS = {"full": 1, "cpu": 5, "quick": 2, "smoke": 1}
OVERRIDES = {"full": {}, "cpu": {}, "quick": dict(lr=0.1), "smoke": {}}
OPTIONS = ("plain", "A", "B", "C")
COLORS = {"plain": "#7f7f7f", "A": "#1f77b4", "B": "#2ca02c", "C": "#d62728"}

# He et al. 2015, Table 3: ImageNet validation error (%), 10-crop testing, 34 layers.
PAPER_TOP1 = {"plain": 28.54, "A": 25.03, "B": 24.52, "C": 24.19}
PAPER_TOP5 = {"plain": 10.02, "A": 7.76, "B": 7.46, "C": 7.40}


def net_config(template: Any, depth: int, option: str) -> Any:
    """The TrainConfig of one option. A is the registry default, so it is left implicit (and the
    run is shared with other studies training resnet<depth>)."""
    if option == "plain":
        return replace(template, model=f"resnet{depth}", noshort=True)
    kwargs = {} if option == "A" else {"shortcut": option}
    return replace(template, model=f"resnet{depth}", model_kwargs=kwargs)


def imagenet_params() -> dict[str, int]:
    """Parameter counts of our ImageNet ResNet-34 with each option (built, not trained)."""
    counts = {}
    for option in OPTIONS:
        kw = {} if option == "plain" else {"shortcut": option}
        name = "resnet34_noshort" if option == "plain" else "resnet34"
        counts[option] = models.count_params(models.build(name, num_classes=1000, **kw))
    return counts


def macs_per_image(template: Any, depth: int, option: str) -> int:
    """Multiply-accumulates of one forward pass on one image of the run's data set (models.summary):
    the deterministic cost of an option, where timings on a shared machine are noise."""
    c, h, w = DATASETS[template.dataset].shape
    kw = dict(template.data_kwargs)
    c, h = kw.get("channels", c), kw.get("image_size", h)
    w = kw.get("image_size", w)
    config = net_config(template, depth, option)
    model = models.build(config.model_name, num_classes=DATASETS[template.dataset].num_classes, in_channels=c,
                         **config.model_kwargs)
    return count(model, (c, h, w)).macs


def summarize(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean (and spread over seeds) of the final test and training errors per option."""
    out = {}
    for option in OPTIONS:
        rs = [r for r in records if r["option"] == option]
        test = [r["final_test_error"] for r in rs]
        out[option] = {"params": rs[0]["params"], "seeds": len(rs), "test_error": statistics.fmean(test),
                       "test_error_sd": mean_sd(test)[1], "test_errors": test,
                       "test_error_min": min(test), "test_error_max": max(test),
                       "train_error": statistics.fmean(final_train_error(r) for r in rs),
                       "train_errors": [final_train_error(r) for r in rs],
                       "train_images_per_s": statistics.median(r["train_images_per_s"] for r in rs)}
    return out


def plot(records: list[dict[str, Any]], summary: dict[str, dict[str, Any]], out: Path, title: str) -> list[str]:
    """Left: each option's test error per epoch, mean over seeds with the min-max band (twenty
    single curves hide the comparison). Right: every seed's final test error beside the option's mean."""
    fig, axes = new_figure(2, 1, size=(5.0, 3.8))
    ax = axes[0, 0]
    for option in OPTIONS:
        rs = [r for r in records if r["option"] == option]
        mean_band(ax, [h["epoch"] for h in rs[0]["history"]], [[h["test_error"] for h in r["history"]] for r in rs],
                  COLORS[option], option if option == "plain" else f"option {option}",
                  ls="--" if option == "plain" else "-", marker="o", ms=3)
    ax.set(xlabel="epoch", ylabel="test error (%)", title=f"Test error per epoch, {title}\n(band: min-max over seeds)")
    log_error_axis(ax)
    epoch_axis(ax)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    seed_strip(axes[0, 1], {o: (summary[o]["test_errors"], COLORS[o], f"{summary[o]['params'] / 1e3:.1f}k params")
                            for o in OPTIONS}, "final test error (%)")
    axes[0, 1].set(xlabel="shortcut option", title="Final test error per seed (line: mean)")
    return [save_figure(fig, out, "shortcut_options")]


def describe(summary: dict[str, dict[str, Any]]) -> str:
    err = {o: summary[o]["test_error"] for o in OPTIONS}
    runs = {o: summary[o]["test_errors"] for o in OPTIONS}
    train = {o: summary[o]["train_errors"] for o in OPTIONS}
    ordered = [f"{a} < {b}" for a in "ABC" for b in "ABC" if a != b and clearly_above(runs[b], runs[a])]
    spread = max(summary[o]["test_error_max"] - summary[o]["test_error_min"] for o in OPTIONS)
    yes = {True: "yes", False: "**no**"}
    abc = sorted("ABC", key=lambda o: err[o])
    one_seed = summary["A"]["seeds"] == 1
    ranking = " < ".join(abc)
    all_ordered = all(f"{a} < {b}" in ordered for a, b in zip(abc, abc[1:]))
    return "\n".join([
        f"- Every shortcut option beats plain: {yes[all(err[o] < err['plain'] for o in 'ABC')]} "
        f"(test error, mean ± sd over seeds: "
        + ", ".join(f"{o} {fmt_mean_sd(runs[o], 2, '%')}" for o in OPTIONS) + "); by more than the seed spread: "
        f"{yes[all(clearly_above(runs['plain'], runs[o]) for o in 'ABC')]}. Difference to plain in points "
        "(mean ± SE of the difference of means): " + ", ".join(f"{o} {fmt_diff_se(runs[o], runs['plain'])}" for o in "ABC")
        + ".",
        "- Training error (eval mode on the fixed training subset where measured), difference to plain in points: "
        + ", ".join(f"{o} {fmt_diff_se(train[o], train['plain'])}" for o in "ABC")
        + f"; every option below plain by more than the seed spread: "
        f"{yes[all(clearly_above(train['plain'], train[o]) for o in 'ABC')]}.",
        "- Orders among A/B/C that exceed the seed spread: " + (", ".join(ordered) if ordered else
                                                               "none (no order among the options is claimed)") + ".",
        f"- The means rank {ranking} (the paper: C < B < A)"
        + ("." if all_ordered else ", a ranking within the seed spread, not claimed.")
        + f" Largest A/B/C gap {max(err[o] for o in 'ABC') - min(err[o] for o in 'ABC'):.2f} points vs a seed "
        f"spread of up to {spread:.2f} points" + (" (one seed: no spread measured)." if one_seed else "."),
        f"- Parameters: A adds none to plain ({summary['A']['params']} = {summary['plain']['params']}); "
        f"B adds {summary['B']['params'] - summary['A']['params']}, C adds "
        f"{summary['C']['params'] - summary['A']['params']}.",
    ])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    def add(p: Any) -> None:
        p.add_argument("--seeds", type=int, default=None, help="training seeds per option "
                       "(seed, seed+1, ...; default 1 full, 5 cpu, 2 quick, 1 smoke)")

    args = parse_args(NAME, __doc__.split("\n\n")[0], argv, add)
    seeds = args.extra["seeds"] or SEEDS[args.mode]
    if seeds < 1:
        fail(f"--seeds must be >= 1, got {seeds}")
    depth = DEPTH[args.mode]
    template = training_recipe(args, **OVERRIDES[args.mode])
    records = []
    try:
        with Timer() as timer:
            for k in range(seeds):
                for option in OPTIONS:
                    config = replace(net_config(template, depth, option), seed=args.seed + k)
                    records.append(trained_record(config, args.runs, option=option, seed=args.seed + k,
                                                  seed_index=k))
            imagenet = imagenet_params()
            macs = {o: macs_per_image(template, depth, o) for o in OPTIONS}
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    summary = summarize(records)
    figures = plot(records, summary, args.out, f"depth {depth} on {template.dataset}")
    result = {"study": NAME, "tier": args.mode, "mode": args.mode, "depth": depth, "dataset": template.dataset,
              "train_samples": records[0]["train_samples_n"], "test_samples": records[0]["test_samples_n"],
              "epochs": template.epochs, "seeds": [args.seed + k for k in range(seeds)], "seconds": timer.seconds,
              "test_error_pct": {o: summary[o]["test_errors"] for o in OPTIONS},
              "summary": summary, "macs_per_image": macs, "imagenet_resnet34_params": imagenet, "nets": records,
              "paper": {"imagenet_top1": PAPER_TOP1, "imagenet_top5": PAPER_TOP5}}
    write_json(args.out / "results.json", result)
    table = [{"option": o, f"params, depth {depth} (ours)": summary[o]["params"],
              f"test error % (ours, mean ± sd over {seeds} seeds)": fmt_mean_sd(summary[o]["test_errors"], 2),
              f"binomial SE per seed ({records[0]['test_samples_n']} test images)":
                  f"± {binomial_se_pct(summary[o]['test_error'], records[0]['test_samples_n']):.2f}",
              "train error % (ours, eval mode where measured)": fmt_mean_sd(summary[o]["train_errors"], 2),
              "MMACs per image (ours)": macs[o] / 1e6,
              "params, ResNet-34 ImageNet (ours)": imagenet[o],
              "top-1 % (He et al., ImageNet 34 layers)": PAPER_TOP1[o],
              "top-5 %": PAPER_TOP5[o]} for o in OPTIONS]
    notes = [f"Training recipe: {template.dataset}, {template.samples or 'all'} training images, "
             f"{template.epochs} epochs, batch {template.batch_size}, lr {template.lr} (/10 at 50% and 75%), "
             f"weight decay {template.weight_decay}; seeds {args.seed}..{args.seed + seeds - 1}. The ImageNet "
             "parameter counts are of our registry's resnet34 built with each option (not trained)."]
    notes.append(training_note(records))
    if args.mode == "cpu":
        notes.append(f"What differs from the paper: ResNet-{depth} on MNIST instead of ResNet-34 on ImageNet (no GPU, "
                     "no ImageNet here), so the errors are ~1% instead of ~25% and the A/B/C differences the paper "
                     "reports (0.3-0.8 points of top-1) have no MNIST counterpart to compare with; what carries "
                     "over is the question, tested here over seeds: do the options differ from plain and from each "
                     "other by more than seed-to-seed noise? Depth 20 is where a plain net does not yet degrade "
                     "(the degradation study: plain-20 and ResNet-20 end within each other's spread, plain-56 does "
                     "not), so plain vs shortcut is expected to be close here; 20 trainings at depth 56 (~50 "
                     "core-minutes each) did not fit. The plain and option-A nets of seeds 0 and 1 are the "
                     "degradation study's (same configuration, one cached run).")
    if args.mode == "quick":
        notes.append(f"Full mode (CIFAR-10, ResNet-32, 164 epochs) was not run here: no GPU and no CIFAR-10 on "
                     f"this machine. The quick run is ResNet-{depth} on an MNIST subset for a few epochs, where "
                     "all shortcut options reach about the same error: the paper's A/B/C differences (0.3-0.8 "
                     "points on ImageNet) are far below what this budget can resolve; only plain vs shortcut "
                     "is expected to show.")
    write_readme(args, "Shortcut options A / B / C vs plain at equal depth (He et al. 2015, Table 3)",
                 "All three shortcut options are considerably better than the plain net; B is slightly "
                 "better than A (A's zero-padded channels learn no residual) and C marginally better than "
                 "B (extra parameters), so projections are not essential to address degradation.",
                 {"Error and parameters": table}, figures, describe(summary), "\n\n".join(notes), timer.seconds)
    return result


if __name__ == "__main__":
    main()

"""Huang et al. 2016, Deep Networks with Stochastic Depth: ResNet-110 trained with constant depth
vs with residual blocks dropped at random (survival linearly decaying to p_L = 0.5, a dropped
block skipped for the whole mini-batch): test error curves and training time.

    python studies/stochastic_depth.py [--cpu | --quick | --smoke]

The cpu tier measures the time claim only: constant and stochastic depth at depths 56 and 110,
interleaved step by step in one process (odenets.stochastic_depth), beside the fraction of residual
branches actually computed. Its error claim needs seeds of 500-epoch runs and is not made there.
"""
from __future__ import annotations

import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

from models.blocks import linear_decay
from models.cli import fail
from models.data import load_device_data
from models.train import evaluate, warmup_enabled
from odenets.stochastic_depth import TimingConfig, time_training_steps
from studies.cache import load_trained, run_path, trained_record
from studies.common import parse_args
from studies.figures import epoch_axis, family_color, log_error_axis, new_figure, save_figure
from studies.recipes import training_recipe
from studies.report import Timer, training_note, write_json, write_readme

NAME = "stochastic_depth"
DEPTH = {"full": 110, "quick": 56, "smoke": 20}
FINAL_DROP = 0.5  # drop probability of the last block, 1 - p_L (Huang et al.'s default)
# Huang et al.: 500 epochs, lr 0.1 divided by 10 at epochs 250 and 375. Quick: a small MNIST
# subset for more epochs than the other studies, so that regularization has something to act on.
OVERRIDES = {"full": dict(epochs=500), "quick": dict(samples=2000, test_samples=2000, epochs=8), "smoke": {}}
# Huang et al. 2016, Table 1: CIFAR-10 (with augmentation) test error %, 110 layers.
PAPER_TEST_ERROR = {"constant depth": 6.41, "stochastic depth": 5.25}
VARIANTS = {"constant depth": {}, "stochastic depth": {"drop_path": FINAL_DROP, "drop_mode": "batch"}}


def expected_saving(depth: int, final_drop: float = FINAL_DROP) -> float:
    """Expected fraction of residual branches skipped per step under the linear decay rule
    (about 25% for p_L = 0.5): the compute saving on the blocks, not counting stem and head."""
    drops = linear_decay(3 * (depth - 2) // 6, final_drop)
    return sum(drops) / len(drops)


TIMING_DEPTHS = (56, 110)  # the cpu tier: interleaved timing only
TIMING = dict(steps=16, warmup=3, batch_size=64, image_size=32, modes=("batch",))


def paired_ratio(stochastic: list[float], constant: list[float]) -> tuple[float, float]:
    """(mean, SE) of the per-step time ratio stochastic / constant over steps interleaved in one
    process: step k of each variant ran back to back, so load drifts cancel in each ratio."""
    ratios = [a / b for a, b in zip(stochastic, constant)]
    return statistics.fmean(ratios), statistics.stdev(ratios) / len(ratios) ** 0.5


def timing_study(args: Any) -> dict[str, Any]:
    """The cpu tier: interleaved step timing of constant vs stochastic depth (batch mode) at each
    of TIMING_DEPTHS, with the fraction of branches computed; README and results.json."""
    rows = []
    with Timer() as timer:
        for depth in TIMING_DEPTHS:
            doc = time_training_steps(TimingConfig(model=f"resnet{depth}", drop_path=FINAL_DROP, seed=args.seed,
                                                   device=args.device, **TIMING))
            const, sd = doc["rows"][0], doc["rows"][1]
            mean, se = paired_ratio(sd["step_seconds"], const["step_seconds"])
            rows.append({"depth": depth, "blocks": doc["blocks"], "constant_s_per_step": const["seconds_per_step"],
                         "stochastic_s_per_step": sd["seconds_per_step"], "time_ratio": mean, "time_ratio_se": se,
                         "time_saving": 1 - mean, "branches_computed": sd["branches_computed"],
                         "expected_branches_computed": 1 - expected_saving(depth), "threads": doc["threads"],
                         "steps": TIMING["steps"]})
    result = {"study": NAME, "tier": args.mode, "mode": args.mode, "seeds": [args.seed], "train_samples": None,
              "test_samples": None, "timing": rows, "timing_settings": TIMING, "final_drop": FINAL_DROP,
              "seconds": timer.seconds, "error_claim": "not tested in this tier",
              "paper": {"cifar10_test_error": PAPER_TEST_ERROR, "expected_saving": 0.25}}
    write_json(args.out / "results.json", result)
    table = [{"net": f"ResNet-{r['depth']}", "s/step constant": r["constant_s_per_step"],
              "s/step stochastic": r["stochastic_s_per_step"],
              "time ratio (mean ± SE over steps)": f"{r['time_ratio']:.3f} ± {r['time_ratio_se']:.3f}",
              "branches computed": f"{r['branches_computed']:.3f}",
              "expected (mean survival)": f"{r['expected_branches_computed']:.3f}"} for r in rows]
    lines = [f"- ResNet-{r['depth']}: a training step takes {r['time_ratio']:.3f} ± {r['time_ratio_se']:.3f} of the "
             f"constant-depth step (saving {100 * r['time_saving']:.1f} ± {100 * r['time_ratio_se']:.1f}%) while "
             f"{100 * r['branches_computed']:.1f}% of the residual branches were computed (expected "
             f"{100 * r['expected_branches_computed']:.1f}%)" + (
                 ": the stem, head, optimizer step and the dropped blocks' shortcuts are not skipped, so the time "
                 "saving stays below the branch saving." if r["time_saving"] < 1 - r["branches_computed"] else ".")
             for r in rows]
    lines.append("- The test-error claim (5.25% vs 6.41% on CIFAR-10 after 500 epochs) was **not tested** in this "
                 "tier: it needs long runs over several seeds. The quick run's errors (a few hundred steps) say "
                 "nothing about it.")
    notes = (f"Timing: `odenets.stochastic_depth.time_training_steps`, batch {TIMING['batch_size']} of "
             f"{TIMING['image_size']}x{TIMING['image_size']} synthetic images (CIFAR-shaped), {TIMING['steps']} SGD "
             f"steps per variant after {TIMING['warmup']} warm-up steps, the two variants alternating step by step in "
             f"one process on {args.device} ({rows[0]['threads']} threads); the ratio's SE is over the per-step "
             "ratios. The machine is shared, so absolute seconds are indicative; the ratio is what is compared.")
    write_readme(args, "Stochastic depth vs constant depth: training time (Huang et al. 2016)",
                 "Dropping residual blocks at random during training (survival decaying linearly to 0.5) "
                 "shortens training (about 25% fewer block computations) and lowers the test error of ResNet-110 "
                 "on CIFAR-10 from 6.41% to 5.25%.", {"Interleaved step timing": table}, [],
                 "\n".join(lines), notes, timer.seconds)
    return result


def plot(records: dict[str, dict[str, Any]], out: Path, title: str, depth: int, saving: float) -> list[str]:
    fig, axes = new_figure(2, 1, size=(5.0, 3.8))
    colors = {"constant depth": family_color(True), "stochastic depth": "#000000"}
    ax = axes[0, 0]
    for name, r in records.items():
        epochs = [h["epoch"] for h in r["history"]]
        ax.plot(epochs, [h["test_error"] for h in r["history"]], "-", color=colors[name], marker="o", ms=3,
                label=f"{name}: test")
        ax.plot(epochs, [h["train_error"] for h in r["history"]], "--", color=colors[name], lw=1,
                label=f"{name}: training")
    ax.set(xlabel="epoch", ylabel="error (%)", title=f"Constant vs stochastic depth, {title}")
    log_error_axis(ax)
    epoch_axis(ax)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[0, 1]
    names = list(records)
    times = [records[n]["relative_train_time"] for n in names]
    ax.bar(range(len(names)), times, color=[colors[n] for n in names])
    for i, n in enumerate(names):
        ax.annotate(f"{times[i]:.2f} ({records[n]['train_images_per_s']:.0f} img/s)", (i, times[i]),
                    ha="center", va="bottom", xytext=(0, 4), textcoords="offset points", fontsize=8)
    ax.axhline(1 - saving, color="grey", ls=":", lw=1, label=f"expected: 1 - {saving:.3f}")
    ax.set_xticks(range(len(names)), names)
    ax.set(ylabel="training time relative to constant depth", title="Training time (test passes excluded)")
    ax.legend(fontsize=8, loc="lower right")
    ax.margins(y=0.15)
    return [save_figure(fig, out, "stochastic_depth")]


def describe(records: dict[str, dict[str, Any]], saving: float) -> str:
    c, s = records["constant depth"], records["stochastic depth"]
    yes = {True: "yes", False: "**no**"}
    measured = 1 - s["relative_train_time"]
    return "\n".join([
        f"- Lower final test error with stochastic depth: {yes[s['final_test_error'] < c['final_test_error']]} "
        f"({s['final_test_error']:.2f}% vs {c['final_test_error']:.2f}%; best over epochs "
        f"{s['best_test_error']:.2f}% vs {c['best_test_error']:.2f}%).",
        f"- Higher training error with stochastic depth (it regularizes): "
        f"{yes[s['final_train_error'] > c['final_train_error']]} ({s['final_train_error']:.2f}% vs "
        f"{c['final_train_error']:.2f}%).",
        f"- Training time saved: {100 * measured:.0f}% measured vs {100 * saving:.1f}% of the residual "
        "branches skipped in expectation.",
        f"- Stochastic-depth net in eval mode on its own training images: {s['eval_train_error']:.2f}% error "
        f"(running training error {s['final_train_error']:.2f}%; constant depth {c['eval_train_error']:.2f}%): "
        + ("a higher test error here is underfitting, not a mismatch of the test-time scaling."
           if s["eval_train_error"] < 1.5 * s["final_train_error"] + 2 else
           "far above the running error: the test-time scaling does not match what was trained."),
    ])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(NAME, __doc__.split("\n\n")[0], argv)
    if args.mode == "cpu":
        return timing_study(args)
    depth = DEPTH[args.mode]
    template = training_recipe(args, model=f"resnet{depth}", **OVERRIDES[args.mode])
    records = {}
    try:
        with Timer() as timer:
            train = load_device_data(template.dataset, template.data_root, "train", template.samples,
                                     args.device, args.download, **template.data_kwargs)
            for name, kwargs in VARIANTS.items():
                r = trained_record(replace(template, model_kwargs=kwargs), args.runs, variant=name)
                # The final net in eval mode (all blocks, branches scaled by p_l) on its own training
                # images: close to the running training error means underfitting, far above it
                # would mean the test-time scaling does not match what was trained.
                _, r["eval_train_error"] = evaluate(load_trained(run_path(r), args.device), train)
                records[name] = r
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    # Both runs see the same images for the same epochs, so training time is proportional to the
    # seconds per image. The median over epochs (test passes excluded) keeps an epoch slowed down
    # by other jobs on a shared machine from deciding the comparison.
    per_image = {n: statistics.median(1.0 / h["images_per_s"] for h in r["history"]) for n, r in records.items()}
    for n, r in records.items():
        r["relative_train_time"] = per_image[n] / per_image["constant depth"]
    saving = expected_saving(depth)
    figures = plot(records, args.out, f"ResNet-{depth} on {template.dataset}", depth, saving)
    result = {"study": NAME, "mode": args.mode, "depth": depth, "dataset": template.dataset,
              "samples": template.samples, "epochs": template.epochs, "final_drop": FINAL_DROP,
              "expected_branch_saving": saving, "seed": args.seed, "seconds": timer.seconds,
              "nets": records, "paper": {"cifar10_test_error": PAPER_TEST_ERROR, "expected_saving": 0.25}}
    write_json(args.out / "results.json", result)
    table = [{"variant": n, "final test error % (ours)": r["final_test_error"],
              "best test error % (ours)": r["best_test_error"], "final train error % (ours)": r["final_train_error"],
              "train error % in eval mode (ours)": r["eval_train_error"],
              "train images/s (ours, median)": r["train_images_per_s"],
              "relative training time": r["relative_train_time"], "wall s (ours)": r["wall_seconds"],
              "test error % (Huang et al., CIFAR-10, ResNet-110)": PAPER_TEST_ERROR[n]}
             for n, r in records.items()]
    notes = [f"Recipe: {template.dataset}, {template.samples or 'all'} training images, {template.epochs} epochs, "
             f"batch {template.batch_size}, SGD lr {template.lr} momentum {template.momentum} (/10 at 50% and "
             f"75% of the iterations), weight decay {template.weight_decay}. Stochastic depth: "
             f"`models.build('resnet{depth}', drop_path={FINAL_DROP}, drop_mode='batch')`, i.e. block l "
             f"survives with p_l = 1 - l/L (1 - p_L), one draw per mini-batch, a dropped branch is not computed, "
             "and at test time each branch is scaled by p_l (Huang et al.'s rule). The optimizer is models.train's "
             "SGD (plain momentum)" + (", with He et al.'s lr warm-up for depth >= 110 in both runs" if
                                      warmup_enabled(template) else "") + ". The final train error is the "
             "running average of the last epoch in train mode (blocks dropped); the eval-mode train error "
             "re-evaluates the final net on the same training images with all blocks. Relative training time "
             "is the ratio of the median seconds per "
             "training image over epochs (from the throughput models.train logs per epoch; test passes "
             "excluded); the machine is shared with other jobs, so times are indicative."]
    notes.append(training_note(records.values()))
    if args.mode == "quick":
        notes.append(f"Full mode (ResNet-110, CIFAR-10 with augmentation, 500 epochs) was not run here: no GPU "
                     f"and no CIFAR-10 on this machine. The quick run is ResNet-{depth} on {template.samples} "
                     f"MNIST images for {template.epochs} epochs; stochastic depth is a regularizer whose gain "
                     "shows over long training (Huang et al.: 500 epochs), while in a budget of ~130 steps it "
                     "mostly slows convergence: the quick run is expected to show the time saving and the "
                     "higher training error, not the lower test error.")
    write_readme(args, "Stochastic depth vs constant depth (Huang et al. 2016)",
                 "Dropping residual blocks at random during training (survival decaying linearly to 0.5) "
                 "both shortens training (about 25% fewer block computations) and lowers the test error of "
                 "ResNet-110 on CIFAR-10 from 6.41% to 5.25%.", {"Constant vs stochastic depth": table},
                 figures, describe(records, saving), "\n\n".join(notes), timer.seconds)
    return result


if __name__ == "__main__":
    main()

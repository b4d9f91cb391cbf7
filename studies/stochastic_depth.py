"""Huang et al. 2016, Deep Networks with Stochastic Depth: ResNet-110 trained with constant depth
vs with residual blocks dropped at random (survival linearly decaying to p_L = 0.5, a dropped
block skipped for the whole mini-batch): test error curves and training time.

    python studies/stochastic_depth.py [--cpu | --quick | --smoke]

The cpu tier measures the time claim at depths 56 and 110: constant and stochastic depth interleaved
step by step in one process (odenets.stochastic_depth), beside the fraction of residual branches
actually computed. Its error runs are ResNet-20 over five seeds and ResNet-56 over three (ResNet-110 for
500 epochs, the paper's setting, is far beyond 2 cores), so the error claim is made at those depths only.
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
from studies.figures import epoch_axis, family_color, log_error_axis, mean_band, new_figure, save_figure, seed_strip
from studies.recipes import training_recipe
from studies.report import Timer, training_note, write_json, write_readme
from studies.stats import binomial_se_pct, clearly_above, final_train_error, fmt_diff_se, fmt_mean_sd, mean_diff_se

NAME = "stochastic_depth"
# (depth, seeds) of the error runs per tier. Cpu: ResNet-20 over five seeds, and ResNet-56 over three (its
# constant-depth runs are the degradation study's nets).
ERROR_RUNS = {"full": ((110, 1),), "cpu": ((20, 5), (56, 3)), "quick": ((56, 1),), "smoke": ((20, 1),)}
FINAL_DROP = 0.5  # drop probability of the last block, 1 - p_L (Huang et al.'s default)
# Huang et al.: 500 epochs, lr 0.1 divided by 10 at epochs 250 and 375. Quick: a small MNIST
# subset for more epochs than the other studies, so that regularization has something to act on.
# Cpu: the shared cpu recipe, whose constant-depth ResNet-20 runs are shortcut_options' option A.
OVERRIDES = {"full": dict(epochs=500), "cpu": {}, "quick": dict(samples=2000, test_samples=2000, epochs=8), "smoke": {}}
# Huang et al. 2016, Table 1: CIFAR-10 (with augmentation) test error %, 110 layers.
PAPER_TEST_ERROR = {"constant depth": 6.41, "stochastic depth": 5.25}
VARIANTS = {"constant depth": {}, "stochastic depth": {"drop_path": FINAL_DROP, "drop_mode": "batch"}}


def expected_saving(depth: int, final_drop: float = FINAL_DROP) -> float:
    """Expected fraction of residual branches skipped per step under the linear decay rule
    (about 25% for p_L = 0.5): the compute saving on the blocks, not counting stem and head."""
    drops = linear_decay(3 * (depth - 2) // 6, final_drop)
    return sum(drops) / len(drops)


TIMING_DEPTHS = (56, 110)  # the cpu tier's interleaved timing
TIMING = dict(steps=16, warmup=3, batch_size=64, image_size=32, modes=("batch",))


def paired_ratio(stochastic: list[float], constant: list[float]) -> tuple[float, float]:
    """(mean, SE) of the per-step time ratio stochastic / constant over steps interleaved in one
    process: step k of each variant ran back to back, so load drifts cancel in each ratio."""
    ratios = [a / b for a, b in zip(stochastic, constant)]
    return statistics.fmean(ratios), statistics.stdev(ratios) / len(ratios) ** 0.5


def timing_rows(args: Any) -> list[dict[str, Any]]:
    """The cpu tier's time claim: interleaved step timing of constant vs stochastic depth (batch
    mode) at each of TIMING_DEPTHS, with the fraction of branches computed."""
    rows = []
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
    return rows


def timing_report(args: Any, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str], str]:
    """(README table, finding lines, note) of :func:`timing_rows`."""
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
    note = (f"Timing: `odenets.stochastic_depth.time_training_steps`, batch {TIMING['batch_size']} of "
            f"{TIMING['image_size']}x{TIMING['image_size']} synthetic images (CIFAR-shaped), {TIMING['steps']} SGD "
            f"steps per variant after {TIMING['warmup']} warm-up steps, the two variants alternating step by step in "
            f"one process on {args.device} ({rows[0]['threads']} threads); the ratio's SE is over the per-step "
            "ratios. The machine is shared, so absolute seconds are indicative; the ratio is what is compared.")
    return table, lines, note


def train_variants(args: Any, template: Any, seeds: int) -> dict[str, list[dict[str, Any]]]:
    """Both variants over ``seeds`` seeds (cached runs), each with its eval-mode training error."""
    records: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
    train = None
    for k in range(seeds):
        for name, kwargs in VARIANTS.items():
            r = trained_record(replace(template, model_kwargs=kwargs, seed=args.seed + k), args.runs, variant=name,
                               seed_index=k)
            # The final net in eval mode (all blocks, branches scaled by p_l) on training images: close
            # to the running training error means underfitting, far above it would mean the test-time
            # scaling does not match what was trained. The cpu tier measured it after every epoch.
            if "train_error_eval" in r["history"][-1]:
                r["eval_train_error"] = final_train_error(r)
            else:
                if train is None:
                    train = load_device_data(template.dataset, template.data_root, "train", template.samples,
                                             args.device, args.download, **template.data_kwargs)
                _, r["eval_train_error"] = evaluate(load_trained(run_path(r), args.device), train)
            records[name].append(r)
    return records


def relative_train_times(records: dict[str, list[dict[str, Any]]]) -> None:
    """Each run's seconds per training image relative to constant depth's (median over epochs and
    seeds, test passes excluded; stored as ``relative_train_time``). Both variants see the same
    images for the same epochs, so this is their training-time ratio, though not interleaved."""
    per_image = {n: statistics.median(1.0 / h["images_per_s"] for r in rs for h in r["history"])
                 for n, rs in records.items()}
    for n, rs in records.items():
        for r in rs:
            r["relative_train_time"] = per_image[n] / per_image["constant depth"]


def plot(by_depth: dict[int, dict[str, list[dict[str, Any]]]], out: Path, dataset: str) -> list[str]:
    """One row per depth: test (solid) and running training (dashed) error per epoch, mean over
    seeds with its min-max band; final test error per seed beside each variant's mean."""
    fig, axes = new_figure(2, len(by_depth), size=(5.0, 3.8))
    colors = {"constant depth": family_color(True), "stochastic depth": "#000000"}
    for row, (depth, records) in enumerate(by_depth.items()):
        ax = axes[row, 0]
        for name, rs in records.items():
            epochs = [h["epoch"] for h in rs[0]["history"]]
            mean_band(ax, epochs, [[h["test_error"] for h in r["history"]] for r in rs], colors[name],
                      f"{name}: test", marker="o", ms=3)
            mean_band(ax, epochs, [[h["train_error"] for h in r["history"]] for r in rs], colors[name],
                      f"{name}: training (running)", ls="--", lw=1)
        ax.set(xlabel="epoch", ylabel="error (%)",
               title=f"Constant vs stochastic depth, ResNet-{depth} on {dataset}\n(band: min-max over seeds)")
        log_error_axis(ax)
        epoch_axis(ax)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        seed_strip(axes[row, 1], {n: ([r["final_test_error"] for r in rs], colors[n], "") for n, rs in records.items()},
                   "final test error (%)")
        axes[row, 1].set(title=f"ResNet-{depth}: final test error per seed (line: mean)")
    return [save_figure(fig, out, "stochastic_depth")]


def describe(records: dict[str, list[dict[str, Any]]], depth: int, timed: bool) -> str:
    """The error claim over seeds (the difference of means with its SE; an order only beyond the
    seed spread), and the time saving from the training logs unless ``timed`` (interleaved) replaces it."""
    c, s = records["constant depth"], records["stochastic depth"]
    test = {n: [r["final_test_error"] for r in rs] for n, rs in records.items()}
    running = {n: [r["final_train_error"] for r in rs] for n, rs in records.items()}
    evaluated = {n: [r["eval_train_error"] for r in rs] for n, rs in records.items()}
    yes = {True: "yes", False: "**no**"}
    diff = mean_diff_se(test["stochastic depth"], test["constant depth"])[0]
    if len(s) == 1:
        beyond = "one seed: no spread measured"
    else:
        beyond = "the difference exceeds the seed spread: " + yes[clearly_above(test["constant depth"], test["stochastic depth"])
                                                   or clearly_above(test["stochastic depth"], test["constant depth"])]
    ms, mc = statistics.fmean(evaluated["stochastic depth"]), statistics.fmean(running["stochastic depth"])
    lines = [
        f"- ResNet-{depth}, lower final test error with stochastic depth: {yes[diff < 0]} ({fmt_mean_sd(test['stochastic depth'], 2, '%')}"
        f" vs {fmt_mean_sd(test['constant depth'], 2, '%')}, mean ± sd over seeds; difference "
        f"{fmt_diff_se(test['stochastic depth'], test['constant depth'])} points; {beyond}; binomial SE of one run "
        f"± {binomial_se_pct(statistics.fmean(test['constant depth']), c[0]['test_samples_n']):.2f}).",
        f"- ResNet-{depth}, higher running training error with stochastic depth (train mode, blocks dropped: it regularizes): "
        f"{yes[statistics.fmean(running['stochastic depth']) > statistics.fmean(running['constant depth'])]} "
        f"({fmt_mean_sd(running['stochastic depth'], 2, '%')} vs {fmt_mean_sd(running['constant depth'], 2, '%')}).",
        f"- ResNet-{depth}, stochastic-depth nets in eval mode on training images: {fmt_mean_sd(evaluated['stochastic depth'], 2, '%')}"
        f" error (constant depth {fmt_mean_sd(evaluated['constant depth'], 2, '%')}): "
        + ("a higher test error here is underfitting, not a mismatch of the test-time scaling."
           if ms < 1.5 * mc + 2 else
           "far above the running error: the test-time scaling does not match what was trained."),
    ]
    if not timed:
        measured = 1 - s[0]["relative_train_time"]
        lines.append(f"- ResNet-{depth}, training time saved: {100 * measured:.0f}% from the per-epoch logs (the runs were not "
                     f"interleaved) vs {100 * expected_saving(depth):.1f}% of the residual branches skipped in "
                     "expectation.")
    return "\n".join(lines)


def recipe_note(template: Any, depths: list[int]) -> str:
    return (f"Recipe: {template.dataset}, {template.samples or 'all'} training images, {template.epochs} epochs, "
            f"batch {template.batch_size}, SGD lr {template.lr} momentum {template.momentum} (/10 at 50% and "
            f"75% of the iterations), weight decay {template.weight_decay}. Stochastic depth: "
            f"`models.build('resnet<depth>', drop_path={FINAL_DROP}, drop_mode='batch')` at depth "
            f"{', '.join(str(d) for d in depths)}, i.e. block l "
            f"survives with p_l = 1 - l/L (1 - p_L), one draw per mini-batch, a dropped branch is not computed, "
            "and at test time each branch is scaled by p_l (Huang et al.'s rule). The optimizer is models.train's "
            "SGD (plain momentum)" + (", with He et al.'s lr warm-up in both runs" if warmup_enabled(template) else "")
            + ". The running train error is the last epoch's average in train mode (blocks dropped); the eval-mode "
            "train error re-evaluates the final net with all blocks"
            + (f" on the first {template.train_eval_samples} training images." if template.train_eval_samples
               else " on its training images."))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(NAME, __doc__.split("\n\n")[0], argv)
    runs = dict(ERROR_RUNS[args.mode])
    templates = {d: training_recipe(args, model=f"resnet{d}", **OVERRIDES[args.mode]) for d in runs}
    timed = args.mode == "cpu"
    try:
        with Timer() as timer:
            timing = timing_rows(args) if timed else []
            by_depth = {d: train_variants(args, templates[d], seeds) for d, seeds in runs.items()}
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    if not timed:
        for records in by_depth.values():
            relative_train_times(records)
    template = next(iter(templates.values()))
    figures = plot(by_depth, args.out, template.dataset)
    first = next(iter(by_depth.values()))["constant depth"][0]
    result = {"study": NAME, "tier": args.mode, "mode": args.mode, "dataset": template.dataset,
              "train_samples": first["train_samples_n"], "test_samples": first["test_samples_n"],
              "epochs": template.epochs, "final_drop": FINAL_DROP,
              "seeds": [args.seed + k for k in range(max(runs.values()))], "seconds": timer.seconds,
              "depths": {str(d): {"seeds": [args.seed + k for k in range(runs[d])],
                                  "expected_branch_saving": expected_saving(d),
                                  "test_error_pct": {n: [r["final_test_error"] for r in rs] for n, rs in records.items()},
                                  "nets": records} for d, records in by_depth.items()},
              "paper": {"cifar10_test_error": PAPER_TEST_ERROR, "expected_saving": 0.25}}
    if timed:
        result.update(timing=timing, timing_settings=TIMING)
    write_json(args.out / "results.json", result)
    tables, lines = {}, []
    for d, records in by_depth.items():
        rows = {n: {"variant": n, "seeds": len(rs),
                    "final test error % (ours, mean ± sd)": fmt_mean_sd([r["final_test_error"] for r in rs], 2),
                    "running train error % (ours)": fmt_mean_sd([r["final_train_error"] for r in rs], 2),
                    "train error % in eval mode (ours)": fmt_mean_sd([r["eval_train_error"] for r in rs], 2)}
                for n, rs in records.items()}
        for n, row in rows.items():
            if not timed:
                row["relative training time (logs)"] = records[n][0]["relative_train_time"]
            row["test error % (Huang et al., CIFAR-10, ResNet-110)"] = PAPER_TEST_ERROR[n]
        tables[f"Constant vs stochastic depth, ResNet-{d}"] = list(rows.values())
        lines.append(describe(records, d, timed))
    notes = [recipe_note(template, list(by_depth)),
             training_note(r for records in by_depth.values() for rs in records.values() for r in rs)]
    if timed:
        table, timing_lines, timing_note = timing_report(args, timing)
        tables = {"Interleaved step timing": table, **tables}
        lines = timing_lines + lines + [
            f"- The paper's error claim is about ResNet-110 after 500 epochs on CIFAR-10; here it was tested at "
            f"depths {' and '.join(str(d) for d in runs)} on MNIST for {template.epochs} epochs ("
            + ", ".join(f"{runs[d]} seeds at {d}" for d in runs) + "), where stochastic depth has fewer blocks to "
            "drop and little overfitting to prevent. ResNet-110 was timed, not trained."]
        notes.insert(0, timing_note)
    if args.mode == "quick":
        depth = next(iter(runs))
        notes.append(f"Full mode (ResNet-110, CIFAR-10 with augmentation, 500 epochs) was not run here: no GPU "
                     f"and no CIFAR-10 on this machine. The quick run is ResNet-{depth} on {template.samples} "
                     f"MNIST images for {template.epochs} epochs; stochastic depth is a regularizer whose gain "
                     "shows over long training (Huang et al.: 500 epochs), while in a budget of ~130 steps it "
                     "mostly slows convergence: the quick run is expected to show the time saving and the "
                     "higher training error, not the lower test error.")
    write_readme(args, "Stochastic depth vs constant depth (Huang et al. 2016)",
                 "Dropping residual blocks at random during training (survival decaying linearly to 0.5) "
                 "both shortens training (about 25% fewer block computations) and lowers the test error of "
                 "ResNet-110 on CIFAR-10 from 6.41% to 5.25%.", tables,
                 figures, "\n".join(lines), "\n\n".join(notes), timer.seconds)
    return result


if __name__ == "__main__":
    main()

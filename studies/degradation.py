"""He et al. 2015, Fig. 6 (the degradation problem): plain-20/32/44/56 against ResNet-20/32/44/56,
trained with one recipe. Deeper plain nets reach a higher *training* error; residual nets do not.

    python studies/degradation.py [--quick | --smoke]
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from models.cli import fail
from studies.cache import publish_records, trained_record
from studies.common import parse_args
from studies.figures import curve_style, epoch_axis, family_color, log_error_axis, new_figure, save_figure
from studies.recipes import training_recipe
from studies.report import Timer, training_note, write_json, write_readme
from studies.stats import (binomial_se_pct, clearly_above, final_train_error, fmt_diff_se, fmt_mean_sd,
                           last_epoch_loss_change, mean_sd)

NAME = "degradation"
DEPTHS = {"full": (20, 32, 44, 56), "cpu": (20, 56), "quick": (20, 32, 44, 56), "smoke": (8, 20)}
SEEDS = {"full": 1, "cpu": 3, "quick": 1, "smoke": 1}

# He et al. 2015: Table 6 (CIFAR-10 test error %, ResNets with option A shortcuts; the paper
# gives no table for its CIFAR plain nets, only Fig. 6) and Table 2 (ImageNet top-1 %, 10-crop).
PAPER_CIFAR_RESNET_TEST = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43}
PAPER_IMAGENET_TOP1 = {"plain-18": 27.94, "plain-34": 28.54, "ResNet-18": 27.88, "ResNet-34": 25.03}


@dataclass(frozen=True)
class Net:
    """One of the compared nets: CIFAR ResNet-<depth>, or its plain twin (same layers, no skips)."""

    depth: int
    residual: bool

    @property
    def model(self) -> str:
        return f"resnet{self.depth}"

    @property
    def label(self) -> str:
        return f"{'ResNet' if self.residual else 'plain'}-{self.depth}"


def train_nets(template: Any, nets: list[Net], runs: Path, seeds: list[int]) -> list[dict[str, Any]]:
    """Train (or reuse from ``runs``) every net with the recipe ``template`` (a TrainConfig) for
    every seed, seed by seed (so that a stopped run has whole seeds); one record per net and seed
    (see :func:`studies.common.trained_record`)."""
    return [trained_record(replace(template, model=net.model, noshort=not net.residual, seed=seed), runs,
                           label=net.label, depth=net.depth, residual=net.residual, seed=seed)
            for seed in seeds for net in nets]


def net_key(record: dict[str, Any]) -> str:
    """results.json's name for a net: plain20, resnet56, ..."""
    return f"{'resnet' if record['residual'] else 'plain'}{record['depth']}"


def by_net(records: list[dict[str, Any]], value: Any) -> dict[str, list[float]]:
    """``value(record)`` per net, as a list over seeds (in seed order)."""
    out: dict[str, list[float]] = {}
    for r in sorted(records, key=lambda r: r["seed"]):
        out.setdefault(net_key(r), []).append(value(r))
    return out


def plot(records: list[dict[str, Any]], out: Path, dataset: str) -> list[str]:
    """Training error per epoch (every seed; colour: plain or ResNet, dashes: depth), test error per
    epoch, and final training error vs depth (mean ± sd over seeds), in one figure; the legend lists
    the plain nets in one column and the ResNets in the other."""
    fig, axes = new_figure(3, 1, size=(4.6, 3.8))
    train_key = "train_error_eval" if "train_error_eval" in records[0]["history"][-1] else "train_error"
    for col, key in enumerate((train_key, "test_error")):
        ax = axes[0, col]
        labelled = set()
        for r in records:
            epochs = [h["epoch"] for h in r["history"]]
            label = None if r["label"] in labelled else r["label"]
            labelled.add(r["label"])
            # floored at 0.01% so that a perfect epoch stays on the log axis
            ax.plot(epochs, [max(h[key], 1e-2) for h in r["history"]],
                    **curve_style(r["residual"], r["depth"]) | {"alpha": 0.85, "label": label})
        what = "training" if col == 0 else "test"
        mode = " (eval mode, fixed subset)" if key == "train_error_eval" else ""
        ax.set(xlabel="epoch", ylabel=f"{what} error (%)", title=f"{what.capitalize()} error{mode}, {dataset}")
        log_error_axis(ax)
        epoch_axis(ax)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: (labels[i].startswith("ResNet"), int(labels[i].split("-")[-1])))
    axes[0, 0].legend([handles[i] for i in order], [labels[i] for i in order], fontsize=7, ncol=2,
                      title="red: plain, blue: ResNet", title_fontsize=7)
    ax = axes[0, 2]
    final = by_net(records, final_train_error)
    for residual in (False, True):
        depths = sorted({r["depth"] for r in records if r["residual"] == residual})
        name = "ResNet" if residual else "plain"
        stats = [mean_sd(final[f"{name.lower()}{d}"]) for d in depths]
        ax.errorbar(depths, [m for m, _ in stats], yerr=[0 if math.isnan(sd) else sd for _, sd in stats],
                    fmt="o-", color=family_color(residual), capsize=3, label=f"{name}: training")
    ax.set(xlabel="depth (layers)", ylabel="final training error (%)",
           title="Final training error vs depth\n(mean ± sd over seeds)")
    log_error_axis(ax)
    ax.set_xticks(sorted({r["depth"] for r in records}))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return [save_figure(fig, out, "degradation")]


def verdict(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Does our run show the paper's claim? Compares final training errors across depths, and
    calls an order only where it exceeds the seed-to-seed spread (studies.stats.clearly_above)."""
    final = by_net(records, final_train_error)
    depths = sorted({r["depth"] for r in records})
    lo, hi = depths[0], depths[-1]
    plain_lo, plain_hi, res_lo, res_hi = (final[f"plain{lo}"], final[f"plain{hi}"], final[f"resnet{lo}"],
                                          final[f"resnet{hi}"])
    return {
        "plain_deeper_is_worse": mean_sd(plain_hi)[0] > mean_sd(plain_lo)[0],
        "plain_deeper_is_worse_beyond_seed_spread": clearly_above(plain_hi, plain_lo),
        "residual_deeper_not_worse": mean_sd(res_hi)[0] <= mean_sd(res_lo)[0],
        "residual_beats_plain_at_every_depth": all(mean_sd(final[f"resnet{d}"])[0] < mean_sd(final[f"plain{d}"])[0]
                                                   for d in depths),
        "residual_beats_plain_beyond_seed_spread": all(clearly_above(final[f"plain{d}"], final[f"resnet{d}"])
                                                       for d in depths),
        "shallow": lo, "deep": hi, "seeds": len(plain_lo),
    }


def describe(v: dict[str, Any], records: list[dict[str, Any]]) -> str:
    final = by_net(records, final_train_error)
    lo, hi = v["shallow"], v["deep"]
    yes = {True: "yes", False: "**no**"}

    def f(net: str) -> str:
        return fmt_mean_sd(final[net], 2, "%")

    def gap(a: str, b: str) -> str:
        return fmt_diff_se(final[a], final[b]) + " points"

    return "\n".join([
        f"- Deeper plain net has the higher training error: {yes[v['plain_deeper_is_worse']]} "
        f"(plain-{hi} {f(f'plain{hi}')} vs plain-{lo} {f(f'plain{lo}')}, mean ± sd over seeds; difference "
        f"{gap(f'plain{hi}', f'plain{lo}')}, ± SE of the difference); by more than the seed spread: "
        f"{yes[v['plain_deeper_is_worse_beyond_seed_spread']]}.",
        f"- Deeper residual net is not worse: {yes[v['residual_deeper_not_worse']]} "
        f"(ResNet-{hi} {f(f'resnet{hi}')} vs ResNet-{lo} {f(f'resnet{lo}')}; difference "
        f"{gap(f'resnet{hi}', f'resnet{lo}')}).",
        f"- Residual below plain at every depth: {yes[v['residual_beats_plain_at_every_depth']]} ("
        + ", ".join(f"depth {d}: plain minus ResNet {gap(f'plain{d}', f'resnet{d}')}" for d in (lo, hi))
        + f"); beyond the seed spread at every depth: {yes[v['residual_beats_plain_beyond_seed_spread']]}.",
        *([] if v["residual_deeper_not_worse"] else [
            f"- Within this budget ({records[0]['history'][-1]['epoch']} epochs) ResNet-{hi} ends above ResNet-{lo}; "
            f"whether it would end below with the paper's much longer training is not tested here."]),
    ])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    def add(p: Any) -> None:
        p.add_argument("--seeds", type=int, default=None, help="training seeds per net (seed, seed+1, ...; "
                       "default " + ", ".join(f"{v} {k}" for k, v in SEEDS.items()) + ")")

    args = parse_args(NAME, __doc__.split("\n\n")[0], argv, add)
    template = training_recipe(args)
    seeds = [args.seed + k for k in range(args.extra["seeds"] or SEEDS[args.mode])]
    nets = [Net(d, residual) for residual in (True, False) for d in DEPTHS[args.mode]]
    try:
        with Timer() as timer:
            records = train_nets(template, nets, args.runs, seeds)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    v = verdict(records)
    figures = plot(records, args.out, template.dataset)
    if args.mode == "cpu":  # every net (~1-3.5 MB each), so that a fresh clone reruns this study and the
        # studies sharing its nets (layer_responses, the landscapes, hessian_ratio) without retraining
        publish_records(records, args.out,
                        f"Trained by `python studies/degradation.py --cpu` (the recipe of `studies/recipes.py`: "
                        f"{template.samples or 'all'} MNIST training images, {template.epochs} epochs, lr {template.lr} "
                        f"with He et al.'s warm-up); training error on the first {template.train_eval_samples:,} "
                        f"training images, test error on {records[0]['test_samples_n']:,} test images.")
    test_n = records[0]["test_samples_n"]
    result = {"study": NAME, "tier": args.mode, "mode": args.mode, "dataset": template.dataset,
              "seeds": sorted({r["seed"] for r in records}), "train_samples": records[0]["train_samples_n"],
              "test_samples": test_n, "train_eval_samples": template.train_eval_samples,
              "epochs": template.epochs, "seconds": timer.seconds, "verdict": v,
              "final_train_error_pct": by_net(records, final_train_error),
              "test_error_pct": by_net(records, lambda r: r["final_test_error"]),
              "nets": records,
              "paper": {"cifar10_resnet_test_error": PAPER_CIFAR_RESNET_TEST,
                        "imagenet_top1_error": PAPER_IMAGENET_TOP1}}
    write_json(args.out / "results.json", result)
    final, test = result["final_train_error_pct"], result["test_error_pct"]
    table = []
    for r in sorted({(r["residual"], r["depth"], r["label"], r["params"]) for r in records}, reverse=True):
        residual, depth, label, params = r
        key = f"{'resnet' if residual else 'plain'}{depth}"
        table.append({"net": label, "params": params, "seeds": len(final[key]),
                      "train error % (mean ± sd)": fmt_mean_sd(final[key], 3),
                      "test error % (mean ± sd)": fmt_mean_sd(test[key], 2),
                      f"test SE per seed (binomial, {test_n} images)": f"± {binomial_se_pct(mean_sd(test[key])[0], test_n):.2f}",
                      "training-loss change in the last epoch % (per seed)": ", ".join(
                          f"{last_epoch_loss_change(x):+.0f}" for x in sorted(records, key=lambda x: x["seed"])
                          if net_key(x) == key),
                      "test error % (He et al., CIFAR-10)": PAPER_CIFAR_RESNET_TEST.get(depth) if residual else
                      "not tabulated (Fig. 6: above ResNet)",
                      "wall s (all seeds)": sum(x["wall_seconds"] for x in records if net_key(x) == key)})
    data = (f"{template.dataset}, {template.samples or 'all'} training / {template.test_samples or 'all'} "
            f"test images, {template.epochs} epochs, batch {template.batch_size}, lr {template.lr} "
            f"(/10 at 50% and 75% of the iterations){', warm-up at lr/10 until the training error is below 80%' if template.warmup else ''}, weight decay {template.weight_decay}")
    train_def = (f"the eval-mode error (stored BN statistics) on the first {template.train_eval_samples:,} training "
                 "images after the last epoch" if template.train_eval_samples else
                 "the running average over the last epoch in train mode, as in the paper's curves")
    notes = [f"Training recipe: {data}. Training error is {train_def}; test error uses eval mode on "
             f"{test_n:,} test images. Seeds: {', '.join(str(s) for s in result['seeds'])}."]
    notes.append(training_note(records))
    if args.mode == "cpu":
        notes.append(f"Why {template.samples:,} of MNIST's 60,000 training images: the claim is about optimization "
                     "(training error), and on 2 CPU cores a 56-layer net to convergence on all 60k costs ~50 min "
                     "(a pilot: 8 epochs, 0.30% training error after epoch 6), four of them more than the tier's "
                     "budget (4 epochs of all 60k left ResNet-56 at 0.85% training error, above ResNet-20's 0.36%). "
                     "The last column but one says how flat each training-loss curve was at the end (the loss after "
                     "the last epoch vs after the one before, at lr/100): flat under this schedule, which is not the "
                     "same as the lowest loss a longer schedule would reach.")
    if args.mode == "quick":
        notes.append("Full mode (CIFAR-10, 164 epochs = the paper's 64k iterations) was not run here: no "
                     "GPU and no CIFAR-10 on this machine. The quick run is "
                     f"{template.epochs * math.ceil(template.samples / template.batch_size)} SGD steps on "
                     "an MNIST subset, so it shows the *early-training* gap between plain and residual "
                     "nets; the paper's curves show the gap persists to convergence. It uses lr "
                     f"{template.lr}, not the paper's 0.1: at 0.1, ResNet-44 and ResNet-56 diverged in the first "
                     "steps of this short budget and stayed at chance (also with He et al.'s warm-up), which "
                     "says nothing about depth; the same lr is used for every net.")
    notes.append("The paper's ImageNet nets (Table 2, top-1 error): "
                 + ", ".join(f"{k} {v}%" for k, v in PAPER_IMAGENET_TOP1.items()) + ".")
    write_readme(args, "Degradation: plain vs residual nets of growing depth (He et al. 2015, Fig. 6)",
                 "With the same recipe, deeper plain nets (20 -> 56 layers) have higher training error "
                 "(an optimization difficulty, not overfitting); the residual versions do not, and gain "
                 "accuracy from depth.", {"Final errors": table}, figures, describe(v, records),
                 "\n\n".join(notes), timer.seconds)
    return result


if __name__ == "__main__":
    main()

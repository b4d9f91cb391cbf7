"""He et al. 2015, Fig. 6 (the degradation problem): plain-20/32/44/56 against ResNet-20/32/44/56,
trained with one recipe. Deeper plain nets reach a higher *training* error; residual nets do not.

    python studies/degradation.py [--quick | --smoke]
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from studies.common import (Timer, fail, parse_args, trained_record, training_note, training_recipe, write_json,
                            write_readme)
from studies.figures import curve_style, epoch_axis, log_error_axis, new_figure, save_figure

NAME = "degradation"
DEPTHS = {"full": (20, 32, 44, 56), "quick": (20, 32, 44, 56), "smoke": (8, 20)}

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


def train_nets(template: Any, nets: list[Net], runs: Path) -> list[dict[str, Any]]:
    """Train (or reuse from ``runs``) every net with the recipe ``template`` (a TrainConfig);
    one record per net (see :func:`studies.common.trained_record`)."""
    return [trained_record(replace(template, model=net.model, noshort=not net.residual), runs,
                           label=net.label, depth=net.depth, residual=net.residual) for net in nets]


def plot(records: list[dict[str, Any]], out: Path, dataset: str) -> list[str]:
    """Training and test error per epoch (colour: plain or ResNet; dashes: depth) and final error vs
    depth, in one figure; the legend lists the plain nets in one column and the ResNets in the other."""
    fig, axes = new_figure(3, 1, size=(4.6, 3.8))
    for col, key in enumerate(("train_error", "test_error")):
        ax = axes[0, col]
        for r in records:
            epochs = [h["epoch"] for h in r["history"]]
            # floored at 0.01% so that a perfect epoch stays on the log axis
            ax.plot(epochs, [max(h[key], 1e-2) for h in r["history"]], **curve_style(r["residual"], r["depth"]))
        what = "training" if col == 0 else "test"
        ax.set(xlabel="epoch", ylabel=f"{what} error (%)",
               title=f"{what.capitalize()} error, plain vs ResNet ({dataset})")
        log_error_axis(ax)
        epoch_axis(ax)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: (labels[i].startswith("ResNet"), int(labels[i].split("-")[-1])))
    axes[0, 0].legend([handles[i] for i in order], [labels[i] for i in order], fontsize=7, ncol=2)
    ax = axes[0, 2]
    for residual in (False, True):
        rows = sorted((r for r in records if r["residual"] == residual), key=lambda r: r["depth"])
        depths = [r["depth"] for r in rows]
        name = "ResNet" if residual else "plain"
        color = curve_style(residual, depths[0] if depths else 0)["color"]
        ax.plot(depths, [r["final_train_error"] for r in rows], "-", color=color, marker="o", label=f"{name}: training")
        ax.plot(depths, [r["final_test_error"] for r in rows], ":", color=color, marker="s", mfc="white",
                label=f"{name}: test")
    ax.set(xlabel="depth (layers)", ylabel="final error (%)", title="Error after training vs depth")
    log_error_axis(ax)
    ax.set_xticks(sorted({r["depth"] for r in records}))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return [save_figure(fig, out, "degradation")]


def verdict(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Does our run show the paper's claim? Compares final training errors across depths."""
    plain = {r["depth"]: r["final_train_error"] for r in records if not r["residual"]}
    res = {r["depth"]: r["final_train_error"] for r in records if r["residual"]}
    lo, hi = min(plain), max(plain)
    ordered = sorted(plain)
    return {
        "plain_deeper_is_worse": plain[hi] > plain[lo],
        "plain_monotone_in_depth": all(plain[a] <= plain[b] for a, b in zip(ordered, ordered[1:])),
        "residual_deeper_not_worse": res[hi] <= res[lo],
        "residual_beats_plain_at_every_depth": all(res[d] < plain[d] for d in plain),
        "shallow": lo, "deep": hi,
    }


def describe(v: dict[str, Any], records: list[dict[str, Any]]) -> str:
    err = {(r["depth"], r["residual"]): r["final_train_error"] for r in records}
    lo, hi = v["shallow"], v["deep"]
    yes = {True: "yes", False: "**no**"}
    return "\n".join([
        f"- Deeper plain net has the higher training error: {yes[v['plain_deeper_is_worse']]} "
        f"(plain-{hi} {err[hi, False]:.2f}% vs plain-{lo} {err[lo, False]:.2f}%); training error rises "
        f"monotonically with plain depth: {yes[v['plain_monotone_in_depth']]}.",
        f"- Deeper residual net is not worse: {yes[v['residual_deeper_not_worse']]} "
        f"(ResNet-{hi} {err[hi, True]:.2f}% vs ResNet-{lo} {err[lo, True]:.2f}%).",
        f"- Residual below plain at every depth: {yes[v['residual_beats_plain_at_every_depth']]}.",
    ])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(NAME, __doc__.split("\n\n")[0], argv)
    template = training_recipe(args)
    nets = [Net(d, residual) for residual in (False, True) for d in DEPTHS[args.mode]]
    try:
        with Timer() as timer:
            records = train_nets(template, nets, args.runs)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    v = verdict(records)
    figures = plot(records, args.out, template.dataset)
    result = {"study": NAME, "mode": args.mode, "dataset": template.dataset, "samples": template.samples,
              "test_samples": template.test_samples, "epochs": template.epochs, "seed": args.seed,
              "seconds": timer.seconds, "verdict": v, "nets": records,
              "paper": {"cifar10_resnet_test_error": PAPER_CIFAR_RESNET_TEST,
                        "imagenet_top1_error": PAPER_IMAGENET_TOP1}}
    write_json(args.out / "results.json", result)
    table = [{"net": r["label"], "params": r["params"], "train error % (ours)": r["final_train_error"],
              "test error % (ours)": r["final_test_error"],
              "test error % (He et al., CIFAR-10)": PAPER_CIFAR_RESNET_TEST.get(r["depth"]) if r["residual"] else
              "not tabulated (Fig. 6: above ResNet)", "wall s": r["wall_seconds"]} for r in records]
    data = (f"{template.dataset}, first {template.samples or 'all'} training / {template.test_samples or 'all'} "
            f"test images, {template.epochs} epochs, batch {template.batch_size}, lr {template.lr} "
            f"(/10 at 50% and 75% of the iterations), weight decay {template.weight_decay}")
    notes = [f"Training recipe: {data}. Training error is the running average over each epoch in train "
             "mode, as in the paper's curves; test error uses eval mode (stored BN statistics)."]
    notes.append(training_note(records))
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

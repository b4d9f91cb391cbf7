"""Chen et al. 2018 (Neural ODEs), Table 1 and Fig. 3: ResNet vs RK-Net vs ODE-Net on MNIST (test
error, parameters, memory), function evaluations (NFE) as training proceeds, and one trained ODE-Net
re-solved with Euler steps K and dopri5 tolerances (accuracy against cost).

    python studies/odenet_mnist.py [--quick | --smoke]
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from models import resolve_device
from models.cli import fail
from odenets.compare import PAPER, CompareConfig, compare
from odenets.plots import plot_compare
from studies.common import REPO, parse_args
from studies.figures import epoch_axis, log_error_axis, new_figure, save_figure
from studies.report import Timer, write_json, write_readme
from studies.stats import fmt_error_se, last_epoch_loss_change, mean_binomial_se_pct, mean_diff_se, mean_sd

NAME = "odenet_mnist"
MNIST_TEST_IMAGES = 10_000
MNIST_TRAIN_IMAGES = 60_000  # "samples": None means all of them

# odenets.compare's settings per mode. Quick is exactly the comparison run into results/odenet_mnist
# with its CLI (python -m odenets.compare --samples 6000 --epochs 3 --milestones 0.7 --test-samples 2000
# --sweep-samples 1000 --memory-steps 1,2,4,8,16,32,64): an existing compare.json made with these
# settings is reused as it is, so this study and that command produce one folder, never two.
MODES: dict[str, dict[str, Any]] = {
    # Chen et al.: all 60k MNIST images, 160 epochs (their code: SGD lr 0.1, batch 128), full test set.
    "full": dict(epochs=160, samples=None, test_samples=None, sweep_samples=None),
    # The cpu tier: Chen et al.'s data (all 60k training / 10k test images) and their training
    # augmentation (pad 4 + random crop, black border), 8 epochs (lr /10 at 50% and 75%), the solver
    # sweep over 2,000 test images. Without augmentation 6 epochs ended at 0.67% for all three models
    # (see CPU_NO_AUGMENT); training error in eval mode on the first 10,000 training images. One epoch on one
    # core: ODE-Net ~7 min, RK-Net ~2, ResNet ~2 (about 1 h 15 min of core time for the three).
    "cpu": dict(epochs=8, augment="crop", samples=None, test_samples=None, train_eval_samples=10_000, sweep_samples=2000,
                memory_steps=(1, 2, 4, 8, 16, 32, 64)),
    "quick": dict(epochs=3, samples=6000, test_samples=2000, milestones=(0.7,), sweep_samples=1000,
                  memory_steps=(1, 2, 4, 8, 16, 32, 64)),
    "smoke": dict(models=("resnet_mnist[width=4]", "rknet_mnist[width=4]", "odenet_mnist[width=4,rtol=0.1,atol=0.1]"),
                  dataset="synthetic", data_kwargs={"channels": 1, "image_size": 12, "size": 48}, epochs=2,
                  augment="crop", train_eval_samples=16,
                  samples=32, test_samples=24, batch_size=16, sweep_samples=16, euler_steps=(1, 2, 4),
                  tolerances=(0.1, 0.01), memory_steps=(1, 2), memory_batch=4, probe_batch=8, eval_batch=8),
}
# Seeds per tier: the primary seed (--seed) writes compare.json and the figures here; each further one
# (--seed + 1, ...) a compare.json under seeds/seed_<k>/, its nets in run folders of their own. The
# models' errors differ by about one binomial SE, so the cpu tier adds a second seed's spread.
SEEDS = {"cpu": 2, "smoke": 2}
# Fields that say where things go or how loudly, not what is computed ("device" is compared as
# resolved: "auto" on a CPU-only machine is "cpu").
_NOT_IDENTITY = ("data_root", "runs", "out", "progress", "force", "device")

# Chen et al. 2018, Table 1 (odenets.compare.PAPER holds the same numbers for its tables).
# The cpu tier's target test error (Chen et al. report 0.41-0.47% after ~160 epochs).
TARGET_ERROR_PCT = 0.6

# A pilot of the cpu recipe (lr 0.1, batch 128, momentum 0.9, constant lr) on all of MNIST's images:
# test error on 10,000 images after 150 and 300 steps. The quick run's slow start (45-62% after 47 steps)
# was the shortness of that run, not the recipe.
PILOT = {"resnet_mnist": (9.88, 4.21), "rknet_mnist": (6.34, 2.58)}

# The cpu tier's previous run (commit 12cd84d): all of MNIST, 6 epochs, no augmentation, seed 0.
CPU_NO_AUGMENT = {"epochs": 6, "test_error_pct": {"resnet_mnist": 0.67, "rknet_mnist": 0.67, "odenet_mnist": 0.67}}

PAPER_NOTE = ("Chen et al. Table 1 (MNIST): 1-layer MLP 1.60% / 0.24M; ResNet 0.41% / 0.60M, memory O(L); "
              "RK-Net 0.47% / 0.22M, memory O(L~); ODE-Net 0.42% / 0.22M, memory O(1). Fig. 3: NFE-B is about "
              "half of NFE-F, NFE grows as training proceeds, and lower tolerances cost more evaluations and "
              "give (slightly) lower error.")


def same_settings(doc: dict[str, Any], config: Any) -> bool:
    """Whether a compare.json document was computed with ``config`` on this kind of device (paths
    and verbosity aside)."""
    mine = json.loads(json.dumps(asdict(config)))
    saved = doc.get("config", {})
    return doc.get("device") == str(resolve_device(config.device)) and all(
        saved.get(k) == v for k, v in mine.items() if k not in _NOT_IDENTITY)


def settings_diff(doc: dict[str, Any], config: Any) -> str:
    mine = json.loads(json.dumps(asdict(config)))
    saved = doc.get("config", {})
    return ", ".join(f"{k}: {saved.get(k)!r} there vs {v!r} here" for k, v in mine.items()
                     if k not in _NOT_IDENTITY and saved.get(k) != v) or "device"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(NAME, __doc__.split("\n\n")[0], argv, add_arguments=lambda p: p.add_argument(
        "--recompute", action="store_true", help="replace a compare.json in --out made with other settings"))
    # The default run cache is odenets.compare's own folder, so its CLI runs and this study share checkpoints;
    # one subfolder per tier, since a run folder is named by model and data set only and a quick run's
    # checkpoints must neither block nor stand in for the cpu tier's.
    runs = (REPO / "runs" / "odenets_compare" if args.runs == REPO / "runs" / "studies" else args.runs / "odenets") / args.mode
    try:
        config = CompareConfig(data_root=args.data_root, seed=args.seed, device=args.device, runs=str(runs),
                               out=str(args.out), progress=args.mode != "smoke", **MODES[args.mode])
        configs = [config] + [replace(config, seed=s, out=str(args.out / "seeds" / f"seed_{s}"))
                              for s in range(args.seed + 1, args.seed + SEEDS.get(args.mode, 1))]
        with Timer() as timer:
            done = [compare_once(c, args.mode, args.extra["recompute"]) for c in configs]
            docs, reused = [d for d, _ in done], all(r for _, r in done)
            doc = docs[0]
            expected = [args.out / n for n in ("accuracy_vs_nfe.png", "nfe_vs_epoch.png", "memory_vs_depth.png")]
            if not done[0][1] or not all(p.is_file() for p in expected):
                plot_compare(args.out / "compare.json")
            curves = plot_training(docs, args.out)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    rows, sweep = doc["rows"], doc["sweep"]
    test_n = doc["config"]["test_samples"] or MNIST_TEST_IMAGES if doc["config"]["dataset"] == "mnist" else None
    errors = seed_errors(docs)
    models_ = {r["model"]: model_summary(errors[r["model"]], r["params"], test_n) for r in rows}
    result = {"study": NAME, "tier": args.mode, "mode": args.mode, "seeds": [d["config"]["seed"] for d in docs],
              "train_samples": doc["config"]["samples"] or (MNIST_TRAIN_IMAGES if doc["config"]["dataset"] == "mnist" else None), "test_samples": test_n, "models": models_,
              "reused_compare_json": reused, "seconds": timer.seconds,
              "compare_seconds": sum(d["seconds"] for d in docs), "config": doc["config"], "device": doc["device"],
              "rows": rows, "nfe_vs_epoch": doc["nfe_vs_epoch"], "sweep": sweep,
              "memory_vs_depth": doc["memory_vs_depth"], "paper": PAPER,
              "other_seeds": {str(d["config"]["seed"]): {"rows": d["rows"], "nfe_vs_epoch": d["nfe_vs_epoch"]}
                              for d in docs[1:]}}
    write_json(args.out / "results.json", result)
    c = doc["config"]
    per_seed = (f"test error % (mean ± sd over {len(docs)} seeds)", "per seed (± binomial SE)") if len(docs) > 1 else \
        ("test error % (ours, ± binomial SE)",)
    table = [{"model": r["model"], "params": r["params"], "params (paper)": _m(r["params_paper_m"]),
              **dict(zip(per_seed, error_cells(errors[r["model"]], test_n))),
              "test error % (paper)": r["test_error_paper"],
              "NFE-F train": r["nfe_forward_train"], "NFE-B train": r["nfe_backward_train"],
              "peak MiB (one step)": r["peak_memory_mib"], "memory (paper)": r["memory_paper"],
              "train s/epoch": r["train_s_per_epoch"]} for r in rows]
    sweep_rows = [{"solver": p["solver"], "NFE per batch": p["nfe_per_batch"],
                   "test error % (± binomial SE)": fmt_error_se(p["error"], sweep["images"]).rstrip("%")}
                  for p in (sweep.get("euler", []) + sweep.get("dopri5", []))]
    tables = {"Table 1: ResNet vs RK-Net vs ODE-Net": table}
    if sweep_rows:
        tables[f"One trained field, many solvers ({sweep['model']}, {sweep['images']} test images)"] = sweep_rows
    write_readme(args, "Continuous vs discrete depth on MNIST (Chen et al. 2018, Table 1 and Fig. 3)",
                 "An ODE-Net reaches the error of a ResNet with a third of the parameters and O(1) memory in "
                 "depth (adjoint backward pass); its cost is set by the solver (NFE), which grows during training, "
                 "and is traded against accuracy by the tolerance; the backward pass needs about half the "
                 "forward evaluations.", tables,
                 [curves] + [p.name for p in (args.out / "accuracy_vs_nfe.png", args.out / "nfe_vs_epoch.png",
                                              args.out / "memory_vs_depth.png") if p.is_file()],
                 describe(docs, test_n), notes(args, c, reused, len(docs)),
                 result["compare_seconds"] if reused else timer.seconds)
    return result


def compare_once(config: CompareConfig, mode: str, recompute: bool) -> tuple[dict[str, Any], bool]:
    """compare() into ``config.out``, or the compare.json already there when it was made with these
    settings (then True); one made with other settings is replaced only when ``recompute``."""
    saved_path = Path(config.out) / "compare.json"
    saved = json.loads(saved_path.read_text()) if saved_path.is_file() else None
    if saved is not None and same_settings(saved, config):
        return saved, True
    if saved is not None and not recompute:
        raise ValueError(f"{saved_path} was made by odenets.compare with other settings than this study's "
                         f"{mode} mode ({settings_diff(saved, config)}); it is left untouched. Pass "
                         f"--recompute to replace it, or --out DIR to write elsewhere")
    return compare(config), False


def seed_errors(docs: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Each model's test error (%) per seed, in the order of ``docs``."""
    return {r["model"]: [next(x["test_error"] for x in d["rows"] if x["model"] == r["model"]) for d in docs]
            for r in docs[0]["rows"]}


def model_summary(errors: list[float], params: int, test_n: int | None) -> dict[str, Any]:
    """results.json's entry for one model: the mean over seeds, its binomial SE, the seed sd (None
    for one seed) and every seed's error."""
    mean, sd = mean_sd(errors)
    return {"test_error_pct": mean, "test_error_se_pct": mean_binomial_se_pct(errors, test_n) if test_n else None,
            "test_error_sd_pct": None if math.isnan(sd) else sd, "test_error_pct_seeds": errors, "params": params}


def error_cells(errors: list[float], test_n: int | None) -> list[str | float]:
    """Table cells: one seed's error ± its binomial SE; over seeds the mean ± sd, then each seed ± SE."""
    if len(errors) == 1:
        return [fmt_error_se(errors[0], test_n).rstrip("%") if test_n else errors[0]]
    return [fmt_model_error(errors, test_n, False).rstrip("%"),
            ", ".join(fmt_error_se(e, test_n).rstrip("%") for e in errors)]


def fmt_model_error(errors: list[float], test_n: int | None, say_what: bool = True) -> str:
    """'0.54 ± 0.07%' (one seed, ± binomial SE) or '0.72 ± 0.03% (mean ± sd over 2 seeds)' (without the
    parenthesis when ``say_what`` is False, for a sentence that says it once)."""
    if len(errors) == 1:
        return fmt_error_se(errors[0], test_n)
    mean, sd = mean_sd(errors)
    return f"{mean:.2f} ± {sd:.2f}%" + (f" (mean ± sd over {len(errors)} seeds)" if say_what else "")


def _m(value: float | None) -> str | None:
    return None if value is None else f"{value:.2f}M"


def plot_training(docs: list[dict[str, Any]], out: Path) -> str:
    """Training loss, training error (eval mode on a fixed subset, where the run measured it) and
    test error per epoch of every model and seed (one colour a model, the first seed solid, the
    others dashed): whether training had levelled off, and how far seeds differ."""
    doc = docs[0]
    eval_mode = all("train_error_eval" in h for d in docs for history in d["histories"].values() for h in history)
    fig, axes = new_figure(3 if eval_mode else 2, 1, size=(4.6, 3.4))
    panels = [("train_loss", "training loss (running, train mode)", "Training loss")]
    if eval_mode:
        panels.append(("train_error_eval", "training error (%)",
                       f"Training error (eval mode, first {doc['config']['train_eval_samples']:,} images)"))
    panels.append(("test_error", "test error (%)", f"Test error ({doc['config']['test_samples'] or 'all'} images)"))
    for ax, (key, ylabel, title) in zip(axes[0], panels):
        for i, model in enumerate(doc["histories"]):
            for k, d in enumerate(docs):
                history = d["histories"][model]
                ax.plot([h["epoch"] for h in history], [h[key] for h in history], marker="o", ms=3, color=f"C{i}",
                        ls="-" if k == 0 else "--", alpha=1.0 if k == 0 else 0.7, label=model if k == 0 else None)
        if len(docs) > 1:
            ax.plot([], [], color="0.5", ls="--", label="seed " + ", ".join(str(d["config"]["seed"]) for d in docs[1:])
                    + f" dashed (seed {doc['config']['seed']} solid)")
        ax.set(ylabel=ylabel, title=title)
        if key == "test_error" and doc["config"]["dataset"] == "mnist" and not doc["config"]["test_samples"]:
            ax.axhline(TARGET_ERROR_PCT, color="0.4", ls="--", lw=1, label=f"target {TARGET_ERROR_PCT}%")
        if key == "train_loss":
            ax.set_yscale("log")
        else:
            log_error_axis(ax)
        epoch_axis(ax)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, out, "training_curves")


def describe(docs: list[dict[str, Any]], test_n: int | None = None) -> str:
    """The README's findings: errors over every seed in ``docs``; NFE, the solver sweep and memory
    from the first (the seed whose compare.json and figures are in the folder)."""
    doc = docs[0]
    errors = seed_errors(docs)
    rows = {r["model"].split("[")[0]: r for r in doc["rows"]}
    lines = []
    if {"resnet_mnist", "odenet_mnist"} <= rows.keys():
        res, ode = rows["resnet_mnist"], rows["odenet_mnist"]
        lines.append(f"- Parameters: ODE-Net {ode['params'] / 1e6:.3f}M vs ResNet {res['params'] / 1e6:.3f}M "
                     f"({ode['params'] / res['params']:.2f}x; paper 0.22M vs 0.60M). Test error "
                     f"{fmt_model_error(errors[ode['model']], test_n, False)} vs "
                     f"{fmt_model_error(errors[res['model']], test_n, False)} ("
                     + ("± binomial SE" if len(docs) == 1 else f"mean ± sd over {len(docs)} seeds")
                     + "; paper 0.42% vs 0.41%).")
    if test_n:
        lines.append(order_line(errors, test_n))
    if test_n and test_n >= 10_000:
        means = {m: mean_sd(e)[0] for m, e in errors.items()}
        met = [m for m, v in means.items() if v <= TARGET_ERROR_PCT]
        missed = [f"{m} at {fmt_model_error(errors[m], test_n)}" for m, v in means.items() if v > TARGET_ERROR_PCT]
        near = [m for m, v in means.items() if v <= TARGET_ERROR_PCT < v + mean_binomial_se_pct(errors[m], test_n)]
        seeds_over = []
        if len(docs) > 1:
            runs = [(e, m, d["config"]["seed"]) for m, es in errors.items() for d, e in zip(docs, es)]
            highest = max(runs)
            seeds_over = ([f"{m} seed {seed} ({e:.2f}%)" for e, m, seed in runs if e > TARGET_ERROR_PCT] or
                          [f"none (the highest, {highest[1]} seed {highest[2]}, at {highest[0]:.2f}%)"])
        lines.append(f"- Target of ≤ {TARGET_ERROR_PCT}% test error on all {test_n:,} test images"
                     + (" (mean over seeds)" if len(docs) > 1 else "") + ": "
                     + (f"met by every model ({', '.join(met)})" if not missed else
                        f"**missed** by {', '.join(missed)}" + (f"; met by {', '.join(met)}" if met else ""))
                     + (f"; {', '.join(near)} within one SE of it" if near else "")
                     + (f"; single seeds above it: {', '.join(seeds_over)}" if seeds_over else "") + ".")
    if all("train_error_eval" in h[-1] for d in docs for h in d["histories"].values()):
        lines.append(f"- Training error at the end (eval mode, first {doc['config']['train_eval_samples']:,} training "
                     "images, no augmentation" + (", per seed" if len(docs) > 1 else "") + "): "
                     + ", ".join(f"{m} " + " / ".join(f"{d['histories'][m][-1]['train_error_eval']:.2f}" for d in docs)
                                 + "%" for m in doc["histories"]) + ".")
    if doc["config"].get("augment") == "crop" and test_n and test_n >= 10_000:
        lines.append(f"- Without augmentation ({CPU_NO_AUGMENT['epochs']} epochs, otherwise the same recipe; the "
                     "previous cpu run, seed 0) every model ended at "
                     + ", ".join(f"{m} {fmt_error_se(e, test_n)}" for m, e in CPU_NO_AUGMENT["test_error_pct"].items())
                     + ".")
    change = {m: [last_epoch_loss_change({"history": d["histories"][m]}) for d in docs]
              for m, h in doc["histories"].items() if len(h) > 1}
    if change:
        lines.append("- Training loss change in the last epoch (running average, train mode"
                     + (", per seed" if len(docs) > 1 else "") + "): "
                     + ", ".join(f"{m} " + " / ".join(f"{v:+.0f}" for v in vs) + "%" for m, vs in change.items())
                     + (": still falling, not at a plateau; a longer schedule may lower the errors (not tested here)."
                        if max(max(vs) for vs in change.values()) < -5 else ": levelled off."))
    for d in docs:
        for model, pts in d["nfe_vs_epoch"].items():
            f = [p["nfe_forward"] for p in pts]
            b = [p["nfe_backward"] for p in pts]
            trend = "grows" if f[-1] > f[0] else "does not grow"
            line = (f"- {model}" + (f", seed {d['config']['seed']}" if len(docs) > 1 else "")
                    + f": NFE-F per training batch {' -> '.join(str(v) for v in f)} over epochs "
                    f"0..{pts[-1]['epoch']} ({trend})")
            if any(b):
                line += (f"; NFE-B {' -> '.join(str(v) for v in b)} (NFE-B/NFE-F = {b[-1] / max(f[-1], 1):.2f}; "
                         "paper ~0.5)")
            lines.append(line + ".")
    sw = doc["sweep"]
    if sw:
        eu, dp = sw["euler"], sw["dopri5"]
        n = sw["images"]
        lines.append(f"- Re-solving {sw['model']} ({n:,} test images, ± binomial SE): Euler K={eu[0]['steps']} gives "
                     f"{fmt_error_se(eu[0]['error'], n)} error, K={eu[-1]['steps']} {fmt_error_se(eu[-1]['error'], n)}; "
                     f"dopri5 at tolerance {dp[0]['rtol']:g} uses {dp[0]['nfe_per_batch']:.0f} NFE for "
                     f"{fmt_error_se(dp[0]['error'], n)}, at {dp[-1]['rtol']:g} {dp[-1]['nfe_per_batch']:.0f} NFE for "
                     f"{fmt_error_se(dp[-1]['error'], n)}.")
    worst = max(r["test_error"] for r in doc["rows"])
    if worst > 10:
        lines.append(f"- These nets are far from trained (test error up to {worst:.1f}% after "
                     f"{doc['config']['epochs']} "
                     f"epoch(s)): the error comparison of Table 1 and the accuracy side of the solver trade-off "
                     f"cannot show at this length of training; parameters, NFE and memory do not depend on it.")
    md = doc["memory_vs_depth"]["rows"]
    if md:
        adj = sorted((r for r in md if r["adjoint"]), key=lambda r: r["steps"])
        bp = sorted((r for r in md if not r["adjoint"]), key=lambda r: r["steps"])
        if adj and bp:
            lines.append(f"- Memory of one training step from K={bp[0]['steps']} to K={bp[-1]['steps']} Euler steps: "
                         f"{bp[0]['peak_bytes'] / 2**20:.1f} -> {bp[-1]['peak_bytes'] / 2**20:.1f} MiB backpropagating "
                         f"through the solver, {adj[0]['peak_bytes'] / 2**20:.1f} -> "
                         f"{adj[-1]['peak_bytes'] / 2**20:.1f} "
                         f"MiB with the adjoint (paper: O(L) vs O(1)).")
    return "\n".join(lines)


def order_line(errors: dict[str, list[float]], test_n: int) -> str:
    """Every pair's difference of mean test errors with its SE: the binomial SE of the means (the test
    set's sampling), or over several seeds the larger of that and the seed-spread SE (Welch). An order
    is claimed only for a gap beyond twice that SE on which every seed agrees."""
    names = list(errors)
    k = len(errors[names[0]])
    diffs = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            d, seed_se = mean_diff_se(errors[b], errors[a])
            se = math.hypot(mean_binomial_se_pct(errors[a], test_n), mean_binomial_se_pct(errors[b], test_n))
            se = se if math.isnan(seed_se) else max(se, seed_se)
            agree = all((y - x) * d > 0 for x, y in zip(errors[a], errors[b]))
            diffs.append((b, a, d, se, agree))
    beyond = [f"{b} {'below' if d < 0 else 'above'} {a}" for b, a, d, se, agree in diffs if abs(d) > 2 * se and agree]
    return ("- Test-error differences (points, ± "
            + ("binomial SE of the difference; one seed each): " if k == 1 else
               f"SE of the difference of means over {k} seeds, the larger of binomial and seed spread): ")
            + ", ".join(f"{b} - {a} {d:+.2f} ± {se:.2f}" for b, a, d, se, _ in diffs) + ": "
            + (f"{'; '.join(beyond)}, beyond twice its SE" + (" in every seed." if k > 1 else ".") if beyond else
               "none beyond twice its SE" + (" with every seed agreeing" if k > 1 else "")
               + ", so no order among the models is claimed."))


def notes(args: Any, c: dict[str, Any], reused: bool, seeds: int = 1) -> str:
    parts = [f"Computed by `odenets.compare` (library call), which writes `compare.json` / `compare.md` and the "
             f"figures (`odenets.plots`) in this folder; this study adds `README.md` and `results.json`. Settings: "
             f"{c['dataset']}, {c['samples'] or 'all'} training / {c['test_samples'] or 'all'} test images, "
             f"{c['epochs']} epoch(s), batch {c['batch_size']}, SGD lr {c['lr']}, augmentation {c.get('augment') or 'none'}, "
             + (f"seed {c['seed']}" if seeds == 1 else
                f"seeds {c['seed']}..{c['seed'] + seeds - 1} (the first's `compare.json` and figures here, the "
                f"others' under `seeds/`; the table's NFE, memory and time columns are the first seed's)")
             + f"; checkpoints in `{Path(c['runs']).name}/`."
             + (" The `compare.json` files found here were made with exactly these settings and were reused, not "
                "recomputed (the time above is their computation's)." if reused else ""),
             PAPER_NOTE]
    if args.mode == "cpu":
        parts.append(f"**The cpu tier**: Chen et al.'s data (all 60,000 training and 10,000 test images), optimizer "
                     f"and training augmentation (pad 4 + random 28x28 crop, a black border, as their "
                     f"`RandomCrop(28, padding=4)`), {c['epochs']} epochs instead of ~160 (lr /10 at {', '.join(f'{m:.0%}' for m in c['milestones'])} "
                     f"of the steps). Recipe pilot (lr 0.1, constant, on all images), test error after 150 and 300 "
                     f"steps: " + "; ".join(f"{m} {a:.2f}% -> {b:.2f}%" for m, (a, b) in PILOT.items())
                     + ": the quick run's slow start was its length (47 steps an epoch), not the recipe; the "
                       "ODE-Net was not piloted separately (it shares the RK-Net's layers and differs in the solver). "
                       "The seconds per epoch come from runs made at different times on a shared 2-core machine (the "
                       "ODE-Net in one process while ResNet and RK-Net trained in another, beside other jobs): their "
                       "order of magnitude holds, their ratios are not an interleaved measurement.")
    if args.mode == "quick":
        parts.append(f"**Scaled down for 2 CPU cores**: {c['epochs']} epochs on {c['samples']} MNIST images "
                     f"instead of ~160 epochs on 60,000, so our errors are far above the paper's 0.4%: compare "
                     f"parameters, memory and the NFE trends, not the errors. Memory is measured on the CPU (see "
                     f"compare.md), the paper's is asymptotic.")
    parts.append("Full mode (`python studies/odenet_mnist.py`) trains on all of MNIST for 160 epochs and sweeps "
                  "the solvers on the full test set; it needs a GPU and was not run here.")
    return "\n\n".join(parts)


if __name__ == "__main__":
    main()

"""Plumbing shared by the study scripts: the --quick/--smoke switch, where data and results live,
and the markdown/JSON that each study writes beside its figures."""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterable

REPO = Path(__file__).resolve().parent.parent


def default_data_root() -> str:
    """$RESNET_TOOLKIT_DATA, else the shared MNIST beside the repo, else ./data."""
    env = os.environ.get("RESNET_TOOLKIT_DATA")
    if env:
        return env
    shared = REPO.parent / "shared" / "datasets"
    return str(shared if shared.is_dir() else REPO / "data")


# The tiers a study runs in. "cpu" is the one whose results are committed under results/<study>/:
# the strongest run two CPU cores can do in about an hour per study, on all of MNIST (60k/10k),
# with nets trained until the training loss plateaus and several seeds where differences are small.
# "full" is the papers' settings (CIFAR-10, hundreds of epochs: a GPU), "quick" a few minutes of
# qualitative trying-out, "smoke" seconds on synthetic data (the tests). Only the committed tier
# writes into results/ by default; the others write under runs/<tier>/<study>/, so that trying
# something never replaces a committed result.
TIERS = ("full", "cpu", "quick", "smoke")
COMMITTED_TIER = "cpu"


class TierConflictError(ValueError):
    """The results folder holds another tier's results, and replacing them was not asked for."""


@dataclass(frozen=True)
class StudyArgs:
    """What every study takes. ``mode`` is the tier: "full" (paper settings, GPU), "cpu" (the
    committed results: full MNIST, converged nets, ~1 hour on 2 CPU cores), "quick" (a few minutes,
    qualitative) or "smoke" (seconds, synthetic data; for the tests)."""

    name: str
    mode: str
    out: Path
    data_root: str
    device: str
    seed: int
    extra: dict[str, Any]
    runs: Path = REPO / "runs" / "studies"  # cached training runs (checkpoints), shared by studies
    download: bool = False  # fetch a missing data set (full mode on a fresh machine)

    @property
    def quick(self) -> bool:
        return self.mode != "full"

    def command(self) -> str:
        flag = "" if self.mode == "full" else f" --{self.mode}"
        return f"python studies/{self.name}.py{flag}"


def default_out(name: str, mode: str) -> Path:
    """results/<study> for the committed tier, runs/<tier>/<study> for every other tier."""
    return REPO / "results" / name if mode == COMMITTED_TIER else REPO / "runs" / mode / name


def claim_out(out: Path, mode: str, overwrite: bool) -> None:
    """Refuse to write ``mode`` results into a folder that holds another tier's results.json
    (unless ``overwrite``): a quick try must never silently replace the committed evidence."""
    found = Path(out) / "results.json"
    if found.is_file() and not overwrite:
        try:
            tier = json.loads(found.read_text()).get("tier") or json.loads(found.read_text()).get("mode")
        except (OSError, ValueError):
            tier = None
        if tier is not None and tier != mode:
            raise TierConflictError(
                f"{out} holds {tier}-tier results; a --{mode} run would replace them. Pass --out DIR to write "
                f"elsewhere, or --overwrite to replace them")


def parse_args(name: str, description: str, argv: list[str] | None = None,
               add_arguments=None) -> StudyArgs:
    """Common flags; ``add_arguments(parser)`` adds a study's own, returned in ``extra``."""
    p = argparse.ArgumentParser(prog=f"python studies/{name}.py", description=description)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--cpu", action="store_true",
                      help="the committed tier: full MNIST, converged nets, ~1 hour on 2 CPU cores (results/)")
    mode.add_argument("--quick", action="store_true", help="small qualitative run for 2 CPU cores (minutes)")
    mode.add_argument("--smoke", action="store_true", help="seconds-long run on synthetic data (tests)")
    p.add_argument("--out", type=Path, default=None,
                   help=f"results folder (default results/{name} for --cpu, runs/<tier>/{name} otherwise)")
    p.add_argument("--overwrite", action="store_true", help="replace another tier's results in --out")
    p.add_argument("--data-root", default=None, help="data sets folder (default $RESNET_TOOLKIT_DATA, "
                                                      "../shared/datasets or ./data)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "studies",
                   help="where trained models are cached and reused across studies (default runs/studies)")
    p.add_argument("--download", action="store_true", help="download a missing data set (needs internet)")
    if add_arguments:
        add_arguments(p)
    ns = p.parse_args(argv)
    common = {"cpu", "quick", "smoke", "out", "overwrite", "data_root", "device", "seed", "runs", "download"}
    mode_name = next((m for m in ("cpu", "quick", "smoke") if getattr(ns, m)), "full")
    out = ns.out or default_out(name, mode_name)
    try:
        claim_out(out, mode_name, ns.overwrite)
    except TierConflictError as err:
        p.exit(2, f"error: {err}\n")
    out.mkdir(parents=True, exist_ok=True)
    print(f"{name}: {mode_name} tier, writing {repo_relative(out)}/", file=sys.stderr)
    return StudyArgs(name, mode_name, out, ns.data_root or default_data_root(), resolve_device(ns.device),
                     ns.seed, {k: v for k, v in vars(ns).items() if k not in common}, ns.runs,
                     ns.download)


def resolve_device(device: str) -> str:
    if device == "auto":
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=float))
    tmp.replace(path)


def markdown_table(rows: Iterable[dict[str, Any]]) -> str:
    rows = list(rows)
    if not rows:
        return ""
    cols = list(dict.fromkeys(k for r in rows for k in r))

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def write_readme(args: StudyArgs, title: str, claim: str, tables: dict[str, list[dict[str, Any]]],
                 figures: Iterable[str], observed: str, notes: str = "", seconds: float | None = None) -> Path:
    """results/<study>/README.md: the paper's claim, our numbers beside the published ones, the
    exact command, the figures, and what we saw (including where it differs, and why)."""
    parts = [f"# {title}", "", f"**Paper's claim.** {claim}", "",
             f"**Command.** `{args.command()}` (mode: {args.mode}, seed {args.seed}, device {args.device}"
             + (f", {seconds:.0f} s" if seconds is not None else "") + ")", ""]
    for caption, rows in tables.items():
        parts += [f"## {caption}", "", markdown_table(rows), ""]
    parts += [f"## What we observe", "", observed, ""]
    for fig in figures:
        parts += [f"![{Path(fig).stem}]({Path(fig).name})", ""]
    if args.mode == "smoke":
        notes = ("**Smoke run**: seconds on tiny synthetic data, to test the code path; its numbers say "
                 "nothing about the paper's claim.\n\n" + notes)
    if notes:
        parts += ["## Notes", "", notes, ""]
    path = args.out / "README.md"
    path.write_text("\n".join(parts))
    return path


class Timer:
    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.start


def fail(message: str) -> None:
    sys.exit(f"error: {message}")


# ---- training runs shared between studies ---------------------------------------------------
# Several studies need the same trained nets (degradation and layer_responses both train
# plain/ResNet-20..56), so runs are cached under a folder named by a hash of everything that
# changes what is computed; `models.train` itself resumes a run that was interrupted.

_NOT_IDENTITY = ("out", "progress", "data_root", "download", "save_every", "force")


def run_key(config: Any) -> str:
    """`<model>_<dataset>_<hash>`: equal for two TrainConfigs that compute the same run."""
    import hashlib
    from dataclasses import asdict

    # Only fields that differ from their defaults: a field added to TrainConfig later (with a
    # default that keeps the old behaviour) must not orphan every cached net.
    defaults = {f.name: f.default for f in fields(config) if f.default is not MISSING}
    defaults.update({f.name: f.default_factory() for f in fields(config) if f.default_factory is not MISSING})
    ident = {k: v for k, v in asdict(config).items() if k not in _NOT_IDENTITY and
             not (k in defaults and v == defaults[k])}
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{config.model_name}_{config.dataset}_{digest}"


def train_cached(config: Any, runs: Path) -> tuple[list[dict[str, Any]], Path]:
    """Train `config` (a models.train.TrainConfig) under ``runs/<run_key>``, or reuse that run if
    it is already complete. Returns (per-epoch history, run folder holding final.pt)."""
    from dataclasses import replace

    from models.train import train

    run = Path(runs) / run_key(config)
    metrics = run / "metrics.json"
    if (run / "final.pt").is_file() and metrics.is_file():
        history = json.loads(metrics.read_text())
        if len(history) == config.epochs:
            return history, run
    return train(replace(config, out=str(run))), run


def load_trained(run: Path, device: str = "cpu") -> Any:
    """The final model of a run folder written by :func:`train_cached`, in eval mode."""
    from models import load_checkpoint

    model, _ = load_checkpoint(Path(run) / "final.pt", map_location=device)
    return model.to(device).eval()


def trained_record(config: Any, runs: Path, **labels: Any) -> dict[str, Any]:
    """Train or reuse `config` and summarize the run for a study's results.json: ``labels``, the
    model name and options, parameter count, per-epoch history, final errors (%), summed epoch
    wall time (training + test pass, s), median training throughput over epochs (images/s; the
    median, so that an epoch slowed by other jobs on a shared machine does not skew it) and the
    run folder (relative to the repository when inside it)."""
    from models import count_params

    history, run = train_cached(config, runs)
    model = load_trained(run)
    return {**labels, "seed": config.seed, "train_samples_n": split_size(config, "train"),
            "test_samples_n": split_size(config, "test"), "model": config.model_name, "model_kwargs": dict(config.model_kwargs),
            "params": count_params(model), "history": history,
            "final_train_error": history[-1]["train_error"], "final_test_error": history[-1]["test_error"],
            "best_test_error": min(h["test_error"] for h in history),
            "wall_seconds": sum(h["epoch_time_s"] for h in history),
            "train_images_per_s": statistics.median(h["images_per_s"] for h in history), "run": repo_relative(run)}


@functools.lru_cache(maxsize=None)
def _split_size(dataset: str, root: str, split: str, samples: int | None, data_kwargs: str) -> int:
    from models.data import load_device_data

    return len(load_device_data(dataset, root, split, samples, "cpu", **json.loads(data_kwargs)))


def split_size(config: Any, split: str) -> int:
    """How many images a TrainConfig trained ("train") or tested ("test") on: the reported
    standard errors need the real count, not the requested one."""
    samples = config.samples if split == "train" else config.test_samples
    return _split_size(config.dataset, config.data_root, split, samples, json.dumps(config.data_kwargs, sort_keys=True))


def training_note(records: Iterable[dict[str, Any]]) -> str:
    """README sentence on the nets' training time: a rerun reuses cached nets and takes seconds,
    so the command's own time does not say what reproducing the study from scratch costs."""
    total = sum(r["wall_seconds"] for r in records)
    return (f"Training the nets took {total:.0f} s of wall time in all (summed from their per-epoch logs; "
            "a rerun reuses them from the run cache).")


def repo_relative(path: Path) -> str:
    """A path relative to the repository when inside it, so results.json is the same everywhere."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


# The training settings of each mode. Full is He et al.'s CIFAR recipe (TrainConfig's defaults);
# quick is an MNIST subset sized for ~1 minute per ResNet-20 on 2 shared CPU cores; smoke is
# seconds on 8x8 synthetic images. Studies override single fields (epochs, samples) as needed.
# Quick uses lr 0.02: in its ~80 steps at lr 0.1, ResNet-44/56 diverge from the first steps and
# stay at chance (measured: train loss 5-7 in epoch 1); He et al.'s warm-up (lr/10 until a batch
# is below 80% error) does not save them, as the jump back to 0.1 comes too early.
# Cpu is all of MNIST (60k/10k), lr 0.1 with He et al.'s warm-up (lr/10 until the training error is
# below 80%: in a pilot, ResNet-56 at lr 0.1 from the first step sat at chance for 100+ steps), 4 epochs
# (1,876 steps; lr /10 at 50% and 75%), and the eval-mode error on a fixed 10,000 training images
# after every epoch, which is what the tier's "training error" means.
TRAINING_MODES: dict[str, dict[str, Any]] = {
    "full": dict(dataset="cifar10", save_every=10),
    "cpu": dict(dataset="mnist", samples=None, test_samples=None, epochs=4, lr=0.1, warmup=True,
                train_eval_samples=10_000),
    "quick": dict(dataset="mnist", samples=2500, test_samples=1000, epochs=4, lr=0.02),
    "smoke": dict(dataset="synthetic", data_kwargs={"image_size": 8, "size": 96}, epochs=1, batch_size=32),
}


def training_recipe(args: StudyArgs, **overrides: Any) -> Any:
    """A models.train.TrainConfig template for ``args.mode`` (set ``model``/``noshort`` per net
    with ``dataclasses.replace``); seed, device and data root come from the command line."""
    from models.train import TrainConfig

    fields = {**TRAINING_MODES[args.mode], **overrides}
    return TrainConfig(model=fields.pop("model", "resnet20"), seed=args.seed, device=args.device,
                       data_root=args.data_root, download=args.download, progress=args.mode != "smoke",
                       **fields)


# ---- figures: one look for every study ------------------------------------------------------
# Plain nets are dashed and residual nets solid everywhere; a depth keeps its colour across
# figures, so plain-56 and ResNet-56 are the same colour in every plot.

DEPTH_COLORS = {8: "#7f7f7f", 14: "#bcbd22", 20: "#1f77b4", 32: "#2ca02c", 44: "#ff7f0e",
                56: "#d62728", 110: "#9467bd", 1202: "#8c564b"}
PLAIN_LINE, RESIDUAL_LINE = "--", "-"


def depth_color(depth: int) -> str:
    return DEPTH_COLORS.get(depth, "#17becf")


def line_style(residual: bool) -> str:
    return RESIDUAL_LINE if residual else PLAIN_LINE


def new_figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (5.0, 3.8)) -> tuple[Any, Any]:
    """A matplotlib figure with the off-screen backend (studies run on headless machines)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False)


def save_figure(fig: Any, out: Path, name: str, dpi: int = 150) -> str:
    """Save ``out/<name>.png`` and close the figure; returns the file name for the README."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(Path(out) / f"{name}.png", dpi=dpi)
    plt.close(fig)
    return f"{name}.png"


def log_error_axis(ax: Any) -> None:
    """Log-scaled error axis labelled with plain numbers (1, 2, 5, 10 %), not 9x10^1."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.set_yscale("log")
    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(fmt)
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


# ---- loss landscapes of cached runs ---------------------------------------------------------
# The landscape studies scan the final model of a `train_cached` run with landscapes.scan. Their
# direction files (model-sized) live in the run cache, named by the checkpoint's hash, so that
# two studies scanning the same checkpoint with the same seed share one plane, and a retrained
# checkpoint never reuses directions normalized to the old weights.


def direction_file(args: StudyArgs, run: Path, ndim: int, seed: int | None = None) -> Path:
    """``runs/directions/<run>_<sha10>_<ndim>d_seed<s>.h5`` for the final model of ``run``."""
    from models.checkpoint import sha256

    seed = args.seed if seed is None else seed
    digest = sha256(Path(run) / "final.pt")[:10]
    return Path(args.runs) / "directions" / f"{Path(run).name}_{digest}_{ndim}d_seed{seed}.h5"


def scan_config(args: StudyArgs, run: Path, out: Path, x: str, y: str | None = None, samples: int | None = None,
                dir_file: Path | None = None, **overrides: Any) -> Any:
    """The landscapes.scan.ScanConfig that scans ``run``/final.pt on the data set it was trained on
    (train split, first ``samples`` images) into ``out``, with this study's seed and device.
    Directions: ``dir_file``, else the run's cached file (:func:`direction_file`), so that every
    study scanning this checkpoint with this seed lies in the same plane."""
    from landscapes.scan import ScanConfig
    from models import read_checkpoint
    from models.checkpoint import sha256

    ck = Path(run) / "final.pt"
    meta = read_checkpoint(ck)["meta"]
    if dir_file is None and overrides.get("model2"):
        # The direction is model2 - model, re-derived exactly on every run; scan refuses a stored
        # one beside --model2, so the cached copy is only written, never read.
        other = Path(overrides["model2"])
        dir_file = Path(args.runs) / "directions" / (f"{Path(run).name}_{sha256(ck)[:10]}_to_{other.parent.name}_"
                                                     f"{sha256(other)[:10]}.h5")
        dir_file.unlink(missing_ok=True)
    elif dir_file is None:
        dir_file = direction_file(args, Path(run), 1 if y is None else 2)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    return ScanConfig(model=meta["model"], checkpoint=str(ck), dataset=meta["config"]["dataset"],
                      data_root=args.data_root, samples=samples, x=x, y=y, seed=args.seed, dir_file=str(dir_file),
                      device=args.device, out=str(out), progress=args.mode != "smoke", **overrides)


def replacing_conflicts(compute: Any, config: Any) -> Any:
    """``compute(config)``; a surface file computed with other arguments is replaced (rerun with
    ``force``) instead of refused: a study owns its results folder, and a changed mode or seed
    makes its old surface stale. An identical surface is resumed as usual."""
    from dataclasses import replace

    from landscapes.surface import SurfaceConflictError

    try:
        return compute(config)
    except SurfaceConflictError as err:
        print(f"note: recomputing {config.out}: {str(err).split(' (')[0]}", file=sys.stderr)
        return compute(replace(config, force=True))


def scan_run(args: StudyArgs, run: Path, out: Path, x: str, y: str | None = None, samples: int | None = None,
             dir_file: Path | None = None, **overrides: Any) -> Any:
    """``landscapes.scan.scan`` of :func:`scan_config` (same arguments); returns the ScanResult.
    ``overrides`` go to ScanConfig (e.g. ``model2``, ``split``)."""
    from landscapes.scan import scan

    return replacing_conflicts(scan, scan_config(args, run, out, x, y, samples, dir_file, **overrides))


def merge_surfaces(surfaces: dict[str, Any], value: str = "train_loss") -> Any:
    """One landscapes.surface.Surface holding ``value`` (stored, or derived such as ``eig_ratio``) of
    several surfaces on the same grid, named ``"<label> <value>"``, so that landscapes.plot draws
    them side by side on one colour scale."""
    import numpy as np

    from landscapes.plot import value_array
    from landscapes.surface import Surface

    first = next(iter(surfaces.values()))
    for label, s in surfaces.items():
        if not (np.array_equal(s.x, first.x) and (s.y is None) == (first.y is None)
                and (s.y is None or np.array_equal(s.y, first.y))):
            raise ValueError(f"surface {label!r} lies on another grid than {next(iter(surfaces))!r}")
    values = {f"{label} {value}": value_array(s, value) for label, s in surfaces.items()}  # derived ones too
    done = np.logical_and.reduce([s.done for s in surfaces.values()])
    attrs = {k: v for k, v in first.attrs.items() if k in ("dataset", "split", "num_samples", "directions_source")}
    return Surface(first.x, first.y, values, attrs, "", done)


def run_path(record: dict[str, Any]) -> Path:
    """The run folder of a :func:`trained_record` (stored there relative to the repository)."""
    run = Path(record["run"])
    return run if run.is_absolute() else REPO / run


def epoch_axis(ax: Any) -> None:
    """Whole epochs only on the x axis (short runs otherwise get ticks at 1.5, 2.5, ...)."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def compute_note(train_seconds: float, surfaces: Iterable[Any]) -> str:
    """One README sentence with what a study's numbers cost to compute, which a rerun on cached
    runs and surfaces (seconds) does not show: summed training time and evaluation time of the
    surfaces (their recorded seconds per point times their points)."""
    import math

    scan = 0.0
    for s in surfaces:
        per_point = float(s.attrs.get("seconds_per_point", math.nan))
        scan += per_point * int(s.done.sum()) if math.isfinite(per_point) else 0.0
    return (f"Compute behind these numbers on this machine: {train_seconds:.0f} s of training (cached under the run "
            f"folder, reused by reruns and by other studies) and {scan:.0f} s of landscape evaluation (kept in "
            f"the surface files; a rerun resumes them).")

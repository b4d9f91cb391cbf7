"""Time to a trustworthy surface: the full evaluation (every point sees all N images) against the
adaptive one (landscapes.sampling: each point stops at its requested standard error), on one
model, plane and data set, in one process.

Prints both times and image-evaluation counts, ``p99 relative error: E`` (adaptive loss vs full,
over the grid), ``within 2 SE: F`` (fraction of points whose full value lies within 2 SE of the
adaptive estimate) and as the last line ``ratio: X`` (full time / adaptive time). ``--record``
appends a row to bench/RESULTS.md (a plain run changes no file).

Without ``--checkpoint`` the net is trained quickly first (``--train-epochs`` epochs on the first
``--train-samples`` training images, models.train's recipe, cached in
runs/surface_bench/<model>_<dataset>/final.pt): a trained net's landscape, not an init's.

Large grids: ``--subgrid S`` evaluates both on an S x S subgrid of the G x G plane (every point's
adaptive cost depends on that point alone: the image order is shared, not adapted) and
extrapolates both times to G x G, saying so. Examples:
    python bench/surface_bench.py --model resnet8 --grid 9 --samples 10000 --dataset mnist \\
        --data-root /work/shared/datasets --device cpu
    python bench/surface_bench.py --model resnet56 --checkpoint runs/resnet56_mnist/final.pt --grid 51 \\
        --subgrid 6 --samples 50000 --dataset mnist --data-root /work/shared/datasets   # the moonshot, a slice
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's packages, not an installed copy
import models  # noqa: E402
from landscapes.directions import DirectionConfig, create_directions  # noqa: E402
from landscapes.evalconfig import ENGINES, EVAL_DTYPES, EvalConfig  # noqa: E402
from landscapes.evaluate import Evaluator  # noqa: E402
from landscapes.grid import grid_coords  # noqa: E402
from landscapes.sampling import SamplingConfig, compute_sampled, ordered, sampled_names, sampling_summary  # noqa: E402
from landscapes.scan import value_names  # noqa: E402
from landscapes.surface import SurfaceStore  # noqa: E402
from models.data import DATASETS, load_device_data  # noqa: E402
from models.checks import positive_int  # noqa: E402
from models.cli import add_threads_argument  # noqa: E402
from models.train import TrainConfig, train  # noqa: E402
from scan_bench import RESULTS, code_version, machine_name, run_from_args  # noqa: E402  (bench/ is on sys.path as a script)

HEADER = ("| date | code | machine | model | data | grid (measured) | images | device | dtype | precision | "
          "full s | adaptive s | full img-evals | adaptive img-evals | p99 rel. err | within 2 SE | ratio | "
          "arguments |\n|" + "---|" * 18 + "\n")


@dataclass(frozen=True)
class SurfaceBenchConfig:
    model: str = "resnet8"
    dataset: str = "mnist"
    data_root: str = os.environ.get("RESNET_TOOLKIT_DATA",
                                    str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    checkpoint: str | None = None
    train_epochs: int = 2            # quick training without --checkpoint
    train_samples: int = 20000
    grid: int = 9
    subgrid: int | None = None       # measure an S x S subgrid and extrapolate to grid x grid
    samples: int = 10000
    device: str = "cpu"
    seed: int = 0                    # directions
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    eval: EvalConfig = EvalConfig()
    threads: int | None = None
    results: str | None = None       # append a row here (--record)

    def __post_init__(self) -> None:
        for name in ("grid", "samples", "train_epochs", "train_samples"):
            positive_int(name, getattr(self, name))
        positive_int("threads", self.threads, allow_none=True, note="None: torch's default")
        if self.subgrid is not None and not 1 <= self.subgrid <= self.grid:
            raise ValueError(f"subgrid must lie in 1..grid ({self.grid}); got {self.subgrid}")


@dataclass
class SurfaceBenchResult:
    points: int                      # measured
    grid_points: int                 # of the whole grid
    full_seconds: float
    adaptive_seconds: float
    full_evals: int
    adaptive_evals: int
    first_round_evals: int           # image-evaluations of the first complete (low-precision) picture
    p99_rel_error: float
    max_rel_error: float
    within_2se: float
    max_acc_diff: float              # points of %
    summary: dict

    @property
    def scale(self) -> float:
        return self.grid_points / self.points

    @property
    def ratio(self) -> float:
        return self.full_seconds / self.adaptive_seconds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def quick_checkpoint(config: SurfaceBenchConfig) -> Path:
    """A briefly trained net for the bench (reused when already there)."""
    out = Path("runs") / "surface_bench" / f"{config.model}_{config.dataset}"
    if not (out / "final.pt").is_file():
        print(f"training {config.model} on {config.train_samples} {config.dataset} images for "
              f"{config.train_epochs} epochs (cached in {out}) ...", file=sys.stderr)
        train(TrainConfig(model=config.model, dataset=config.dataset, data_root=config.data_root,
                          epochs=config.train_epochs, samples=config.train_samples, test_samples=1000,
                          device=config.device, out=str(out), progress=False))
    return out / "final.pt"


def run_bench(config: SurfaceBenchConfig) -> SurfaceBenchResult:
    device = torch.device(config.device)
    ckpt = config.checkpoint or quick_checkpoint(config)
    model, _ = models.load_checkpoint(ckpt, name=config.model)
    model = model.to(device).eval()
    data = load_device_data(config.dataset, config.data_root, "train", config.samples, device)
    if len(data) < config.samples:
        raise ValueError(f"{config.dataset} has only {len(data)} training images; lower --samples")
    center = {k: v.detach().clone() for k, v in model.state_dict().items()}
    dirs = [{k: v.to(device) for k, v in d.items()} for d in create_directions(model, DirectionConfig(seed=config.seed))]
    axis = np.linspace(-1.0, 1.0, config.grid)
    sub = axis if config.subgrid is None else axis[np.unique(np.linspace(0, config.grid - 1, config.subgrid).round()
                                                             .astype(int))]
    coords = grid_coords(sub, sub, np.arange(sub.size ** 2))
    n = len(data)

    # Both engines are prepared (traced, folded, fused) and warmed up on one point before timing:
    # the times compare evaluation, not one-time set-up or first-call kernel selection.
    full_ev = Evaluator(model, center, dirs, data, config.eval)
    evaluators = {"train": Evaluator(model, center, dirs, ordered(data, config.sampling.seed), config.eval)}
    for ev in (full_ev, evaluators["train"]):
        ev.sums(coords[:1], slice(0, min(n, config.sampling.chunk)))
    _sync(device)
    start = time.perf_counter()
    full_loss, full_acc, _ = full_ev.evaluate(coords)
    _sync(device)
    full_seconds = time.perf_counter() - start

    names = value_names(["train"]) + sampled_names(["train"])
    store = SurfaceStore(sub, sub, names)  # in memory: the bench times computing, not writing
    rounds: list[int] = []
    real_flush = store.flush

    def flush() -> None:  # one per round: the image-evaluations of the first complete picture
        rounds.append(int(np.nansum(store.values["train_n"])))
        real_flush()

    store.flush = flush  # type: ignore[method-assign]
    _sync(device)
    start = time.perf_counter()
    compute_sampled(evaluators, coords, store, config.sampling, chunk_size=len(coords), progress=False)
    _sync(device)
    adaptive_seconds = time.perf_counter() - start

    full = full_loss.numpy()
    loss, se = store.values["train_loss"], store.values["train_loss_se"]
    err = np.abs(loss - full)
    rel = err / np.abs(full)
    within = err <= 2 * se + 1e-9 * np.abs(full)  # SE 0 (all N images): equal up to summation order
    acc_diff = np.abs(store.values["train_acc"] - full_acc.numpy())
    summary = sampling_summary(store.values)
    return SurfaceBenchResult(len(coords), config.grid ** 2, full_seconds, adaptive_seconds, len(coords) * n,
                              summary["image_evaluations"], rounds[0] if rounds else 0,
                              float(np.percentile(rel, 99)), float(rel.max()), float(within.mean()),
                              float(acc_diff.max()), summary)


def append_result(path: str | os.PathLike, config: SurfaceBenchConfig, r: SurfaceBenchResult, arguments: str) -> None:
    path = Path(path)
    s = config.sampling
    grid = f"{config.grid}x{config.grid}" + (f" ({config.subgrid}x{config.subgrid})" if config.subgrid else "")
    precision = f"{s.precision:g} rel, {s.abs_precision:g} abs" + (f", cap {s.cap:g}" if s.cap is not None else "")
    cells = [datetime.date.today(), code_version(), machine_name(torch.device(config.device)), config.model,
             config.dataset, grid, config.samples, config.device, config.eval.dtype, precision,
             f"{r.full_seconds:.1f}", f"{r.adaptive_seconds:.1f}", r.full_evals, r.adaptive_evals,
             f"{r.p99_rel_error:.3g}", f"{r.within_2se:.3f}", f"{r.ratio:.2f}", f"`{arguments}`"]
    new = not path.exists() or HEADER.splitlines()[0] not in path.read_text()
    with open(path, "a") as f:
        if new:
            f.write("\n" + HEADER)
        f.write("| " + " | ".join(map(str, cells)) + " |\n")


def parse_args(argv: list[str] | None = None) -> SurfaceBenchConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=SurfaceBenchConfig.model, help="registry name")
    p.add_argument("--checkpoint", help="trained weights (default: a quick training, see above)")
    p.add_argument("--train-epochs", type=int, default=SurfaceBenchConfig.train_epochs)
    p.add_argument("--train-samples", type=int, default=SurfaceBenchConfig.train_samples)
    p.add_argument("--dataset", default=SurfaceBenchConfig.dataset, choices=sorted(DATASETS))
    p.add_argument("--data-root", default=SurfaceBenchConfig.data_root)
    p.add_argument("--grid", type=int, default=SurfaceBenchConfig.grid, help="points per axis on [-1, 1]")
    p.add_argument("--subgrid", type=int, help="measure S x S evenly spread points and extrapolate to the grid")
    p.add_argument("--samples", type=int, default=SurfaceBenchConfig.samples, help="training images N")
    p.add_argument("--device", default=SurfaceBenchConfig.device)
    p.add_argument("--seed", type=int, default=SurfaceBenchConfig.seed, help="seed of the directions")
    p.add_argument("--precision", type=float, default=SamplingConfig.precision)
    p.add_argument("--abs-precision", type=float, default=SamplingConfig.abs_precision)
    p.add_argument("--sample-chunk", type=int, default=SamplingConfig.chunk)
    p.add_argument("--sample-seed", type=int, default=SamplingConfig.seed)
    p.add_argument("--cap", type=float, help="stop points more than 3 SE above this loss")
    p.add_argument("--engine", default="auto", choices=ENGINES[:3])
    p.add_argument("--dtype", default="float32", choices=EVAL_DTYPES)
    add_threads_argument(p)
    p.add_argument("--record", action="store_true", help="append a row to --results")
    p.add_argument("--results", default=str(RESULTS))
    a = p.parse_args(argv)
    sampling = SamplingConfig(precision=a.precision, abs_precision=a.abs_precision, chunk=a.sample_chunk,
                              seed=a.sample_seed, cap=a.cap)
    return SurfaceBenchConfig(model=models.resolve_name(a.model), dataset=a.dataset, data_root=a.data_root,
                              checkpoint=a.checkpoint, train_epochs=a.train_epochs, train_samples=a.train_samples,
                              grid=a.grid, subgrid=a.subgrid, samples=a.samples, device=a.device, seed=a.seed,
                              sampling=sampling, eval=EvalConfig(engine=a.engine, dtype=a.dtype), threads=a.threads,
                              results=a.results if a.record else None)


def main(argv: list[str] | None = None) -> int:
    config, r = run_from_args(parse_args, run_bench, argv)
    s, m = config.sampling, r.summary
    print(f"machine: {machine_name(torch.device(config.device))}; torch {torch.__version__}")
    measured = f"{r.points} points" + (f" ({config.subgrid}x{config.subgrid} subgrid of {config.grid}x{config.grid})"
                                       if config.subgrid else f" ({config.grid}x{config.grid})")
    print(f"work: {config.model} on {config.samples} {config.dataset} training images, {measured}, "
          f"{config.device}, {config.eval.dtype}; adaptive: precision {s.precision:g}, abs {s.abs_precision:g}, "
          f"chunk {s.chunk}, cap {s.cap}")
    print(f"full:     {r.full_seconds:8.1f} s, {r.full_evals} image-evaluations")
    print(f"adaptive: {r.adaptive_seconds:8.1f} s, {r.adaptive_evals} image-evaluations "
          f"({100 * r.adaptive_evals / r.full_evals:.3g}% of full); images per point {m['images_min']} .. "
          f"{m['images_max']}; relative SE median {100 * m['rel_se_median']:.2g}%, max {100 * m['rel_se_max']:.2g}%")
    print(f"first complete picture after {r.first_round_evals} image-evaluations "
          f"({100 * r.first_round_evals / r.full_evals:.3g}% of full)")
    print(f"max relative error: {r.max_rel_error:.3g}; max accuracy difference: {r.max_acc_diff:.3g} points of %")
    if config.subgrid:
        print(f"extrapolated to {config.grid}x{config.grid} ({r.scale:.4g}x the measured points): full "
              f"{r.full_seconds * r.scale / 3600:.3g} h, {round(r.full_evals * r.scale)} image-evaluations; adaptive "
              f"{r.adaptive_seconds * r.scale / 3600:.3g} h, {round(r.adaptive_evals * r.scale)} image-evaluations "
              f"({r.full_evals / r.adaptive_evals:.3g}x fewer)")
    print(f"p99 relative error: {r.p99_rel_error:.4f}")
    print(f"within 2 SE: {r.within_2se:.3f}")
    if config.results:
        append_result(config.results, config, r, " ".join(sys.argv[1:] if argv is None else argv))
    print(f"ratio: {r.ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

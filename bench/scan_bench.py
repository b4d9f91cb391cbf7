"""Landscape-scan throughput: the reference code's per-point loop against our engine, in one process.

Same model, grid, data and device for both; prints image-evaluations per second of each, their
largest disagreement, and as the last line ``ratio: X`` (ours / naive). With ``--record`` it appends
a row to bench/RESULTS.md naming the machine (a plain run changes no file). Example:
    python bench/scan_bench.py --model resnet20 --grid 5 --samples 2000 --device cpu
"""
from __future__ import annotations

import argparse
import copy
import functools
import datetime
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import models
from landscapes.directions import DirectionConfig, create_directions
from landscapes.evalconfig import COMPILE_MODES, ENGINES, EVAL_DTYPES, EvalConfig, EvalInfo
from landscapes.evaluate import Evaluator
from landscapes.reference import point_state
from models.data import DATASETS, SYNTHETIC_SIZES, DataNotFoundError, DeviceData, load_split
from models.checks import positive_int
from models.cli import add_threads_argument, fail, set_threads

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = ("| date | code | machine | torch | model | data | grid | images | device | dtype | engine (K x B) | "
          "naive img/s | ours img/s (TFLOP/s) | ratio | max rel. loss diff | arguments |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")


@dataclass(frozen=True)
class BenchConfig:
    model: str = "resnet20"
    dataset: str = "synthetic"
    data_root: str = os.environ.get("RESNET_TOOLKIT_DATA",
                                    str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    grid: int = 5
    samples: int = 2000
    device: str = "cpu"
    checkpoint: str | None = None
    naive_points: int | None = None  # time the naive loop on the first N grid points only
    naive_batch: int = 128
    slice_points: int = 5            # points per alternating naive / ours slice
    threads: int | None = None       # torch CPU threads for both loops (None: torch's default)
    seed: int = 0
    eval: EvalConfig = EvalConfig()
    results: str | None = None  # markdown file to append a row to (None: print only)

    def __post_init__(self) -> None:
        for name in ("grid", "samples", "naive_batch", "slice_points"):
            positive_int(name, getattr(self, name))
        positive_int("threads", self.threads, allow_none=True, note="None: torch's default")
        positive_int("naive_points", self.naive_points, allow_none=True, note="None: every grid point")


@dataclass(frozen=True)
class BenchResult:
    naive_rate: float   # image evaluations per second
    ours_rate: float
    naive_seconds: float
    ours_seconds: float
    naive_points: int
    max_rel_diff: float  # loss, ours vs naive, over the points both evaluated
    info: EvalInfo
    macs_per_image: int = 0  # conv + linear multiply-accumulates of one forward (models.summarize)

    @property
    def ratio(self) -> float:
        return self.ours_rate / self.naive_rate

    @property
    def ours_tflops(self) -> float:
        """Achieved arithmetic rate of the engine, counting 2 FLOPs per multiply-accumulate."""
        return 2 * self.macs_per_image * self.ours_rate / 1e12


# Dense peak TFLOP/s of the GPUs the project is lent (NVIDIA H100 SXM / H200 data sheets), per dtype.
PEAK_TFLOPS = {"H100": {"float32": 67.0, "tf32": 494.7, "bfloat16": 989.4},
               "H200": {"float32": 67.0, "tf32": 494.7, "bfloat16": 989.4}}


def peak_tflops(device: torch.device, dtype: str) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peaks[dtype] for gpu, peaks in PEAK_TFLOPS.items() if gpu in name), None)


@functools.cache
def code_version() -> str:
    """The commit the engine was timed at (``-dirty``: with uncommitted changes other than the
    results file itself), so rows of different engine versions can be told apart. Taken once, when
    the bench starts (see the call below the definition): a long run must not record the commit
    the checkout has moved on to by the time it ends."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "--short", "HEAD")
    if commit is None:
        return "unknown"
    changes = git("status", "--porcelain", "--untracked-files=no", "--", ":/", f":(exclude){RESULTS}")
    return commit + ("-dirty" if changes else "")


code_version()  # pin the commit at start-up


def machine_name(device: torch.device) -> str:
    """CPU model and core count, or the GPU's name: what the figures were measured on."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (host: {_cpu_name()})"
    return _cpu_name()


def _cpu_name() -> str:
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    name = fields.get("model name", platform.machine())
    family, model = fields.get("cpu family"), fields.get("model")
    detail = f" (family {family}, model {model})" if family and model else ""
    return f"{name}{detail}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def naive_scan(net: nn.Module, center: dict, directions: list, coords: torch.Tensor, loader: DataLoader,
               device: torch.device) -> torch.Tensor:
    """The reference code's loop (tomgoldstein/loss-landscape evaluation.eval_loss): set the
    point's weights, then iterate a DataLoader in eval mode, summing batch-mean CE x batch size."""
    losses = []
    for coord in coords.tolist():
        net.load_state_dict(point_state(center, directions, coord))
        net.eval()
        total, total_loss, correct = 0, 0.0, 0
        for inputs, targets in loader:
            inputs, targets = inputs.to(device), targets.to(device)
            outputs = net(inputs)
            total += inputs.size(0)
            total_loss += F.cross_entropy(outputs, targets).item() * inputs.size(0)
            correct += outputs.max(1)[1].eq(targets).sum().item()
        losses.append(total_loss / total)
    return torch.tensor(losses, dtype=torch.float64)


def grid_coords(n: int) -> torch.Tensor:
    """n x n points of [-1, 1]^2 in the reference's ravel order (x fastest)."""
    axis = torch.linspace(-1.0, 1.0, n, dtype=torch.float64)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)


def run_bench(config: BenchConfig) -> BenchResult:
    """Time the naive loop and the engine on the same model, directions, grid and data.

    The grid is cut into slices of ``config.slice_points`` points, each timed first with the
    naive loop and then with the engine, so that both see the same machine load (a shared
    machine's load drifts over minutes). The engine's one-off preparation (copy, trace, probe,
    data to the device) is timed and counted in its total.
    """
    device = torch.device(config.device)
    if config.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {config.dataset!r}; accepted: {', '.join(DATASETS)}")
    info = DATASETS[config.dataset]
    # Synthetic data grows to any sample count (e.g. CIFAR-10's 50,000 on a machine without CIFAR).
    grow = {"size": config.samples} if config.dataset == "synthetic" and config.samples > SYNTHETIC_SIZES[True] else {}
    x, y = load_split(config.dataset, config.data_root, train=True, samples=config.samples, **grow)
    if config.checkpoint:
        model, _ = models.load_checkpoint(config.checkpoint, name=config.model)
    else:
        torch.manual_seed(config.seed)  # the weights do not change the amount of work
        model = models.build(config.model, num_classes=info.num_classes, in_channels=info.shape[0])
    model = model.to(device).eval()
    center = {k: v.detach().clone() for k, v in model.state_dict().items()}
    directions = [{k: v.to(device) for k, v in d.items()}
                  for d in create_directions(model, DirectionConfig(seed=config.seed))]
    coords = grid_coords(config.grid)
    n_naive = min(config.naive_points or len(coords), len(coords))
    loader = DataLoader(TensorDataset(x, y), batch_size=config.naive_batch, shuffle=False)

    _sync(device)
    start = time.perf_counter()
    evaluator = Evaluator(model, center, directions, DeviceData(x, y).to(device), config.eval)
    _sync(device)
    ours_seconds = time.perf_counter() - start
    naive_seconds = 0.0
    naive_losses, losses, accs, infos = [], [], [], []
    for first in range(0, len(coords), config.slice_points):
        part = coords[first:first + config.slice_points]
        naive_part = part[: max(0, n_naive - first)]
        if len(naive_part):
            _sync(device)
            start = time.perf_counter()
            naive_losses.append(naive_scan(model, center, directions, naive_part, loader, device))
            _sync(device)
            naive_seconds += time.perf_counter() - start
        start = time.perf_counter()
        loss, acc, part_info = evaluator.evaluate(part)
        _sync(device)
        ours_seconds += time.perf_counter() - start
        losses.append(loss)
        accs.append(acc)
        infos.append(part_info)
    model.load_state_dict(center)
    loss, acc = torch.cat(losses), torch.cat(accs)
    eval_info = infos[0]
    eval_info.points, eval_info.seconds = len(coords), ours_seconds
    if config.eval.dtype != "float32" and config.eval.deviation_points > 0:
        eval_info.deviation = evaluator.deviation(coords, loss, acc)
    naive_loss = torch.cat(naive_losses)
    both = loss[: len(naive_loss)]
    diff = ((both - naive_loss).abs() / naive_loss.abs().clamp_min(1e-12)).max().item()
    n = len(x)
    macs = models.summarize(copy.deepcopy(model).cpu(), tuple(x.shape[1:])).macs
    return BenchResult(n_naive * n / naive_seconds, len(coords) * n / ours_seconds, naive_seconds,
                       ours_seconds, n_naive, diff, eval_info, macs)


def append_result(path: str | os.PathLike, config: BenchConfig, result: BenchResult, arguments: str) -> None:
    """One table row, ending with the bench's command-line arguments (a header first if needed)."""
    path = Path(path)
    device = torch.device(config.device)
    i = result.info
    threads = (f", {i.workers} threads" if i.workers > 1 else "") + (f", {i.fused} fused" if i.fused else "")
    cells = [datetime.date.today(), code_version(), machine_name(device), torch.__version__, config.model,
             config.dataset, f"{config.grid}x{config.grid}", config.samples, device.type, i.dtype,
             f"{i.engine} ({i.points_per_pass} x {i.batch_size}{threads})", f"{result.naive_rate:.0f}",
             f"{result.ours_rate:.0f} ({result.ours_tflops:.3g})", f"{result.ratio:.2f}", f"{result.max_rel_diff:.1e}",
             f"`{arguments}`"]
    row = "| " + " | ".join(map(str, cells)) + " |\n"
    new = not path.exists() or "| date |" not in path.read_text()
    with open(path, "a") as f:
        if new:
            f.write("\n" + HEADER)
        f.write(row)


def parse_args(argv: list[str] | None = None) -> BenchConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=BenchConfig.model, help="registry name (python -m models.summary --list)")
    p.add_argument("--noshort", action="store_true", help="the model's plain twin")
    p.add_argument("--dataset", default=BenchConfig.dataset, choices=sorted(DATASETS))
    p.add_argument("--data-root", default=BenchConfig.data_root)
    p.add_argument("--checkpoint", default=None, help="evaluate this checkpoint instead of a seeded init")
    p.add_argument("--grid", type=int, default=BenchConfig.grid, help="points per axis of the 2-D grid")
    p.add_argument("--samples", type=int, default=BenchConfig.samples, help="training images evaluated per point")
    p.add_argument("--device", default=BenchConfig.device)
    p.add_argument("--naive-points", type=int, default=None,
                   help="time the naive loop on the first N points only (throughput is per image)")
    p.add_argument("--slice-points", type=int, default=BenchConfig.slice_points,
                   help="alternate naive and ours every N points (both then see the same machine load)")
    add_threads_argument(p, help="torch CPU threads for both loops (default: torch's)")
    p.add_argument("--seed", type=int, default=BenchConfig.seed)
    p.add_argument("--engine", default="auto", choices=ENGINES)
    p.add_argument("--dtype", default="float32", choices=EVAL_DTYPES)
    p.add_argument("--bn", default="stored", choices=("stored", "batch", "recalibrate"))
    p.add_argument("--batch-size", type=int, default=None, help="images per forward (default: from memory)")
    p.add_argument("--points-per-pass", type=int, default=None, help="grid points per forward (batched engine)")
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--no-fold", action="store_true", help="keep BN layers unfolded")
    p.add_argument("--no-fuse", action="store_true", help="CPU: keep conv, add and ReLU as separate ops")
    p.add_argument("--compile", default=None, choices=COMPILE_MODES, help="torch.compile the forward")
    p.add_argument("--record", action="store_true", help="append a row to --results (default: print only)")
    p.add_argument("--results", default=str(RESULTS), help="markdown file --record appends to")
    a = p.parse_args(argv)
    name = models.resolve_name(a.model, a.noshort)
    ev = EvalConfig(batch_size=a.batch_size, points_per_pass=a.points_per_pass, engine=a.engine, dtype=a.dtype,
                    bn_mode=a.bn, channels_last=not a.no_channels_last, fold_bn=not a.no_fold, compile=a.compile,
                    fuse_cpu=not a.no_fuse)
    return BenchConfig(model=name, dataset=a.dataset, data_root=a.data_root, grid=a.grid, samples=a.samples,
                       device=a.device, checkpoint=a.checkpoint, naive_points=a.naive_points, seed=a.seed, eval=ev,
                       slice_points=a.slice_points, threads=a.threads,
                       results=a.results if a.record else None)


def run_from_args(parse, run, argv: list[str] | None):
    """(config, result) of a bench run from its command line (``parse``: argv -> config with a
    ``threads`` field; ``run``: config -> result); a usage error exits 2 (models.cli.fail)."""
    try:
        config = parse(argv)
        set_threads(config.threads)
        return config, run(config)
    except (ValueError, FileNotFoundError, DataNotFoundError, models.CheckpointError) as err:
        fail(str(err))


def main(argv: list[str] | None = None) -> int:
    config, result = run_from_args(parse_args, run_bench, argv)
    i = result.info
    print(f"machine: {machine_name(torch.device(config.device))}; torch {torch.__version__}")
    print(f"work: {config.model} on {config.samples} {config.dataset} images, {config.grid}x{config.grid} grid, "
          f"{config.device}, {i.dtype}, BN {i.bn_mode}")
    print(f"naive: {result.naive_rate:10.1f} image-evals/s  ({result.naive_points} points in "
          f"{result.naive_seconds:.1f} s; DataLoader batch {config.naive_batch}, load_state_dict per point)")
    print(f"ours:  {result.ours_rate:10.1f} image-evals/s  ({i.points} points in {result.ours_seconds:.1f} s; "
          f"engine {i.engine}, {i.points_per_pass} points x {i.batch_size} images per forward"
          f"{f', {i.workers} points in parallel threads' if i.workers > 1 else ''}, {i.folded_bn} BN folded, "
          f"{i.fused} conv+add+ReLU fused)")
    peak = peak_tflops(torch.device(config.device), i.dtype)
    print(f"ours:  {result.ours_tflops:10.3g} TFLOP/s achieved ({2 * result.macs_per_image / 1e6:.1f} MFLOP per image"
          f"{f'; {100 * result.ours_tflops / peak:.1f}% of the {peak:g} TFLOP/s {i.dtype} peak' if peak else ''})")
    for notice in i.notices:
        print(f"notice: {notice}")
    if i.deviation:
        print("deviation from float32: " + ", ".join(f"{k} {v:.3g}" for k, v in i.deviation.items()))
    print(f"max relative loss difference ours vs naive: {result.max_rel_diff:.2e}")
    if config.results:
        append_result(config.results, config, result, " ".join(sys.argv[1:] if argv is None else argv))
    print(f"ratio: {result.ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Scan a loss landscape: loss and accuracy of a trained model at every point theta0 + a*x + b*y
of a 1-D or 2-D grid, written to a resumable surface file. Library: ``scan(ScanConfig(...))`` and
the lower-level ``compute_surface`` (landscapes.compute); ``torchrun --nproc-per-node N -m landscapes.scan`` shards it.

    python -m landscapes.scan --model resnet56 --noshort --x -1:1:51 --y -1:1:51
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from models import load_checkpoint, read_checkpoint, resolve_device, resolve_name
from models.checkpoint import normalization_of
from models.fileio import package_version, sha256
from models.data import DATA_ENV, DeviceData, default_data_root, load_device_data, normalization_constants
from models.train import TrainConfig

from .compute import compute_surface, default_chunk_size, rank_and_world, value_names
from .directions import (State, cosine, create_directions, direction_file_info, directions_digest, load_directions,
                         resolve_dir_type, save_directions, state_digest)
from .evalconfig import BN_MODES, COMPILE_MODES, ENGINES, EVAL_DTYPES, EvalConfig
from .grid import AXIS_HELP, Axis, axis_arg, glue_grid_args, grid_coords, parse_axis
from .options import add_scan_options, scan_config_kwargs
from .sampling import SamplingConfig, sampled_names
from .scanconfig import DEFAULT_DATASET, DEFAULT_MODEL, DIRECTION_OPTIONS, SPLITS, ScanConfig
from .surface import Surface, SurfaceConflictError, SurfaceStore, read_surface

__all__ = ["Axis", "parse_axis", "ScanConfig", "ScanResult", "ScanSetup", "prepare_scan", "compute_surface", "scan",
           "main", "grid_coords", "axis_arg", "glue_grid_args", "AXIS_HELP", "SPLITS"]

@dataclass
class ScanResult:
    """What a scan produced: the surface (as read back), where it lies, and what this run did."""

    path: Path
    surface: Surface
    dir_file: Path
    points_computed: int
    seconds: float
    plots: list[Path] = field(default_factory=list)
    nonfinite: int = 0  # computed points whose loss is NaN or inf (the model diverges there)


# --------------------------------------------------------------------------------------------
# scan(): checkpoint + data + directions + file, then compute_surface
# --------------------------------------------------------------------------------------------

def _train_command(config: ScanConfig) -> str:
    parts = ["python -m models.train", f"--model {config.model or DEFAULT_MODEL}"]
    if config.noshort:
        parts.append("--noshort")
    parts.append(f"--dataset {config.dataset_name}")
    if config.dataset_name != "synthetic" and config.data_root not in (None, default_data_root()):
        parts.append(f"--data-root {config.data_root}")
    parts += [f"--data-kw {k}={v}" for k, v in (config.data_kwargs or {}).items()]
    return " ".join(parts)


def default_checkpoint(config: ScanConfig) -> Path:
    """Where ``models.train`` puts the final weights of this model and data set by default."""
    return TrainConfig(model=config.model or DEFAULT_MODEL, noshort=config.noshort,
                       dataset=config.dataset_name).out_dir / "final.pt"


def _resolve_checkpoint(config: ScanConfig) -> Path:
    if config.checkpoint is not None:
        path = Path(config.checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
        return path
    path = default_checkpoint(config)
    if not path.is_file():
        raise FileNotFoundError(
            f"no --checkpoint given and none found at {path}; a scan of an untrained network would "
            f"be meaningless. Train one first:\n    {_train_command(config)}\n"
            f"(it writes {path}; add --epochs N for a shorter run), or pass --checkpoint FILE.")
    return path


def resolve_config(config: ScanConfig) -> ScanConfig:
    """``config`` with every option it leaves out (None) taken from what its checkpoint records:
    model, dataset, normalization (:func:`models.checkpoint.normalization_of`); then the defaults
    (resnet56, cifar10, torchvision constants). The data root: the given one, else
    $RESNET_TOOLKIT_DATA, else the checkpoint's if that folder exists here, else ./data. A given
    model or dataset that contradicts the checkpoint raises ValueError naming both values."""
    path = Path(config.checkpoint) if config.checkpoint is not None else default_checkpoint(config)
    meta = read_checkpoint(path)["meta"] if path.is_file() else {}
    trained = meta.get("config") if isinstance(meta.get("config"), Mapping) else {}
    model, noshort = config.model, config.noshort
    recorded = meta.get("model")
    if recorded is not None:
        given = None if model is None else resolve_name(model, noshort)
        if given is None and noshort and not recorded.endswith("_noshort"):
            given = f"{recorded} --noshort"
        if given is not None and given != recorded:
            raise ValueError(f"--model {given!r} contradicts the checkpoint {path}, which holds a {recorded!r}: drop "
                             f"--model/--noshort (the checkpoint's is the default) or pick the matching checkpoint")
        model, noshort = recorded, False
    dataset = trained.get("dataset") or meta.get("dataset")
    if config.dataset is not None and dataset is not None and config.dataset != dataset:
        raise ValueError(f"--dataset {config.dataset!r} contradicts the checkpoint {path}, which was trained on "
                         f"{dataset!r}: drop --dataset (the checkpoint's is the default) or pick another checkpoint")
    dataset = config.dataset or dataset or DEFAULT_DATASET
    recorded_root = trained.get("data_root")
    root = (config.data_root or os.environ.get(DATA_ENV)
            or (recorded_root if recorded_root and Path(recorded_root).is_dir() else None) or default_data_root())
    normalization = config.normalization
    if normalization is None:
        normalization = normalization_of(meta) if path.is_file() else "torchvision"
        try:
            normalization_constants(dataset, normalization)
        except ValueError:  # the original constants exist only for CIFAR-10
            normalization = "torchvision"
    return replace(config, model=model or DEFAULT_MODEL, noshort=noshort, dataset=dataset, data_root=str(root),
                   normalization=normalization)


def _check_finite(state: Mapping[str, torch.Tensor], what: str) -> None:
    """Refuse NaN/inf up front: every point of the surface would be NaN, and silently so."""
    bad = [k for k, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise ValueError(f"{what} hold NaN or inf values in {len(bad)} tensors ({', '.join(bad[:3])}"
                         f"{', ...' if len(bad) > 3 else ''}): not finite, so every loss would be NaN; fix or "
                         f"replace the file")


def _device(config: ScanConfig, world: int) -> torch.device:
    return resolve_device(config.device, world)


def _data_digest(data: DeviceData) -> str:
    h = hashlib.sha256()
    h.update(data.x.detach().cpu().contiguous().numpy().tobytes())
    h.update(data.y.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _load_data(config: ScanConfig, meta: Mapping[str, Any], num_classes: int, in_channels: int
               ) -> tuple[dict[str, DeviceData], dict[str, Any]]:
    data_kwargs = config.data_kwargs
    if data_kwargs is None:
        trained = meta.get("config", {}) if isinstance(meta.get("config"), Mapping) else {}
        data_kwargs = dict(trained.get("data_kwargs") or {}) if trained.get("dataset") == config.dataset else {}
    # scan has no --download: the message must not offer it
    data = {split: load_device_data(config.dataset, config.data_root, split, config.samples, "cpu",
                                    normalization=config.normalization, offer_download=False, **data_kwargs)
            for split in config.splits}
    for split, d in data.items():
        if d.x.shape[1] != in_channels:
            raise ValueError(f"the model takes {in_channels}-channel images but {config.dataset} ({split}) has "
                             f"{d.x.shape[1]} channels: scan it on the data set it was trained on")
        if int(d.y.max()) >= num_classes:
            raise ValueError(f"{config.dataset} has labels up to {int(d.y.max())} but the model has only "
                             f"{num_classes} outputs: scan it on the data set it was trained on")
    return data, data_kwargs


def _directions(config: ScanConfig, model: nn.Module, model2: nn.Module | None
                ) -> tuple[list[State], dict[str, Any]]:
    """Reuse an existing --dir-file, else draw the directions (all ranks alike); ``meta["save"]``
    then holds the attributes to save them with (done once the output file is known to be ours).
    ``meta["options"]`` holds the direction options that made them (the file's own when reused;
    None where a reference-project file does not say)."""
    path = config.dir_path
    dconf = config.direction_config
    if config.dir_file is not None and path.is_file():
        if model2 is not None:
            raise ValueError(f"--model2 and the existing direction file {path} both define the x direction; "
                             f"drop one of them (or name a new --dir-file to create)")
        info = direction_file_info(path)
        if info["ndim"] < config.ndim:
            raise ValueError(f"direction file {path} holds only an x direction (it was made for a 1-D scan); a "
                             f"2-D scan needs ydirection too: pass a new --dir-file (it will be created) or drop --y")
        own = {k: v.item() if isinstance(v, np.generic) else v for k, v in info["attrs"].items()}
        own = {k: v for k, v in own.items() if isinstance(v, (str, int, float, bool))}
        if own.get("model") not in (None, "", config.model_name):
            raise ValueError(f"direction file {path} was made for model {own['model']!r}, not {config.model_name!r} "
                             f"(same tensor shapes, other network): use that model's checkpoint, or another "
                             f"--dir-file")
        options = {k: own.get(k) for k in DIRECTION_OPTIONS}
        clash = [f"--{k.replace('_', '-')} {getattr(config, k)} vs {options[k]} in the file"
                 for k in DIRECTION_OPTIONS if getattr(config, k) is not None and options[k] is not None
                 and getattr(config, k) != options[k]]
        if clash:
            raise ValueError(f"the existing direction file {path} was made with other options "
                             f"({'; '.join(clash)}): drop those options (the file decides), or name a new --dir-file")
        unknown = [k for k in DIRECTION_OPTIONS if getattr(config, k) is not None and options[k] is None]
        if unknown:
            print(f"notice: {path} does not record {', '.join(unknown)} (a reference-project file?); the given "
                  f"{', '.join('--' + k for k in unknown)} could not be checked and do not change its directions",
                  file=sys.stderr)
        dir_type = resolve_dir_type(path, model, config.dir_type)
        directions = load_directions(path, model, dir_type)[:config.ndim]
        meta = {"directions_source": "file" if own else "file (reference project)", "dir_type": dir_type,
                "directions_meta": own, "options": options}
        return directions, meta
    directions = create_directions(model, dconf, target=model2)
    meta = {"directions_source": "target" if model2 is not None else "random", "dir_type": dconf.dir_type,
            "directions_meta": {k: v for k, v in asdict(dconf).items()},
            "options": {k: getattr(dconf, k) for k in DIRECTION_OPTIONS}}
    if not (path.is_file() and _file_digest(path) == directions_digest(directions)):
        meta["save"] = {"source": meta["directions_source"], "model": config.model_name, **asdict(dconf)}
    return directions, meta


def _file_digest(path: Path) -> str | None:
    try:
        return direction_file_info(path)["attrs"].get("digest")
    except (OSError, ValueError):
        return None


def _plot(path: Path) -> list[Path]:
    """Hand the finished file to landscapes.plot (imported only here: computing never plots). A
    failing plot is reported, not raised: the surface itself is done and safe on disk."""
    from .plot import plot_surface_file
    try:
        return plot_surface_file(path)
    except (ValueError, OSError, ImportError) as err:
        print(f"warning: the surface is complete but plotting it failed: {err}. Retry with "
              f"python -m landscapes.plot {path}", file=sys.stderr)
        return []


@dataclass
class ScanSetup:
    """Everything a scan computes on, resolved from its config once: the model (eval mode, on the
    CPU), the data (CPU), the directions, the grid, and the identity a resumed file must match
    plus the attributes it is written with. Hessian maps reuse it, so that a map made with the
    same arguments lies on exactly the plane of the loss surface."""

    config: ScanConfig
    device: torch.device
    checkpoint: Path
    model: nn.Module
    data: dict[str, DeviceData]
    directions: list[State]
    x: np.ndarray
    y: np.ndarray | None
    identity: dict[str, Any]
    attrs: dict[str, Any]
    dir_meta: dict[str, Any]

    def save_directions(self) -> None:
        """Write newly drawn directions to ``config.dir_path`` (a no-op for a reused file). Call
        it once the output file is known to be yours: a refused run must leave files alone."""
        if "save" in self.dir_meta:
            path = self.config.dir_path
            if path.exists() and not self.config.force:  # never replace a direction file silently
                raise ValueError(f"direction file {path} exists and holds other directions; it is left untouched: "
                                 f"reuse it with --dir-file {path}, or pass another --dir-file (or --force to "
                                 f"replace it)")
            if path.exists():
                print(f"notice: --force: replacing the direction file {path}", file=sys.stderr)
            save_directions(self.config.dir_path, self.directions, self.model, self.dir_meta["dir_type"],
                            meta=self.dir_meta["save"])

    def on_device(self) -> tuple[State, list[State], dict[str, DeviceData]]:
        """Move the model to ``device``; return a copy of its state (the center, never aliasing
        the parameters that an engine may overwrite point by point), directions and data there."""
        self.model.to(self.device)
        center = {k: v.detach().to(self.device, copy=True) for k, v in self.model.state_dict().items()}
        directions = [{k: v.to(self.device) for k, v in d.items()} for d in self.directions]
        return center, directions, {s: d.to(self.device) for s, d in self.data.items()}


def prepare_scan(config: ScanConfig) -> ScanSetup:
    """Resolve the checkpoint (never a random initialization), load model and data, reuse or draw
    the directions, and describe the scan (identity and attributes). Touches no output file.
    Options left out are resolved first (:func:`resolve_config`); ``ScanSetup.config`` is the result."""
    config = resolve_config(config)
    _, world = rank_and_world()
    device = _device(config, world)
    if config.dtype == "tf32" and device.type != "cuda":
        raise ValueError(f"dtype tf32 exists only on CUDA devices, not on {device}; use float32 or bfloat16")
    ck_path = _resolve_checkpoint(config)
    model, meta = load_checkpoint(ck_path, name=config.model_name)
    model.eval()
    _check_finite(model.state_dict(), f"the weights of {ck_path}")
    spec_kwargs = dict(model.spec.kwargs)
    data, data_kwargs = _load_data(config, meta, spec_kwargs.get("num_classes", 10), spec_kwargs.get("in_channels", 3))
    model2 = ck2_sha = None
    if config.model2 is not None:
        if not Path(config.model2).is_file():
            raise FileNotFoundError(f"--model2 checkpoint {config.model2!r} does not exist")
        model2, _ = load_checkpoint(config.model2, name=config.model_name)
        ck2_sha = sha256(config.model2)
    if model2 is not None:
        _check_finite(model2.state_dict(), f"the weights of {config.model2}")
    directions, dir_meta = _directions(config, model, model2)
    for axis, direction in zip("xy", directions):
        _check_finite(direction, f"the {axis} direction ({dir_meta['directions_source']}, {config.dir_path})")
    digest = directions_digest(directions)
    # The weights, not the checkpoint file, identify what was scanned: a published copy of a net
    # (no resume state, another archive name) must resume the surfaces computed at the original.
    identity = {
        "model": config.model_name, "model_kwargs": spec_kwargs, "weights_sha256": state_digest([model.state_dict()]),
        "model2_weights_sha256": None if model2 is None else state_digest([model2.state_dict()]),
        "dataset": config.dataset, "data_kwargs": data_kwargs, "split": config.split,
        "samples": config.samples, "data_sha256": {s: _data_digest(d) for s, d in data.items()},
        "x": [config.x.start, config.x.stop, config.x.num],
        "y": None if config.y is None else [config.y.start, config.y.stop, config.y.num],
        "directions_sha256": digest, "dir_type": dir_meta["dir_type"], "dtype": config.dtype, "bn_mode": config.bn,
    }
    if config.sampling is not None:  # the image order; the precision may change between runs
        identity["sampling"] = config.sampling.identity()
    if config.bn != "stored":  # statistics from batches: their size and the calibration set matter
        ev = config.eval_config
        identity.update(stats_batch_size=ev.stats_batch_size, calibration_samples=ev.calibration_samples)
    cos = cosine(directions[0], directions[1]) if len(directions) == 2 else None
    attrs = {
        "model": config.model_name, "model_kwargs": spec_kwargs, "checkpoint": str(ck_path),
        "checkpoint_sha256": sha256(ck_path), "weights_sha256": identity["weights_sha256"], "model2": config.model2 or "",
        "model2_sha256": ck2_sha or "", "dataset": config.dataset, "data_root": str(config.data_root),
        "data_kwargs": data_kwargs, "split": config.split, "samples": config.samples if config.samples else 0,
        "num_samples": {s: len(d) for s, d in data.items()}, "normalization": config.normalization,
        "dir_type": dir_meta["dir_type"], **dir_meta["options"], "same_dir": config.same_dir, "directions_sha256": digest,
        "directions_source": dir_meta["directions_source"], "directions_meta": dir_meta["directions_meta"],
        "directions_cosine": np.nan if cos is None else cos, "dtype": config.dtype, "bn_mode": config.bn,
        "eval_config": asdict(config.eval_config), "device": str(device), "world_size": world,
        "version": package_version(), "torch_version": str(torch.__version__),
    }
    x, y = config.x.coordinates(), None if config.y is None else config.y.coordinates()
    return ScanSetup(config, device, ck_path, model, data, directions, x, y, identity, attrs, dir_meta)


def scan(config: ScanConfig) -> ScanResult:
    """Run a scan end to end and return the finished surface.

    Continues an existing output file computed with the same arguments (only missing points are
    evaluated); refuses one computed with others unless ``config.force``. Under torch.distributed
    (initialized by the caller, e.g. :func:`main` under torchrun) the points are sharded over the
    ranks and rank 0 writes; the file equals a single-process scan's.
    """
    start = time.perf_counter()
    rank, world = rank_and_world()
    setup = prepare_scan(config)
    config = setup.config  # options left out, resolved from the checkpoint
    if world > 1:
        digests: list[Any] = [None] * world
        dist.all_gather_object(digests, setup.identity["directions_sha256"])
        if len(set(digests)) != 1:
            raise ValueError(f"ranks hold different directions ({digests}); is --dir-file on a disk all ranks share?")
    x, y = setup.x, setup.y
    names = value_names(config.splits) + (sampled_names(config.splits) if config.sampling else [])
    out = config.out_path

    # Rank 0 owns the file; the others learn whether it could be opened (else they would hang).
    store: SurfaceStore | None = None
    status: list[Any] = [None, None]
    if rank == 0:
        try:
            store = SurfaceStore.open(out, x, y, names, setup.identity, setup.attrs, dir_file=str(config.dir_path),
                                      force=config.force, flush_seconds=config.flush_seconds)
            setup.save_directions()
        except (ValueError, OSError) as err:
            if store is not None:
                store.close()
            if world == 1:
                raise
            status = [str(err), None]
        else:
            status = [None, store.attrs.get("chunk_size")]
    if world > 1:
        dist.broadcast_object_list(status, src=0)
        if status[0] is not None:
            raise SurfaceConflictError(status[0] if rank == 0 else f"rank 0 could not open {out}: {status[0]}")
    chunk = config.chunk_size or status[1] or default_chunk_size(x.size * (1 if y is None else y.size))
    try:
        center, directions, data = setup.on_device()
        if store is None:  # ranks > 0: in-memory mirror of the surface
            store = SurfaceStore(x, y, names)
        todo_before = int((~store.done).sum()) if rank == 0 else 0
        if rank == 0 and store.path is not None:
            store.attrs["chunk_size"] = int(chunk)
            store.begin_run(device=str(setup.device), world_size=world, batch_size=config.batch_size or 0,
                            engine=config.engine)
        if rank == 0 and not todo_before and config.sampling is None:  # adaptive: a new precision may reopen points
            print(f"{out}: all {store.done.size} points already computed; nothing to do", file=sys.stderr)
        surface = compute_surface(setup.model, directions, x, y, data, config.eval_config, center=center,
                                  store=store, chunk_size=chunk, progress=config.progress, sampling=config.sampling)
    finally:
        if store is not None:
            store.close()
    plots = _plot(out) if config.plot and rank == 0 else []
    if rank == 0 and out.exists():
        surface = read_surface(out)
    nonfinite = _count_nonfinite(surface)
    if nonfinite and rank == 0:
        print(f"warning: the loss is not finite (NaN or inf) at {nonfinite} of {int(surface.done.sum())} points of "
              f"{out}: the model diverges there (a smaller --x/--y range stays where it is defined)", file=sys.stderr)
    return ScanResult(out, surface, config.dir_path, todo_before, time.perf_counter() - start, plots, nonfinite)


def _count_nonfinite(surface: Surface) -> int:
    """Computed points where some split's loss is NaN or inf."""
    if surface.done is None:
        return 0
    losses = [v for k, v in surface.values.items() if k.endswith("_loss")]
    bad = np.logical_or.reduce([~np.isfinite(v) for v in losses]) if losses else np.zeros_like(surface.done)
    return int((bad & surface.done).sum())


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m landscapes.scan", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_scan_options(p)
    g = p.add_argument_group("evaluation")
    g.add_argument("--batch-size", type=int, help="images per forward (default: from free memory)")
    g.add_argument("--points-per-pass", type=int, help="grid points per batched forward (default: from memory)")
    g.add_argument("--engine", default=EvalConfig.engine, choices=ENGINES,
                   help="auto: batched on CUDA, loop on CPU; naive is the slow reference")
    g.add_argument("--workers", type=int, help="CPU: grid points evaluated in parallel threads (default: torch's "
                   "thread count; each thread then runs one intra-op thread)")
    g.add_argument("--compile", choices=COMPILE_MODES, help="torch.compile the forward (reduce-overhead: CUDA graphs)")
    g.add_argument("--dtype", default=EvalConfig.dtype, choices=EVAL_DTYPES)
    g.add_argument("--bn", default=EvalConfig.bn_mode, choices=BN_MODES,
                   help="BN statistics: stored (paper), recalibrate at each point, batch")
    g.add_argument("--calibration-samples", type=int, help="--bn recalibrate: first N images (default: all)")
    g = p.add_argument_group("adaptive sample counts (per-point standard errors; landscapes.sampling)")
    g.add_argument("--adaptive", action="store_true", help="stop each point at the default precision "
                   f"({SamplingConfig.precision:g} relative SE of the loss); implied by the options below")
    g.add_argument("--precision", type=float, help="stop a point when SE(loss) <= REL x loss (or --abs-precision)")
    g.add_argument("--abs-precision", type=float, help="stop a point when SE(loss) <= A (loss units)")
    g.add_argument("--sample-chunk", type=int, help=f"images per chunk (default {SamplingConfig.chunk})")
    g.add_argument("--sample-seed", type=int, help="seed of the shared image order (default 0)")
    g.add_argument("--cap", type=float, help="stop a point whose loss is over 3 SE above CAP (e.g. 10, the "
                   "plot's top level)")
    g = p.add_argument_group("output (scan)")
    g.add_argument("--chunk-size", type=int, help="points per flushed chunk (default: from the grid)")
    g.add_argument("--plot", action="store_true", help="plot the surface when done (landscapes.plot)")
    return p


def _init_distributed(device: str) -> bool:
    """Join the process group torchrun describes in the environment (NCCL on GPUs, gloo on CPU)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return True


def _sampling_args(args: dict[str, Any]) -> SamplingConfig | None:
    """Pop the adaptive-sampling options: a SamplingConfig if any was given, else None."""
    given = {field: args.pop(option) for option, field in (("precision", "precision"),
                                                           ("abs_precision", "abs_precision"),
                                                           ("sample_chunk", "chunk"), ("sample_seed", "seed"),
                                                           ("cap", "cap"))}
    adaptive = args.pop("adaptive")
    given = {k: v for k, v in given.items() if v is not None}
    if not (adaptive or given):
        return None
    if "abs_precision" in given and "precision" not in given:
        given["precision"] = 0.0  # an absolute target alone
    return SamplingConfig(**given)


def main(argv: Sequence[str] | None = None) -> None:
    args = vars(build_parser().parse_args(glue_grid_args(sys.argv[1:] if argv is None else argv)))
    started = _init_distributed(args["device"])
    rank, world = rank_and_world()
    try:
        shared = scan_config_kwargs(args)
        own = {k: v for k, v in args.items() if k not in shared and k != "data_kw"}
        own["sampling"] = _sampling_args(own)
        result = scan(ScanConfig(**shared, **own))
    except (ValueError, FileNotFoundError) as err:  # CheckpointError, SurfaceConflictError are ValueErrors
        prefix = "error" if world == 1 else f"error (rank {rank})"
        print(f"{prefix}: {err}", file=sys.stderr)
        if started:
            dist.destroy_process_group()
        sys.exit(2)
    except OSError as err:  # e.g. a full disk: the message says what is on disk and how to go on
        print(f"error: {err}", file=sys.stderr)
        if started:
            dist.destroy_process_group()
        sys.exit(1)
    except KeyboardInterrupt:  # the points computed so far were flushed on the way out
        print("interrupted: run the same command again to compute the remaining points", file=sys.stderr)
        sys.exit(130)
    if started:
        dist.destroy_process_group()
    if rank == 0:
        s = result.surface
        centre = ", ".join(f"{name} {s.attrs[name + '_center']:.4g}" for name in value_names(SPLITS[:2])
                           if name + "_center" in s.attrs)
        per_point = s.attrs.get("seconds_per_point", float("nan"))
        print(f"{result.path}: {int(s.done.sum())}/{s.done.size} points ({result.points_computed} computed now "
              f"in {result.seconds:.1f} s, {per_point:.3g} s/point); at the center: {centre}")
        if "image_evaluations" in s.attrs:
            print(f"adaptive: {s.attrs['image_evaluations']} of {s.attrs['image_evaluations_full']} image-evaluations "
                  f"({100 * s.attrs['image_evaluations'] / s.attrs['image_evaluations_full']:.3g}%)")
        print(f"directions: {s.attrs.get('directions_source')} ({s.attrs.get('dir_type')}), {result.dir_file}"
              + (f"; cos(x, y) = {s.attrs['directions_cosine']:.2g}" if s.y is not None else ""))
        for plot in result.plots:
            print(f"plot: {plot}")
        if result.nonfinite and result.nonfinite == int(s.done.sum()):
            print(f"error: the loss is not finite at all {result.nonfinite} points: nothing to plot", file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    main()

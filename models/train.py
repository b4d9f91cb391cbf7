"""Train a registered model on a registered data set, checkpointing every epoch.

Per-epoch checkpoints feed trajectory plots and make runs resumable: everything random (init,
shuffling, augmentation, the global RNG that stochastic layers draw from) is seeded from
`TrainConfig.seed` and its state saved with each checkpoint, so on CPU a resumed run equals an
uninterrupted one bit for bit. CUDA runs are seeded too but not bit-reproducible (cuDNN kernels).

    python -m models.train --model resnet56 --dataset cifar10 --data-root data --out runs/r56
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from .checks import positive_int
from .cli import fail
from .checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from .data import (AUGMENTATIONS, DATASETS, NORMALIZATIONS, DeviceData, default_data_root, load_device_data,
                   normalization_constants, resolve_augment)
from .device import resolve_device
from .fileio import atomic_path
from .locking import LockHeldError, file_lock
from .registry import build, parse_key_values, resolve_name

__all__ = ["TrainConfig", "RunConflictError", "LOCK_FILE", "train", "evaluate", "lr_at", "warmup_enabled", "main"]

# Fields that say how a run executes, not what it computes: they may change on resume. epochs is
# not one: the lr milestones are fractions of all epochs, so more epochs is another schedule.
_EXECUTION_FIELDS = frozenset(
    {"device", "amp", "channels_last", "out", "progress", "download", "data_root", "save_every", "force"})
_WARMUP_DEPTH = 110  # He et al. 2016 warm up ResNet-110 (and deeper) at lr/10
_WARMUP_ERROR = 0.8  # ... until the training error is below 80%
_WARMUP_EMA = 0.1  # weight of each batch's error: smooths out lucky small batches
LOCK_FILE = ".train.lock"  # in the run directory; held while a run trains there, never deleted
_RUN_FILES = ("final.pt", "metrics.json", "metrics.csv")  # besides epoch_*.pt


class RunConflictError(RuntimeError):
    """The output directory holds a run with a different configuration."""


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Defaults follow He et al. 2016 for CIFAR ResNets: SGD, momentum 0.9,
    weight decay 1e-4 (Li et al. 2018 use 5e-4), batch 128, lr 0.1 divided by 10 at 50% and 75%
    of the iterations; 164 epochs = 64k iterations of 391 batches (the paper's 64k iterations).

    warmup: None = auto (on for resnet*/plain* names of depth >= 110): lr/10 until the training
    error (a moving average over ~10 batches, started at 100%) falls below 80%, then lr. epochs is
    part of what a run is (the milestones are fractions of it): a stored run is resumed only with
    the same epochs, so every epoch of a run follows one schedule. train_eval_samples: also measure
    loss and error in eval mode (stored BN statistics) on the first N training images after every
    epoch: the running average in train mode lags the weights by up to an epoch and mixes BN batch
    statistics in, so converged nets are compared on this fixed subset. data_kwargs go to the
    synthetic data set (seed, image_size, channels, size, noise). out defaults to runs/<model>_<dataset>.
    """

    model: str
    noshort: bool = False
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    dataset: str = "cifar10"
    data_root: str = field(default_factory=default_data_root)
    data_kwargs: Mapping[str, Any] = field(default_factory=dict)
    epochs: int = 164
    samples: int | None = None
    test_samples: int | None = None
    train_eval_samples: int | None = None  # eval-mode error on the first N training images, per epoch
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    milestones: tuple[float, ...] = (0.5, 0.75)
    warmup: bool | None = None
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    out: str | None = None
    progress: bool = True
    download: bool = False
    save_every: int = 1
    force: bool = False  # start over when --out holds a run of another configuration
    normalization: str = "torchvision"  # input constants, models.data.NORMALIZATIONS; recorded in checkpoints
    augment: str | None = None  # models.data.AUGMENTATIONS; None: the data set's standard recipe

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_kwargs", dict(self.model_kwargs))
        object.__setattr__(self, "data_kwargs", dict(self.data_kwargs))
        object.__setattr__(self, "milestones", tuple(float(m) for m in self.milestones))
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; valid names: {', '.join(DATASETS)}")
        for name in ("epochs", "batch_size", "save_every"):
            positive_int(name, getattr(self, name))
        if self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ValueError("need lr > 0, weight_decay >= 0 and 0 <= momentum < 1")
        if list(self.milestones) != sorted(self.milestones) or not all(0 < m <= 1 for m in self.milestones):
            raise ValueError(f"milestones must be increasing fractions in (0, 1], got {self.milestones}")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ValueError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")
        normalization_constants(self.dataset, self.normalization)  # raises for unknown or inapplicable names
        resolve_augment(self.dataset, self.augment)  # raises for an unknown name

    @property
    def model_name(self) -> str:
        return resolve_name(self.model, self.noshort)

    @property
    def out_dir(self) -> Path:
        return Path(self.out if self.out is not None else f"runs/{self.model_name}_{self.dataset}")


def crop_fill(dataset: str, normalization: str) -> tuple[float, ...]:
    """A black pixel in normalized units, per channel: the border torchvision's RandomCrop(padding=4)
    gives on raw pixels, as in Chen et al.'s MNIST recipe ("crop"). The CIFAR recipe ("crop+flip")
    keeps its border at the data mean (fill None), as every cached CIFAR run was trained."""
    mean, std = normalization_constants(dataset, normalization)
    return tuple(-m / s for m, s in zip(mean, std))


def warmup_enabled(config: TrainConfig) -> bool:
    """Explicit config.warmup wins; auto is on for ResNets and plain nets of depth >= 110."""
    if config.warmup is not None:
        return config.warmup
    match = re.fullmatch(r"(resnet|plain)(\d+)(_noshort)?", config.model_name)
    return match is not None and int(match.group(2)) >= _WARMUP_DEPTH


def lr_at(config: TrainConfig, step: int, total_steps: int, warming: bool = False) -> float:
    """Learning rate for optimizer step `step` (0-based) of `total_steps`: divided by 10 at each
    milestone fraction of the iterations (iteration-based as in He et al., so it also works
    for one-epoch runs), capped at lr/10 while warming up."""
    lr = config.lr * 0.1 ** sum(step >= int(m * total_steps) for m in config.milestones)
    return min(lr, 0.1 * config.lr) if warming else lr


def _device(config: TrainConfig) -> torch.device:
    return resolve_device(config.device)


def _autocast(device: torch.device, amp: bool) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda")


@torch.no_grad()
def evaluate(model: nn.Module, data: DeviceData, batch_size: int = 1024, amp: bool = False,
             memory_format: torch.memory_format = torch.contiguous_format) -> tuple[float, float]:
    """(mean cross-entropy, error in percent) of `model` in eval mode over `data`, in order."""
    was_training = model.training
    model.eval()
    loss = torch.zeros((), device=data.x.device, dtype=torch.float64)
    wrong = torch.zeros((), device=data.x.device, dtype=torch.int64)
    for xb, yb in data.batches(batch_size):
        with _autocast(data.x.device, amp):
            out = model(xb.contiguous(memory_format=memory_format)).float()
        loss += F.cross_entropy(out, yb, reduction="sum")
        wrong += (out.argmax(1) != yb).sum()
    model.train(was_training)
    return loss.item() / len(data), 100.0 * wrong.item() / len(data)


def _identity(config: Mapping[str, Any] | TrainConfig) -> dict[str, Any]:
    """The part of a config that defines what a run computes, as JSON would store it."""
    # Fields added since a checkpoint was written take their default, so old runs still resume.
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
    d = asdict(config) if isinstance(config, TrainConfig) else {**defaults, **config}
    d["model"] = resolve_name(d["model"], d.pop("noshort", False))  # resnet56 + noshort = resnet56_noshort
    return json.loads(json.dumps({k: v for k, v in d.items() if k not in _EXECUTION_FIELDS}))


def _saved_epochs(out: Path) -> list[tuple[int, Path]]:
    """(epoch, path) of every epoch_<k>.pt in `out`, newest first."""
    return sorted(((int(m.group(1)), p) for p in out.glob("epoch_*.pt")
                   if (m := re.fullmatch(r"epoch_(\d+)\.pt", p.name))), reverse=True)


def _latest_checkpoint(out: Path, config: TrainConfig) -> dict[str, Any] | None:
    """The newest readable epoch checkpoint in `out`, after checking it belongs to this config."""
    for epoch, path in _saved_epochs(out):
        try:
            ck = read_checkpoint(path)
        except CheckpointError as err:
            print(f"warning: skipping unreadable {path}: {err}", file=sys.stderr)
            continue
        old, new = _identity(ck["meta"].get("config", {})), _identity(config)
        diff = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        if diff:
            why = (" (a run's lr milestones are fractions of its epochs, so another --epochs is another "
                   "schedule, not an extension)" if "epochs" in diff else "")
            raise RunConflictError(
                f"{out} holds a run with a different configuration ("
                + ", ".join(f"{k}: {old.get(k)!r} there vs {new.get(k)!r} now" for k in diff)
                + f"){why}. Use a new --out directory, or --force to overwrite it.")
        return ck
    return None


def _check_writable(out: Path) -> None:
    """Create `out` and a file in it, so that a read-only place fails in one clear line, not as a
    traceback from the first checkpoint."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise PermissionError(f"cannot write the run directory {out}: {err.strerror or err}; "
                              f"choose a writable --out") from None


def _write_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _write_metrics(out: Path, history: list[dict[str, Any]]) -> None:
    _write_atomic(out / "metrics.json", json.dumps(history, indent=1) + "\n")
    buf = io.StringIO()
    if history:
        writer = csv.DictWriter(buf, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    _write_atomic(out / "metrics.csv", buf.getvalue())


def train(config: TrainConfig) -> list[dict[str, Any]]:
    """Train as `config` says, resuming from the newest checkpoint in its output directory.

    Returns one dict per epoch: epoch (1-based), lr (at the epoch's last step), train_loss,
    train_error, test_loss, test_error (errors in percent; train figures are running averages
    over the epoch in train mode), epoch_time_s (train + test), images_per_s (training only).
    Writes OUT/epoch_<k>.pt (epoch_0.pt: the initialization), OUT/metrics.json, OUT/metrics.csv and OUT/final.pt.
    """
    device = _device(config)
    name = config.model_name
    out = config.out_dir
    info = DATASETS[config.dataset]
    fmt = torch.channels_last if config.channels_last and device.type == "cuda" else torch.contiguous_format
    # Everything that can fail on a typo (data root, model options) runs before the run
    # directory is touched; --force deletes only once training is about to start.
    train_data = load_device_data(config.dataset, config.data_root, "train", config.samples, device,
                                  config.download, config.normalization, **config.data_kwargs)
    test_data = load_device_data(config.dataset, config.data_root, "test", config.test_samples, device,
                                 config.download, config.normalization, **config.data_kwargs)
    train_eval = (DeviceData(train_data.x[:config.train_eval_samples], train_data.y[:config.train_eval_samples])
                  if config.train_eval_samples else None)
    _check_writable(out)
    augment = resolve_augment(config.dataset, config.augment)
    # [:channels]: synthetic data may have fewer channels than its (equal per-channel) constants
    fill = crop_fill(config.dataset, config.normalization)[:train_data.x.shape[1]] if augment == "crop" else None

    # The whole run uses a private copy of the global RNG (stochastic layers draw from it),
    # seeded here and restored on resume; the caller's RNG state is left untouched.
    cuda_ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with file_lock(out / LOCK_FILE, what="training run"), torch.random.fork_rng(devices=cuda_ids):
        torch.manual_seed(config.seed)
        model = build(name, num_classes=info.num_classes, in_channels=train_data.x.shape[1],
                      **config.model_kwargs).to(device, memory_format=fmt)
        opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                              weight_decay=config.weight_decay)
        gen = torch.Generator().manual_seed(config.seed)
        try:
            resume = _latest_checkpoint(out, config)
        except RunConflictError:
            if not config.force:
                raise
            for stale in [*(p for _, p in _saved_epochs(out)), *(out / f for f in _RUN_FILES)]:
                stale.unlink(missing_ok=True)
            resume = None
        # Moving average of the batch error while warming up; None once warm-up is over.
        warm_err: float | None = 1.0 if warmup_enabled(config) else None
        history: list[dict[str, Any]] = []
        if resume is not None:
            model.load_state_dict(resume["state_dict"])
            extra = resume["extra"]
            opt.load_state_dict(extra["optimizer"])
            gen.set_state(extra["generator"])
            torch.set_rng_state(extra["rng"])
            if cuda_ids and "cuda_rng" in extra:
                torch.cuda.set_rng_state(extra["cuda_rng"], cuda_ids[0])
            warm_err = extra["warmup_error"]
            history = list(resume["meta"]["history"])

        steps_per_epoch = math.ceil(len(train_data) / config.batch_size)
        total_steps = config.epochs * steps_per_epoch

        def snapshot() -> tuple[dict[str, Any], dict[str, Any]]:
            """Checkpoint meta (JSON-able) and extra (everything resuming needs)."""
            meta = {"dataset": config.dataset, "normalization": config.normalization, "epoch": len(history), "metrics": history[-1] if history else {},
                    "history": history, "seed": config.seed, "config": json.loads(json.dumps(asdict(config)))}
            extra = {"optimizer": opt.state_dict(), "generator": gen.get_state(), "rng": torch.get_rng_state(),
                     "warmup_error": warm_err, "step": len(history) * steps_per_epoch}
            if cuda_ids:
                extra["cuda_rng"] = torch.cuda.get_rng_state(cuda_ids[0])
            return meta, extra

        if resume is None:  # the initialization: where an optimization path (PCA trajectory) starts
            save_checkpoint(out / "epoch_0.pt", model, *snapshot())
        first_epoch = len(history) + 1
        for epoch in range(first_epoch, config.epochs + 1):
            t0 = time.perf_counter()
            model.train()
            loss_sum = torch.zeros((), device=device, dtype=torch.float64)
            wrong_sum = torch.zeros((), device=device, dtype=torch.int64)
            step = (epoch - 1) * steps_per_epoch
            batches = train_data.batches(config.batch_size, shuffle=True, generator=gen, augment=augment, fill=fill)
            for xb, yb in tqdm(batches, total=steps_per_epoch, desc=f"epoch {epoch}/{config.epochs}",
                               disable=not config.progress, leave=False):
                lr = lr_at(config, step, total_steps, warming=warm_err is not None)
                for group in opt.param_groups:
                    group["lr"] = lr
                with _autocast(device, config.amp):
                    logits = model(xb.contiguous(memory_format=fmt))
                    loss = F.cross_entropy(logits.float(), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                wrong = (logits.argmax(1) != yb).sum()
                loss_sum += loss.detach() * len(yb)
                wrong_sum += wrong
                if warm_err is not None:
                    warm_err += _WARMUP_EMA * (wrong.item() / len(yb) - warm_err)
                    warm_err = None if warm_err < _WARMUP_ERROR else warm_err
                step += 1
            train_time = time.perf_counter() - t0
            test_loss, test_error = evaluate(model, test_data, amp=config.amp, memory_format=fmt)
            fixed = {}
            if train_eval is not None:
                fixed["train_loss_eval"], fixed["train_error_eval"] = evaluate(model, train_eval, amp=config.amp,
                                                                               memory_format=fmt)
            history.append({
                "epoch": epoch, "lr": lr,
                "train_loss": loss_sum.item() / len(train_data),
                "train_error": 100.0 * wrong_sum.item() / len(train_data),
                "test_loss": test_loss, "test_error": test_error, **fixed,
                "epoch_time_s": time.perf_counter() - t0,
                "images_per_s": len(train_data) / train_time,
            })
            if config.progress:
                tqdm.write(" ".join(f"{k} {v:.4g}" for k, v in history[-1].items()))
            if epoch % config.save_every == 0 or epoch == config.epochs:
                save_checkpoint(out / f"epoch_{epoch}.pt", model, *snapshot())
            _write_metrics(out, history)
        if first_epoch <= config.epochs or not (out / "final.pt").is_file():  # a finished run stays untouched
            save_checkpoint(out / "final.pt", model, *snapshot())
    return history


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m models.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="registry name, e.g. resnet56 (see python -m models.summary --list)")
    p.add_argument("--noshort", action="store_true", help="the model without skip connections")
    p.add_argument("--model-kw", action="append", default=[], metavar="KEY=VALUE", help="extra model option")
    p.add_argument("--dataset", default="cifar10", choices=list(DATASETS))
    p.add_argument("--data-root", default=None, help="data sets folder (default $RESNET_TOOLKIT_DATA, else ./data)")
    p.add_argument("--normalization", default=TrainConfig.normalization, choices=NORMALIZATIONS,
                   help="input constants: torchvision-style, or the original loss-landscape code's (CIFAR-10)")
    p.add_argument("--data-kw", action="append", default=[], metavar="KEY=VALUE",
                   help="synthetic data option (seed, image_size, channels, size, noise)")
    p.add_argument("--augment", choices=AUGMENTATIONS, default=None,
                   help="training augmentation (default: the data set's recipe: crop+flip on CIFAR, none on MNIST)")
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    p.add_argument("--samples", type=int, help="train on the first N training images")
    p.add_argument("--test-samples", type=int, help="test on the first N test images")
    p.add_argument("--train-eval-samples", type=int,
                   help="after each epoch, also measure eval-mode loss/error on the first N training images")
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--momentum", type=float, default=TrainConfig.momentum)
    p.add_argument("--weight-decay", type=float, default=TrainConfig.weight_decay)
    p.add_argument("--milestones", type=lambda s: tuple(float(v) for v in s.split(",")),
                   default=TrainConfig.milestones, help="fractions of training where lr /= 10, e.g. 0.5,0.75")
    p.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=None,
                   help="lr/10 until train error < 80%% (default: auto, on for depth >= 110)")
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--out", help="run directory (default runs/<model>_<dataset>)")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="no bf16 autocast on CUDA")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--download", action="store_true", help="download the data set if missing")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--save-every", type=int, default=TrainConfig.save_every, help="checkpoint every N epochs")
    p.add_argument("--force", action="store_true", help="overwrite a conflicting run in --out")
    args = vars(p.parse_args(argv))
    args["data_root"] = args["data_root"] or default_data_root()
    start = time.perf_counter()
    try:
        args["model_kwargs"] = parse_key_values(args.pop("model_kw"))
        args["data_kwargs"] = parse_key_values(args.pop("data_kw"))
        config = TrainConfig(**args)
        history = train(config)
    except (ValueError, KeyError, OSError, RunConflictError, LockHeldError) as err:
        fail(str(err))
    except KeyboardInterrupt:
        saved = _saved_epochs(config.out_dir)
        kept = f"{saved[0][1]} (epoch {saved[0][0]}) is kept" if saved else "no epoch was complete"
        print(f"\ninterrupted: {kept}; run the same command again to resume from there", file=sys.stderr)
        sys.exit(130)
    last = history[-1]
    print(f"{config.model_name} on {config.dataset}: test accuracy {100 - last['test_error']:.2f}% "
          f"(loss {last['test_loss']:.4f}) after {last['epoch']} epochs; wall time {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()

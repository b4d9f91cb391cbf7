"""Data sets as normalized tensors resident on one device.

Training and the landscape engine index these tensors directly instead of running a DataLoader:
a whole CIFAR split is 600 MB in float32, so it fits on any accelerator and a pass over it costs
no Python per-sample work. Augmentation is done on whole batches with a `torch.Generator`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import positive_int

__all__ = [
    "DATASETS",
    "DATA_ENV",
    "NORMALIZATIONS",
    "SYNTHETIC_SIZES",
    "DataNotFoundError",
    "DatasetInfo",
    "DeviceData",
    "AUGMENTATIONS",
    "augment_batch",
    "resolve_augment",
    "default_data_root",
    "load_device_data",
    "load_split",
    "make_synthetic",
    "normalization_constants",
]

DATA_ENV = "RESNET_TOOLKIT_DATA"


def default_data_root() -> str:
    """$RESNET_TOOLKIT_DATA when set, else ./data: the one default data root of every command."""
    return os.environ.get(DATA_ENV) or "data"


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of a data set; `augment` says whether the standard training recipe
    uses pad + crop + flip (CIFAR) or nothing (MNIST, synthetic)."""

    name: str
    num_classes: int
    shape: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool = False


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo("cifar10", 10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), True),
    "cifar100": DatasetInfo("cifar100", 100, (3, 32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), True),
    "mnist": DatasetInfo("mnist", 10, (1, 28, 28), (0.1307,), (0.3081,)),
    # Generated already standardized, hence mean 0 / std 1.
    "synthetic": DatasetInfo("synthetic", 10, (3, 32, 32), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}

# torchvision class name, folder under root, files torchvision checks there.
_TORCHVISION: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "cifar10": ("CIFAR10", "cifar-10-batches-py",
                tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")),
    "cifar100": ("CIFAR100", "cifar-100-python", ("train", "test", "meta")),
    "mnist": ("MNIST", os.path.join("MNIST", "raw"),
              ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")),
}

# How images are standardized: "torchvision" uses DATASETS' mean/std (torchvision-style
# constants); "loss-landscape" uses the constants of tomgoldstein/loss-landscape (CIFAR-10 only),
# mean [125.3, 123.0, 113.9]/255, std [63.0, 62.1, 66.7]/255, which its checkpoints were
# trained with: up to 9e-4 per input apart, ~1e-2 relative in the loss of its checkpoints.
NORMALIZATIONS = ("torchvision", "loss-landscape")
_LOSS_LANDSCAPE_CONSTANTS = {
    "cifar10": (tuple(v / 255 for v in (125.3, 123.0, 113.9)), tuple(v / 255 for v in (63.0, 62.1, 66.7))),
}


def normalization_constants(name: str, normalization: str = "torchvision") -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel, on the [0, 1] pixel scale, that `normalization` applies to data set `name`."""
    info = _check_name(name)
    if normalization == "torchvision":
        return info.mean, info.std
    if normalization == "loss-landscape":
        if name not in _LOSS_LANDSCAPE_CONSTANTS:
            raise ValueError(f"normalization 'loss-landscape' (the original loss-landscape code's constants) "
                             f"exists only for {', '.join(_LOSS_LANDSCAPE_CONSTANTS)}, not {name!r}")
        return _LOSS_LANDSCAPE_CONSTANTS[name]
    raise ValueError(f"unknown normalization {normalization!r}; valid: {', '.join(NORMALIZATIONS)}")


SYNTHETIC_SIZES = {True: 10_000, False: 2_000}  # default train / test split sizes


class DataNotFoundError(FileNotFoundError):
    """The data set's files are not under the given root (and could not be downloaded)."""


def _check_name(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    return DATASETS[name]


def _not_found(name: str, root: str, cause: BaseException | None, offer_download: bool) -> DataNotFoundError:
    _, folder, files = _TORCHVISION[name]
    where = os.path.join(root, folder)
    missing = [f for f in files if not os.path.isfile(os.path.join(where, f))]
    if not os.path.isdir(where):
        state = "directory does not exist"
    else:
        state = f"missing: {', '.join(missing)}" if missing else "files present but corrupt (md5 mismatch)"
    tried = f"; download failed: {cause}" if cause is not None else ""
    return DataNotFoundError(
        f"{name} not found: torchvision expects {where}{os.sep} holding {', '.join(files)} ({state}){tried}. "
        f"Fix: point --data-root (or ${DATA_ENV}) at the folder that holds {folder}, "
        + ("pass --download (download=True) on a machine with internet access, " if offer_download else "")
        + f"or copy the extracted files into {where}{os.sep}."
    )


def make_synthetic(
    train: bool,
    seed: int = 0,
    image_size: int = 32,
    channels: int = 3,
    num_classes: int = 10,
    size: int | None = None,
    noise: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Seeded learnable toy data: x = (template[y] + noise * N(0, 1)) / sqrt(1 + noise^2).

    Templates are smooth (4x4 Gaussian noise upsampled bicubically, then standardized) and shared
    by the train and test splits of one seed; labels and noise differ between the splits.
    Returns x (N, channels, image_size, image_size) float32 with unit variance, y (N,) int64.
    """
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(num_classes, channels, 4, 4, generator=g)
    templates = F.interpolate(coarse, size=(image_size, image_size), mode="bicubic", align_corners=False)
    dims = (1, 2, 3)
    templates = (templates - templates.mean(dims, keepdim=True)) / templates.std(dims, keepdim=True)
    # Each split gets its own stream, derived from the seed so the splits never share noise.
    split_seeds = torch.randint(2**62, (2,), generator=g)
    g.manual_seed(int(split_seeds[int(train)]))
    n = SYNTHETIC_SIZES[train] if size is None else size
    y = torch.randint(num_classes, (n,), generator=g)
    eps = torch.randn(n, channels, image_size, image_size, generator=g)
    x = (templates[y] + noise * eps) / math.sqrt(1.0 + noise**2)
    return x, y


def load_split(
    name: str,
    root: str | os.PathLike[str],
    train: bool,
    samples: int | None = None,
    download: bool = False,
    normalization: str = "torchvision",
    offer_download: bool = True,
    **synthetic_kw: int | float,
) -> tuple[Tensor, Tensor]:
    """One split as (x float32 (N, C, H, W) normalized by `normalization`'s mean/std, y int64 (N,)).

    `samples=N` keeps the first N images in data-set order, so subsets are reproducible.
    `normalization` picks the constants (see NORMALIZATIONS); synthetic data is generated
    standardized and takes "torchvision" (mean 0, std 1) only. `synthetic_kw` (seed, image_size,
    channels, size, noise) is accepted for "synthetic" only. Raises DataNotFoundError when files
    are missing and cannot be downloaded; its message suggests --download only if `offer_download`
    (callers whose command has no such flag pass False).
    """
    mean_c, std_c = normalization_constants(name, normalization)
    positive_int("samples", samples, allow_none=True, note="None: all")
    if name == "synthetic":
        x, y = make_synthetic(train, **synthetic_kw)  # type: ignore[arg-type]
    else:
        if synthetic_kw:
            raise ValueError(f"options {sorted(synthetic_kw)} apply only to the synthetic dataset")
        x, y = _load_torchvision(name, os.fspath(root), train, samples, download, offer_download)
        mean = torch.tensor(mean_c).view(1, -1, 1, 1)
        std = torch.tensor(std_c).view(1, -1, 1, 1)
        x = (x.float().div_(255) - mean) / std
    if samples is not None:
        if samples > len(y):
            raise ValueError(f"samples={samples} exceeds the {len(y)} images of the {name} split")
        x, y = x[:samples].contiguous(), y[:samples]
    return x, y


def _load_torchvision(name: str, root: str, train: bool, samples: int | None,
                      download: bool, offer_download: bool = True) -> tuple[Tensor, Tensor]:
    """Raw uint8 images (N, C, H, W) and labels, read from torchvision's arrays (no transforms)."""
    import torchvision.datasets as tvd  # slow import, needed only for real data

    cls_name, _, _ = _TORCHVISION[name]
    try:
        ds = getattr(tvd, cls_name)(root, train=train, download=download)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
        raise _not_found(name, root, None, offer_download) from e
    except OSError as e:  # download attempted and failed (offline, DNS, HTTP error)
        raise _not_found(name, root, e, offer_download) from e
    data = torch.as_tensor(ds.data[:samples])
    x = data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2)  # MNIST HW / CIFAR HWC
    y = torch.as_tensor(ds.targets[:samples], dtype=torch.int64)
    return x, y


# Training-time augmentations a run can ask for (TrainConfig.augment): "crop" is Chen et al.'s
# MNIST recipe (their odenet_mnist.py: RandomCrop(28, padding=4) on raw pixels, so a black border);
# "crop+flip" is the CIFAR recipe of He et al. (pad 4, crop, horizontal flip).
AUGMENTATIONS = ("none", "crop", "crop+flip")


def resolve_augment(dataset: str, augment: str | None) -> str:
    """The augmentation a run uses: `augment`, or the data set's standard recipe when None
    (crop+flip where DatasetInfo.augment, else none)."""
    if augment is None:
        return "crop+flip" if _check_name(dataset).augment else "none"
    if augment not in AUGMENTATIONS:
        raise ValueError(f"unknown augment {augment!r}; valid: {', '.join(AUGMENTATIONS)} (or None: the data set's recipe)")
    return augment


def augment_batch(x: Tensor, generator: torch.Generator, pad: int = 4, flip: bool = True,
                  fill: Sequence[float] | None = None) -> Tensor:
    """Pad by `pad`, crop back to (H, W) at a random offset and (if `flip`) flip horizontally at
    random, each drawn per image from `generator` (a CPU generator; draws move to x's device).
    The border is `fill` per channel, in the normalized units of x; None is 0, the data mean
    (this toolkit's CIFAR recipe). For MNIST's crop, pass the normalized value of a black pixel,
    as torchvision's RandomCrop(padding=4) on raw pixels gives: a grey border would be an
    artifact no test image has.

    x: (B, C, H, W); returns a new tensor of the same shape and memory format.
    """
    b, c, h, w = x.shape
    shifts = torch.randint(0, 2 * pad + 1, (2, b), generator=generator).to(x.device)
    rows = shifts[0, :, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = shifts[1, :, None] + torch.arange(w, device=x.device)  # (B, W)
    if flip:
        flipped = torch.randint(0, 2, (b,), generator=generator).bool().to(x.device)
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    offset = None if fill is None else torch.as_tensor(fill, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
    padded = F.pad(x if offset is None else x - offset, (pad, pad, pad, pad))  # constant 0 = fill after the shift back
    if offset is not None:
        padded = padded + offset
    padded = padded.permute(0, 2, 3, 1)  # (B, H+2p, W+2p, C)
    out = padded[torch.arange(b, device=x.device)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return torch.empty_like(x).copy_(out.permute(0, 3, 1, 2))


@dataclass
class DeviceData:
    """A labelled data set held as two tensors on one device: x (N, C, H, W) float, y (N,) int64."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return self.y.shape[0]

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        augment: str = "none",
        drop_last: bool = False,
        fill: Sequence[float] | None = None,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield (x, y) batches: views in order, or index-selects of a permutation drawn from
        `generator` (a CPU generator, so CPU and GPU runs see the same order), augmented as
        `augment` (one of AUGMENTATIONS; `fill`: see augment_batch)."""
        if augment not in AUGMENTATIONS:
            raise ValueError(f"unknown augment {augment!r}; valid: {', '.join(AUGMENTATIONS)}")
        if (shuffle or augment != "none") and generator is None:
            raise ValueError("shuffle/augment need an explicit torch.Generator (no global RNG)")
        n = len(self)
        order = torch.randperm(n, generator=generator).to(self.x.device) if shuffle else None
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            if order is None:
                xb, yb = self.x[start:start + batch_size], self.y[start:start + batch_size]
            else:
                idx = order[start:start + batch_size]
                xb, yb = self.x.index_select(0, idx), self.y.index_select(0, idx)
            if augment != "none":
                xb = augment_batch(xb, generator, flip=augment == "crop+flip", fill=fill)  # type: ignore[arg-type]
            yield xb, yb

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None,
           memory_format: torch.memory_format | None = None) -> DeviceData:
        """Copy to a device; dtype and memory_format apply to x only (labels stay int64)."""
        x = self.x.to(device=device, dtype=dtype)
        if memory_format is not None:
            x = x.contiguous(memory_format=memory_format)
        return DeviceData(x, self.y.to(device))


def load_device_data(
    name: str,
    root: str | os.PathLike[str],
    split: str = "train",
    samples: int | None = None,
    device: str | torch.device = "cpu",
    download: bool = False,
    normalization: str = "torchvision",
    offer_download: bool = True,
    **synthetic_kw: int | float,
) -> DeviceData:
    """`load_split` for split "train" or "test", moved to `device`."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    x, y = load_split(name, root, split == "train", samples, download, normalization, offer_download,
                      **synthetic_kw)
    return DeviceData(x, y).to(device)
